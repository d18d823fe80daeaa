"""`check -c FILE` and `up -c FILE` on good and bad topologies: exit 78 (EX_CONFIG) naming the
file, the key path and the reason, and nothing started."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import Up, cli, describe

GOOD = """\
[supervisor]
run_dir = "run"

[devices.broker]
kind = "queue"
in  = { bind = ["ipc://broker-in.sock"] }
out = { bind = ["ipc://broker-out.sock"] }

[devices.pipe]
kind = "streamer"
replicas = 2
in  = { bind = ["tcp://127.0.0.1:*"] }
out = { type = "PUSH", bind = ["ipc://pipe-{replica}.sock"] }
"""

A_DEVICE = """\
[devices.a]
kind = "queue"
in  = { bind = ["ipc://a-in.sock"] }
out = { bind = ["ipc://a-out.sock"] }
"""

# (id, TOML text after `[supervisor] run_dir = "run"`, key path, reason): one per kind of mistake.
BAD = [
    ("unknown-kind", A_DEVICE.replace('"queue"', '"quoue"'), "devices.a.kind", "unknown kind 'quoue'"),
    (
        "unknown-socket-type",
        A_DEVICE.replace("in  = {", 'in  = { type = "ROUTR",'),
        "devices.a.in.type",
        "unknown socket type 'ROUTR'",
    ),
    (
        "invalid-endpoint",
        A_DEVICE.replace("ipc://a-in.sock", "tcp://127.0.0.1"),
        "devices.a.in.bind[0]",
        "invalid endpoint 'tcp://127.0.0.1'",
    ),
    (
        "duplicate-bind",
        A_DEVICE + A_DEVICE.replace("[devices.a]", "[devices.b]"),
        "devices.b.in.bind[0]",
        "is already bound by devices.a.in.bind[0]",
    ),
    (
        "missing-key",
        A_DEVICE.replace('out = { bind = ["ipc://a-out.sock"] }\n', ""),
        "devices.a.out",
        "missing required key 'out'",
    ),
    (
        "wrong-type",
        'pool_size = "two"\n\n' + A_DEVICE,  # under [supervisor]
        "supervisor.pool_size",
        "expected an integer, got string",
    ),
    ("not-toml", "[devices.a\nkind = 'queue'\n", "", "invalid TOML"),
]


@pytest.mark.timeout(30)
def test_check_accepts_a_good_file_and_lists_its_processes(short_tmp: Path) -> None:
    config = short_tmp / "good.toml"
    config.write_text(GOOD)
    result = cli("check", config=config)
    assert result.returncode == 0, describe(result)
    lines = result.stdout.splitlines()
    assert lines[0] == f"{config}: ok, 2 device(s), 3 process(es); run dir {config.parent / 'run'}", describe(result)
    assert [line.split() for line in lines[1:]] == [
        ["broker", "queue", "in=ROUTER", "out=DEALER"],
        ["pipe.0", "streamer", "in=PULL", "out=PUSH"],
        ["pipe.1", "streamer", "in=PULL", "out=PUSH"],
    ], describe(result)
    assert result.stderr == ""
    assert not (short_tmp / "run").exists(), "check must not create the run dir"


@pytest.mark.timeout(30)
def test_check_without_a_file_validates_the_embedded_default(short_tmp: Path) -> None:
    result = cli("check", cwd=short_tmp)  # no ./procdevices.toml there
    assert result.returncode == 0, describe(result)
    assert result.stdout.startswith("<default>: ok, 3 device(s), 3 process(es)"), describe(result)
    assert not (short_tmp / ".procdevices").exists()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("text", "key", "reason"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_a_bad_file_exits_78_naming_file_key_and_reason_and_up_starts_nothing(
    short_tmp: Path, text: str, key: str, reason: str
) -> None:
    config = short_tmp / "bad.toml"
    config.write_text('[supervisor]\nrun_dir = "run"\n' + text)
    where = f"{config}: {key}: " if key else f"{config}: "

    checked = cli("check", config=config)
    assert checked.returncode == 78, describe(checked)
    assert checked.stdout == "", describe(checked)
    assert f"procdevices: invalid configuration: {where}" in checked.stderr, describe(checked)
    assert reason in checked.stderr, describe(checked)

    up = Up(config)
    try:
        up.start()
        assert up.wait_exit(timeout=20) == 78, up.log()
        log = up.log()
        assert f"procdevices: invalid configuration: {where}" in log and reason in log, log
        up.assert_nothing_left(timeout=2.0)  # no device, pool worker or resource tracker
        assert not (short_tmp / "run").exists(), "up created the run dir for an invalid config"
    finally:
        up.close()


@pytest.mark.timeout(30)
def test_a_missing_file_exits_78(short_tmp: Path) -> None:
    result = cli("check", "-c", str(short_tmp / "nope.toml"), cwd=short_tmp)
    assert result.returncode == 78, describe(result)
    assert f"{short_tmp / 'nope.toml'}: file not found" in result.stderr, describe(result)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flag", [False, True], ids=["in-the-file", "run-dir-flag"])
def test_check_refuses_a_run_dir_up_cannot_create_with_the_line_up_gives(short_tmp: Path, flag: bool) -> None:
    """/sys accepts no directory even from root, whatever its permission bits say: `check`
    said ok and `up` then exited 78. Now both refuse, with one and the same line."""
    run_dir = f"/sys/procdevices-{short_tmp.name}/run"
    config = short_tmp / "topology.toml"
    config.write_text(("" if flag else f'[supervisor]\nrun_dir = "{run_dir}"\n') + A_DEVICE)
    extra = ("--run-dir", run_dir) if flag else ()
    checked = cli("check", *extra, config=config)
    assert checked.returncode == 78, describe(checked)
    line = f"procdevices: invalid configuration: {config}: supervisor.run_dir: cannot create run dir {run_dir}: "
    assert checked.stderr.startswith(line) and checked.stderr.count("\n") == 1, describe(checked)
    upped = cli("up", *extra, config=config)
    assert (upped.returncode, upped.stderr) == (78, checked.stderr), describe(upped)
