"""What the client commands say when something is off: the command the user typed, once, in
plain words, and nothing that looks like output when there is none. The real CLI against a
real supervisor."""

from __future__ import annotations

from pathlib import Path

from support.cli import RUN_DIR, Up, describe, write_topology
from support.topologies import PIPELINE

from procdevices.control.client import call_supervisor
from procdevices.control.protocol import SupervisorCommand


def test_client_errors_name_the_command_typed_once_and_quiet_output_is_said(short_tmp: Path) -> None:
    config = write_topology(short_tmp, PIPELINE)
    with Up(config) as up:
        up.wait_states()

        # start/stop/restart ask for a status first: their errors still name themselves.
        for command in ("stop", "start", "restart"):
            result = up.cli(command, "nosuch")
            assert result.returncode == 1, describe(result)
            assert result.stderr.startswith(f"procdevices: {command}: no device named 'nosuch'"), describe(result)

        # The supervisor's message starts with the command already: said once.
        result = up.cli("scale", "pipe", "0")
        assert result.returncode == 1, describe(result)
        assert result.stderr == "procdevices: scale: replicas must be 1 to 64, not 0\n", describe(result)
        result = up.cli("scale", "nosuch", "2")
        assert result.stderr.startswith("procdevices: scale: no device named 'nosuch'"), describe(result)
        assert "scale: scale:" not in result.stderr

        # A wrongly typed argument is named in JSON's words, with the right article.
        reply = call_supervisor(
            f"ipc://{short_tmp / RUN_DIR}/supervisor.sock", SupervisorCommand.SCALE, {"name": "pipe", "replicas": "2"}
        )
        assert reply == {"ok": False, "error": "scale: replicas must be an integer", "code": "bad_request"}, reply

        # stats of an unknown device: the error, and no empty line before it.
        result = up.cli("stats", "nosuch")
        assert result.returncode == 1, describe(result)
        assert result.stdout == "", describe(result)
        assert result.stderr.startswith("procdevices: stats"), describe(result)

        # A device that has written nothing: said, not an empty screen.
        result = up.cli("logs", "pipe")
        assert result.returncode == 0, describe(result)
        assert result.stdout == ""
        assert result.stderr.startswith("procdevices: logs: pipe has written nothing ("), describe(result)
        assert result.stderr.endswith("pipe.log is empty)\n"), describe(result)
