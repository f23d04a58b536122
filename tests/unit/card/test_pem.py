"""sniproxy.card.pem: the one reader of certificate PEM files, and PEM text written without parsing again."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from sniproxy.card.pem import load_certs, read_certs, to_pem
from sniproxy.errors import ConfigError

DATA = Path(__file__).resolve().parents[2] / "data"
SAMPLES = sorted((DATA / "samples").glob("*.pem")) + sorted((DATA / "card_golden").glob("*.pem"))


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_to_pem_is_what_the_library_writes(path: Path) -> None:
    for cert in x509.load_pem_x509_certificates(path.read_bytes()):
        assert to_pem(cert.public_bytes(Encoding.DER)) == cert.public_bytes(Encoding.PEM).decode("ascii")


def test_read_certs_keeps_file_order(tmp_path: Path) -> None:
    certs = read_certs(DATA / "card_golden" / "fort.pem")
    assert len(certs) == 2 and certs[0].issuer == certs[1].subject
    joined = tmp_path / "two.pem"
    joined.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in reversed(certs)))
    assert read_certs(joined) == list(reversed(certs))
    assert load_certs(joined.read_bytes(), joined) == list(reversed(certs))


def test_a_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(ConfigError) as exc:
        read_certs(missing)
    assert exc.value.file == str(missing)
    assert exc.value.message.startswith("cannot read certificates: [Errno 2]")
    assert isinstance(exc.value.__cause__, OSError)


BROKEN = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize("data", [b"", b"not a certificate", BROKEN])
def test_no_or_a_broken_certificate_names_the_file(tmp_path: Path, data: bytes) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_bytes(data)
    with pytest.raises(ConfigError) as exc:
        read_certs(bad)
    assert exc.value.file == str(bad) and exc.value.message.startswith("cannot read certificates: ")
    assert isinstance(exc.value.__cause__, ValueError)
    assert exc.value.message == f"cannot read certificates: {exc.value.__cause__}"
    with pytest.raises(ConfigError) as again:
        load_certs(data, "given-name.pem")
    assert again.value.file == "given-name.pem"


def test_the_verify_cli_says_what_it_always_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from sniproxy import cli
    from sniproxy.observability import log

    monkeypatch.setattr(cli, "_crl_manager", lambda config: (None, None))
    monkeypatch.setattr(log, "configure", lambda *a, **k: None)   # the process's logging is not this test's
    missing = tmp_path / "card.pem"
    args = argparse.Namespace(config="x.yaml", card=str(missing), chain=None, at=None, fetch=False, json=False)
    assert cli.cmd_verify(args) == 2
    assert capsys.readouterr().err == f"error: cannot read certificates: [Errno 2] No such file or directory: " \
                                      f"'{missing}'\n"
    missing.write_bytes(b"junk")
    assert cli.cmd_verify(args) == 2
    assert capsys.readouterr().err.startswith("error: cannot read certificates: ")
