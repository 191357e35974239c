"""The README's promises table and tests/PROMISES.md name tests that exist.

A promise whose test was renamed or lost is kept by nothing: this fails instead (the README named
two tests of test_api.py and one of test_seed.py that no longer existed).
"""
from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
README = TESTS.parent / "README.md"
TOKEN = re.compile(r"`([^`]+)`")
REFERENCE = re.compile(r"(test_\w+\.py)(?:::(test_\w+))?$")
BARE = re.compile(r"test_\w+$")


def defined() -> dict[str, set[str]]:
    """Test file name -> the names of the test functions it defines."""
    return {path.name: set(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.M))
            for path in TESTS.glob("test_*.py")}


def references(cell: str) -> list[tuple[str | None, str | None]]:
    """(file, test) for every test a table cell names; a bare name belongs to the last file named."""
    found: list[tuple[str | None, str | None]] = []
    current = None
    for token in TOKEN.findall(cell):
        match = REFERENCE.match(token)
        if match:
            current = match.group(1)
            found.append((current, match.group(2)))
        elif BARE.match(token):
            found.append((current, token))
    return found


def table_cells(text: str, heading: str | None) -> list[str]:
    """The last cell of every row of the table under `heading` (the whole text if None)."""
    if heading is not None:
        start = text.index(heading)
        end = text.find("\n## ", start + len(heading))
        text = text[start:end if end >= 0 else None]
    return [line.rstrip("|").rsplit("|", 1)[-1] for line in text.splitlines()
            if line.startswith("|") and not line.startswith("|---")]


def missing(cells: list[str]) -> list[tuple[str | None, str | None]]:
    tests = defined()
    return [(file, test) for cell in cells for file, test in references(cell)
            if file not in tests or (test is not None and test not in tests[file])]


def test_every_test_the_readme_promises_table_names_exists():
    cells = table_cells(README.read_text(), "## What servicefactory promises")
    assert len(cells) > 40
    assert missing(cells) == []


def test_every_test_promises_md_names_exists():
    cells = table_cells((TESTS / "PROMISES.md").read_text(), None)
    assert len(cells) >= 15  # the header and one row per item of issue 9
    assert missing(cells) == []
