"""Rewrites one generated section of a Markdown file, the text between two marker comments.

Shared by benchmarks/report.py (the performance section) and examples/report.py (the examples'
results), so both README sections are replaced the same way.
"""
from __future__ import annotations

import os


def replace_section(path: str | os.PathLike, begin: str, end: str, section: str) -> bool:
    """Puts ``section`` between ``begin`` and ``end``; False (nothing written) if the file or a marker
    is missing."""
    if not os.path.exists(path):
        return False
    with open(path) as f:
        text = f.read()
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        return False
    with open(path, "w") as f:
        f.write(text[:i + len(begin)] + "\n" + section.strip("\n") + "\n" + text[j:])
    return True
