"""Device log files: rotation when a process starts and while it runs, tail from the end,
follow across rotation."""

from __future__ import annotations

import os
from pathlib import Path

from procdevices.supervisor.devicelogs import follow, rotate_if_large, rotate_live, tail


def test_rotation_keeps_the_newest_backups(tmp_path: Path) -> None:
    log = tmp_path / "pipe.log"
    for generation in range(5):
        log.write_text(f"generation {generation}\n" * 100)
        assert rotate_if_large(log, max_bytes=10, backups=3)
    assert not log.exists()
    assert [(tmp_path / f"pipe.log.{i}").read_text().split()[1] for i in (1, 2, 3)] == ["4", "3", "2"]
    assert not (tmp_path / "pipe.log.4").exists()


def test_a_small_or_missing_log_is_left_alone(tmp_path: Path) -> None:
    log = tmp_path / "pipe.log"
    assert not rotate_if_large(log, max_bytes=10)
    log.write_text("short\n")
    assert not rotate_if_large(log, max_bytes=10) and log.read_text() == "short\n"


def test_tail_reads_the_last_lines_of_a_large_file(tmp_path: Path) -> None:
    log = tmp_path / "pipe.log"
    log.write_text("".join(f"line {i}\n" for i in range(100_000)))
    assert tail(log, 3) == ["line 99997", "line 99998", "line 99999"]
    assert tail(log, 0) == []
    short = tmp_path / "short.log"
    short.write_text("only\n")
    assert tail(short, 10) == ["only"]


def test_follow_sees_appended_lines_and_survives_rotation(tmp_path: Path) -> None:
    log = tmp_path / "pipe.log"
    log.write_text("old\n")
    lines = follow(log, wait=0.001)
    with open(log, "a") as f:
        f.write("first\n")
    assert next(lines) == "first"
    rotate_if_large(log, max_bytes=0)
    log.write_text("after rotation\n")
    assert next(lines) == "after rotation"
    lines.close()


def test_a_live_log_is_copied_and_truncated_keeping_the_writers_descriptor(tmp_path: Path) -> None:
    log = tmp_path / "dev.log"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # as the device holds it
    try:
        for generation in range(5):
            os.write(fd, f"generation {generation}\n".encode() * 4)
            assert rotate_live(log, max_bytes=10, backups=2)
        os.write(fd, b"after\n")  # the device's descriptor still writes into the live file
    finally:
        os.close(fd)
    assert log.read_text() == "after\n"
    assert (tmp_path / "dev.log.1").read_text() == "generation 4\n" * 4
    assert (tmp_path / "dev.log.2").read_text() == "generation 3\n" * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev.log", "dev.log.1", "dev.log.2"]
    assert not rotate_live(log, max_bytes=10, backups=2)  # under the limit: left alone


def test_no_backups_empties_the_live_log(tmp_path: Path) -> None:
    log = tmp_path / "dev.log"
    log.write_text("x" * 100)
    assert rotate_live(log, max_bytes=10, backups=0)
    assert log.read_text() == "" and [p.name for p in tmp_path.iterdir()] == ["dev.log"]
