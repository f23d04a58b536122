"""The soak's plots as PNG: headless Chromium (a test dependency already) screenshots each SVG.

The SVG stays the source (diffable, no plotting library); the PNG is what the issue asks for and
what every viewer shows.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
         "--default-background-color=ffffffff")


def browser() -> str | None:
    """The Chromium binary, if installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def size(svg_text: str) -> tuple[int, int]:
    """Width and height of an SVG whose root names them in pixels."""
    m = re.search(r'<svg[^>]*\bwidth="(\d+)"[^>]*\bheight="(\d+)"', svg_text)
    if m is None:
        raise ValueError("SVG root without pixel width and height")
    return int(m.group(1)), int(m.group(2))


def to_png(svg_path: Path, timeout: float = 60.0) -> Path | None:
    """Write ``<name>.png`` next to ``svg_path``; ``None`` (and nothing written) without a browser."""
    exe = browser()
    if exe is None:
        return None
    width, height = size(svg_path.read_text())
    out = svg_path.with_suffix(".png")
    out.unlink(missing_ok=True)
    subprocess.run([exe, *FLAGS, f"--screenshot={out}", f"--window-size={width},{height}",
                    svg_path.resolve().as_uri()],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout, check=False)
    if not out.exists() or out.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        raise RuntimeError(f"{exe} wrote no PNG for {svg_path}")
    return out
