"""The bad-config corpus: tests/bad_configs/*.toml, one fault per file.

Each file starts with ``# expect: KEY | REASON`` (KEY empty for file-level
problems). Every file must be rejected by the loader with a ConfigError that is
ONE printable line ``FILE: KEY: ...REASON...``; a sample goes through the real
``python -m procdevices check`` (exit 78, one stderr line, no traceback).
Non-regular and oversized files, which cannot live in a repository, are made
here in tmp_path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import Up, cli, describe

from procdevices.supervisor.config import ConfigError, load_topology
from procdevices.supervisor.config.source import MAX_FILE_SIZE

CORPUS = Path(__file__).resolve().parent.parent / "bad_configs"
FILES = sorted(CORPUS.glob("*.toml"))
EXPECT = "# expect: "


def expectation(path: Path) -> tuple[str, str]:
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8")
    assert first.startswith(EXPECT), f"{path.name}: first line must be '{EXPECT}KEY | REASON'"
    key, sep, reason = first[len(EXPECT) :].partition(" | ")
    assert sep and reason, f"{path.name}: first line must be '{EXPECT}KEY | REASON'"
    return key, reason


def assert_one_line(message: str) -> None:
    assert message.isprintable(), repr(message)  # no newline, tab, ESC, ...
    assert message.strip() == message and message


def test_the_corpus_is_large_enough() -> None:
    assert len(FILES) >= 60


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_each_bad_file_is_one_clean_config_error(path: Path) -> None:
    key, reason = expectation(path)
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    err = info.value
    message = str(err)
    assert_one_line(message)
    assert (err.file, err.key) == (str(path), key), message
    assert reason in err.reason, message
    assert message == (f"{path}: {key}: {err.reason}" if key else f"{path}: {err.reason}")


# One file per rule family, through the real command line: the subprocesses cost ~0.3 s each.
CLI_SAMPLE = [
    "toml-deep-nesting",
    "not-utf8",
    "name-escape-sequence",
    "name-ctl-socket-too-long",
    "device-key-with-escape",
    "probe-interval-too-small",
    "memory-limit-below-floor",
    "endpoint-newline",
    "endpoint-unresolvable-host",
    "bind-conflict-ipv6-wildcard",
    "sockopt-hwm-int64",
    "sockopt-curve-key-short",
    "sockopt-linger-refused",
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", CLI_SAMPLE)
def test_check_rejects_a_sample_with_exit_78_and_one_line(name: str) -> None:
    path = CORPUS / f"{name}.toml"
    key, reason = expectation(path)
    result = cli("check", "-c", str(path), cwd=CORPUS)
    assert result.returncode == 78, describe(result)
    assert result.stdout == "", describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and result.stderr.endswith("\n"), describe(result)
    assert_one_line(lines[0])
    where = f"{path}: {key}: " if key else f"{path}: "
    assert lines[0].startswith(f"procdevices: invalid configuration: {where}"), describe(result)
    assert reason in lines[0], describe(result)


@pytest.mark.timeout(60)
def test_up_with_a_bad_file_starts_nothing(short_tmp: Path) -> None:
    # A fault only the libzmq trial finds: before the fix, `up` got as far as starting the device.
    config = short_tmp / "bad.toml"
    shutil.copy(CORPUS / "sockopt-hwm-negative.toml", config)
    up = Up(config)
    try:
        up.start()
        assert up.wait_exit(timeout=20) == 78, up.log()
        log = up.log()
        assert "devices.a.in.sockopts.SNDHWM" in log and "Traceback" not in log, log
        up.assert_nothing_left(timeout=2.0)
        assert not (short_tmp / ".procdevices").exists(), "up created the run dir for an invalid config"
    finally:
        up.close()


# -- files that are not small regular files ---------------------------------------------------


@pytest.mark.timeout(10)
def test_a_fifo_is_rejected_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "topology.toml"
    os.mkfifo(fifo)  # nobody ever writes: a blocking open() would wait for ever
    with pytest.raises(ConfigError) as info:
        load_topology(fifo)
    assert (info.value.key, info.value.reason) == ("", "is a FIFO, not a regular file")


@pytest.mark.timeout(10)
def test_a_character_device_is_rejected_without_reading_it() -> None:
    with pytest.raises(ConfigError) as info:
        load_topology("/dev/zero")  # endless: reading it whole would end in MemoryError
    assert info.value.reason == "is a character device, not a regular file"


def test_a_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_topology(tmp_path)
    assert info.value.reason == "is a directory, not a file"


def test_a_file_over_the_size_limit_is_rejected(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_bytes(b"# padding\n" * (MAX_FILE_SIZE // 10 + 1))
    with pytest.raises(ConfigError) as info:
        load_topology(big)
    assert info.value.reason == f"file is too large: {big.stat().st_size} bytes, the limit is {MAX_FILE_SIZE} bytes"


def test_a_file_at_the_size_limit_is_read(tmp_path: Path) -> None:
    text = (CORPUS / "stop-timeout-zero.toml").read_bytes()
    padded = tmp_path / "padded.toml"
    padded.write_bytes(text + b"#" * (MAX_FILE_SIZE - len(text)))
    with pytest.raises(ConfigError) as info:
        load_topology(padded)
    assert info.value.key == "devices.a.stop_timeout"  # read and parsed, not refused for its size


@pytest.mark.timeout(30)
def test_check_on_a_fifo_exits_78(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    result = subprocess.run(
        [sys.executable, "-m", "procdevices", "check", "-c", str(fifo)],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=tmp_path,
    )
    assert result.returncode == 78, result.stderr
    assert result.stderr == f"procdevices: invalid configuration: {fifo}: is a FIFO, not a regular file\n"


def test_a_path_with_a_nul_byte_is_a_config_error() -> None:
    # The same line on every Python (3.11 says "embedded null byte", 3.13 "embedded null
    # character in path"): the reason is ours.
    with pytest.raises(ConfigError) as info:
        load_topology("bad\x00name.toml")
    assert str(info.value) == "bad\\x00name.toml: cannot read file: the path contains a NUL byte"


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    loop = tmp_path / "loop.toml"
    loop.symlink_to(loop)
    with pytest.raises(ConfigError) as info:
        load_topology(loop)
    assert info.value.reason.startswith("cannot read file: ")
