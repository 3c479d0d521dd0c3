"""docs/troubleshooting.md quotes the package's error messages: each quoted message must still be raised."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _source_text() -> str:
    # the messages as the code writes them, with string literals split over lines joined up
    text = "\n".join(p.read_text() for p in sorted((REPO / "velopyro").rglob("*.py")))
    return re.sub(r'"\s*\n\s*f?"', "", text)


def test_every_quoted_message_occurs_in_the_package():
    page = (REPO / "docs" / "troubleshooting.md").read_text()
    quoted = re.findall(r"^> `([^`]+)`", page, flags=re.MULTILINE)
    quoted += re.findall(r'"`([^`]+)`"', page)
    assert len(quoted) >= 15
    source = _source_text()
    missing = [q for q in quoted if q not in source]
    assert not missing, f"docs/troubleshooting.md quotes messages the package no longer raises: {missing}"
