"""Short bounded runs of every atheris harness in ``fuzz/`` (the CI run; docs/fuzzing.md has the long one).

Each harness starts from its own valid seeds (``--write-seeds``) and runs ``RUNS`` inputs or ``SECONDS``,
whichever comes first. A finding (an exception, or a failed property assert) makes libFuzzer exit
non-zero and write the input under the test's tmp dir; the test then fails and shows it. atheris
missing: the test fails under ``CI=true`` (it is in the ``test`` extra) and skips otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import fail_or_skip

ROOT = Path(__file__).resolve().parents[2]
HARNESSES = sorted(p.name for p in (ROOT / "fuzz").glob("fuzz_*.py"))
RUNS = int(os.environ.get("SNIPROXY_ATHERIS_RUNS", "2000"))
SECONDS = int(os.environ.get("SNIPROXY_ATHERIS_SECONDS", "8"))


def test_every_parser_has_a_harness() -> None:
    assert HARNESSES == ["fuzz_backend_filters.py", "fuzz_clienthello.py", "fuzz_imap_auth.py", "fuzz_linebuf.py",
                         "fuzz_pretls.py", "fuzz_proxy_protocol.py", "fuzz_smtp_relay.py"]


@pytest.mark.parametrize("harness", HARNESSES)
def test_harness_short_run(harness: str, tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        fail_or_skip("atheris is not installed (pip install -e '.[test]')")
    corpus = tmp_path / "corpus"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "fuzz")]))
    cmd = [sys.executable, str(ROOT / "fuzz" / harness), f"--write-seeds={corpus}", str(corpus),
           f"-runs={RUNS}", f"-max_total_time={SECONDS}", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=SECONDS + 60, env=env, cwd=tmp_path)
    findings = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-")))
    assert r.returncode == 0 and not findings, f"{harness}: exit {r.returncode}, {findings}\n{r.stderr[-4000:]}"
    assert "Done " in r.stderr, r.stderr[-2000:]
    # The fuzzer did run: some coverage, and the seeds made it into the corpus.
    assert "cov: " in r.stderr and len(list(corpus.iterdir())) >= 2
