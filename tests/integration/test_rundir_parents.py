"""A run dir's parent that someone else can write into (group or others) is refused unless it
is sticky like /tmp: whoever can write there could rename our run dir away and put theirs in
its place (docs/reliability.md, "The run directory")."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from procdevices.supervisor.runstate import RunDir, RunDirError


@pytest.mark.parametrize("mode", [0o770, 0o775, 0o730, 0o757, 0o777])
def test_a_parent_writable_by_group_or_others_without_sticky_bit_is_refused(short_tmp: Path, mode: int) -> None:
    parent = short_tmp / "shared"
    parent.mkdir()
    parent.chmod(mode)
    for attempt in (RunDir(parent / "run").validate, RunDir(parent / "run").prepare):
        with pytest.raises(RunDirError, match=f"parent {parent} is writable by others \\(mode {mode:04o}\\)"):
            attempt()
    assert list(parent.iterdir()) == [], "something was made in a refused parent"
    assert stat.S_IMODE(parent.stat().st_mode) == mode


@pytest.mark.parametrize("mode", [0o1770, 0o1777, 0o755, 0o700])
def test_a_sticky_or_private_parent_is_accepted(short_tmp: Path, mode: int) -> None:
    parent = short_tmp / "shared"
    parent.mkdir()
    parent.chmod(mode)
    RunDir(parent / "run").prepare()
    assert stat.S_IMODE((parent / "run").stat().st_mode) == 0o700
