"""One benchmark's section of docs/benchmarks.md, replaced in place: other sections stay as they are."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(text: str, section: str, doc: Path = DOC) -> None:
    """Replace the section headed `section` with `text` (which starts with that heading), or append it."""
    doc.parent.mkdir(parents=True, exist_ok=True)
    old = doc.read_text() if doc.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text + "\n\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    doc.write_text(new.rstrip("\n") + "\n")


def publish(text: str, section: str, write: bool = True) -> int:
    """Print a benchmark's report and, unless told not to, put it into docs/benchmarks.md."""
    print(text)
    if write:
        write_section(text, section)
    return 0
