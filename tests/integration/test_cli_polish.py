"""The command line as an operator meets it: found from anywhere, in the ecosystem's
conventions. Every test runs the real `python -m procdevices` (or the installed console script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import CLI, Up, describe, write_topology

import procdevices

REPO = Path(__file__).resolve().parents[2]

STREAMER = """\
[devices.pipe]
kind = "streamer"
in  = { bind = ["ipc://in.sock"] }
out = { bind = ["tcp://127.0.0.1:*"] }
"""


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=30
    )


def test_version(tmp_path: Path) -> None:
    result = run("--version", cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    assert result.stdout.startswith("procdevices ") and "pyzmq" in result.stdout and "libzmq" in result.stdout
    # The installed metadata's version is the package's own (pyproject.toml reads it from
    # procdevices.__version__: one owner).
    assert result.stdout.startswith(f"procdevices {procdevices.__version__} "), result.stdout


def test_a_bare_call_prints_a_short_help(tmp_path: Path) -> None:
    result = run(cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    assert "commands:" in result.stdout and "status" in result.stdout and "examples:" in result.stdout
    assert len(result.stdout.splitlines()) < 40


def test_the_program_name_is_the_one_invoked(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "procdevices"
    assert script.exists(), "the console script is installed beside the interpreter"
    installed = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert installed.stdout.startswith("usage: procdevices "), describe(installed)
    assert run("--help", cwd=tmp_path).stdout.startswith("usage: python -m procdevices ")


def test_a_bad_option_of_a_command_prints_that_commands_usage(tmp_path: Path) -> None:
    result = run("status", "--bogus", cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: python -m procdevices status" in result.stderr
    assert "status: error: unrecognized arguments: --bogus" in result.stderr, describe(result)


@pytest.mark.parametrize("shell", ["bash", "zsh", "tcsh"])
def test_completion_scripts_are_generated(tmp_path: Path, shell: str) -> None:
    result = run("completion", shell, cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    assert "procdevices" in result.stdout and "status" in result.stdout and "supervisord-conf" in result.stdout
    if shell == "bash":
        script = tmp_path / "procdevices.bash"
        script.write_text(result.stdout)
        check = subprocess.run(
            ["bash", "-c", f"source {script} && complete -p procdevices"], capture_output=True, text=True, timeout=30
        )
        assert check.returncode == 0 and "procdevices" in check.stdout, describe(check)


def test_the_supervisord_program_file_ships_with_the_package(tmp_path: Path) -> None:
    result = run("supervisord-conf", "--program", cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    assert result.stdout == (REPO / "supervisor.d" / "procdevices.conf").read_text()
    assert Path(procdevices.__file__).parent.joinpath("data", "procdevices.conf").is_file()


@pytest.mark.timeout(90)
def test_clients_work_from_anywhere_and_survive_a_typo_in_the_topology(short_tmp: Path) -> None:
    config = write_topology(short_tmp, STREAMER, pool_size=0)
    elsewhere = short_tmp / "elsewhere"
    elsewhere.mkdir()
    with Up(config) as up:
        pid = up.wait_states({"pipe": "RUNNING"})["pipe"]["pid"]
        # Global options before the command.
        before = run("-c", str(config), "status", "--json", cwd=elsewhere)
        assert before.returncode == 0, describe(before)
        # Environment variables, from another directory.
        by_config = run("status", cwd=elsewhere, env={"PROCDEVICES_CONFIG": str(config)})
        assert by_config.returncode == 0 and str(pid) in by_config.stdout, describe(by_config)
        by_run_dir = run("status", "--json", cwd=elsewhere, env={"PROCDEVICES_RUN_DIR": str(short_tmp / "run")})
        assert json.loads(by_run_dir.stdout)["devices"][0]["pid"] == pid, describe(by_run_dir)
        # A typo in the file: the running supervisor is still reachable and steerable.
        config.write_text(config.read_text().replace('kind = "streamer"', 'kind = "streamr"'))
        typo = run("status", cwd=elsewhere, env={"PROCDEVICES_CONFIG": str(config)})
        assert typo.returncode == 0 and str(pid) in typo.stdout, describe(typo)
        assert run("check", "-c", str(config), cwd=elsewhere).returncode == 78
        paused = run("pause", "pipe", cwd=elsewhere, env={"PROCDEVICES_CONFIG": str(config)})
        assert paused.returncode == 0, describe(paused)
        text = run("status", cwd=elsewhere, env={"PROCDEVICES_CONFIG": str(config)}).stdout
        assert "RUNNING (paused)" in text, text
        down = run("down", cwd=elsewhere, env={"PROCDEVICES_RUN_DIR": str(short_tmp / "run")})
        assert down.returncode == 0, describe(down)
        assert up.wait_exit() == 0


@pytest.mark.timeout(90)
def test_json_logs_parse_line_by_line(short_tmp: Path) -> None:
    config = write_topology(short_tmp, STREAMER, pool_size=0)
    up = subprocess.Popen(
        [*CLI, "up", "--log-format", "json", "-c", str(config)],
        cwd=short_tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert up.stderr is not None
        lines = []
        for line in up.stderr:
            lines.append(json.loads(line))
            if lines[-1]["message"].startswith("ready:"):
                break
        assert run("down", "-c", str(config), cwd=short_tmp).returncode == 0
        _, rest = up.communicate(timeout=30)
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()
    lines += [json.loads(line) for line in rest.splitlines()]
    assert up.returncode == 0
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    running = [line for line in lines if "RUNNING (pid" in line["message"]]
    assert running and running[0]["device"] == "pipe" and running[0]["level"] == "info"
    assert lines[0]["time"][:4].isdigit() and lines[0]["time"][10] == "T"  # ISO-8601 with the date
