"""siteskip's rule: which .pth files run code that would keep ``site`` in a device process,
and what else keeps it. Its effect in real device processes is in
tests/integration/test_spawnproc.py."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from procdevices.devices import siteskip


@pytest.fixture(autouse=True)
def fresh_answer() -> Iterator[None]:
    siteskip.skippable.cache_clear()
    yield
    siteskip.skippable.cache_clear()


@pytest.mark.parametrize(
    ("text", "runs"),
    [
        (b"/some/dir\n", False),
        (b"# import this is a comment\n\n", False),
        (b"import os; os.environ['X'] = '1'\n", True),
        (b"import\tfoo\n", True),
        (b"/a\r\nimport foo\r\n", True),
        (b"importlib_is_a_path\n", False),
        (b"  import indented is a path to site\n", False),
    ],
)
def test_which_lines_site_runs(text: bytes, runs: bool) -> None:
    assert siteskip.runs_code(text) is runs


def test_code_in_names_the_pth_files_that_run_code_but_the_harmless(tmp_path: Path) -> None:
    (tmp_path / "paths.pth").write_text("/opt/somewhere\n")
    (tmp_path / "coverage-hook.pth").write_text("import coverage; coverage.process_startup()\n")
    (tmp_path / "distutils-precedence.pth").write_text("import os; __import__('_distutils_hack')\n")
    (tmp_path / "_virtualenv.pth").write_text("import _virtualenv\n")
    (tmp_path / "__editable__.procdevices-0.1.0.pth").write_text("import __editable___procdevices_finder\n")
    (tmp_path / "__editable__.other-1.0.pth").write_text("import __editable___other_finder\n")
    (tmp_path / ".hidden.pth").write_text("import hidden\n")  # site skips it too
    (tmp_path / "notes.txt").write_text("import nothing\n")
    missing = tmp_path / "not-there"
    found = siteskip.code_in([str(tmp_path), str(missing)])
    assert found == [str(tmp_path / "__editable__.other-1.0.pth"), str(tmp_path / "coverage-hook.pth")]


def test_nothing_to_run_means_site_can_be_skipped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "distutils-precedence.pth").write_text("import os\n")
    monkeypatch.setattr(siteskip, "_site_directories", lambda: [str(tmp_path)])
    monkeypatch.delitem(sys.modules, "sitecustomize", raising=False)
    monkeypatch.delitem(sys.modules, "usercustomize", raising=False)
    assert siteskip.skippable()
    assert siteskip.flags() == ["-S"]


def test_a_pth_file_that_runs_code_keeps_site(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "hook.pth").write_text("import hook\n")
    monkeypatch.setattr(siteskip, "_site_directories", lambda: [str(tmp_path)])
    monkeypatch.delitem(sys.modules, "sitecustomize", raising=False)
    monkeypatch.delitem(sys.modules, "usercustomize", raising=False)
    assert not siteskip.skippable()
    assert siteskip.flags() == []


@pytest.mark.parametrize("module", ["sitecustomize", "usercustomize"])
def test_a_customize_module_keeps_site(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, module: str) -> None:
    monkeypatch.setattr(siteskip, "_site_directories", lambda: [str(tmp_path)])
    monkeypatch.setitem(sys.modules, module, type(sys)(module))
    assert not siteskip.skippable()
