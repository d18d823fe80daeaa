"""Every test file the documentation names exists: docs/reliability.md's table of guarantees,
and the rest, point readers at the test that proves a claim, and tests move."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted([*REPO.glob("docs/*.md"), REPO / "README.md"])
TEST_PATH = re.compile(r"tests/[A-Za-z0-9_/]+\.py")


def test_every_test_file_a_document_names_exists() -> None:
    named = {
        (document.relative_to(REPO).as_posix(), number, path)
        for document in DOCUMENTS
        for number, line in enumerate(document.read_text().splitlines(), 1)
        for path in TEST_PATH.findall(line)
    }
    assert len(named) > 20, "the pattern finds the paths the documents name"
    missing = sorted(f"{document}:{number}: {path}" for document, number, path in named if not (REPO / path).is_file())
    assert not missing, "documents name test files that do not exist:\n" + "\n".join(missing)
