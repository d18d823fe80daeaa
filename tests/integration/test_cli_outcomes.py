"""The CLI's failure exit codes and `status --json`'s supervisor fields, against a real `up`:
`scale` exits 1 when an instance ends FATAL, `start`/`restart` exit 1 when the device ends
EXITED (docs/cli.md), and every documented `supervisor.*` field is there with its value."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import psutil
import pytest
from support.cli import Up, describe, write_topology

pytestmark = pytest.mark.timeout(120)

CLI_DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"

# Replica N binds inside directory pN; the test makes p0 and p1 only, so a third replica
# cannot bind (the device binds itself: own_sockets = false) and is FATAL.
REPLICATED = """\
[devices.pipe]
kind = "streamer"
replicas = 2
own_sockets = false
in  = { bind = ["ipc://p{replica}/in.sock"] }
out = { bind = ["ipc://p{replica}/out.sock"] }
"""

# A device whose process never gets to report readiness in time (start_timeout) and is not
# restarted: every start of it ends EXITED.
QUITTER = """\
[devices.quitter]
kind = "streamer"
restart = "never"
start_timeout = 0.001
in  = { bind = ["ipc://quitter-in.sock"] }
out = { bind = ["ipc://quitter-out.sock"] }

[devices.good]
kind = "streamer"
in  = { bind = ["ipc://good-in.sock"] }
out = { bind = ["ipc://good-out.sock"] }
"""


def test_scale_exits_1_when_an_instance_ends_fatal(short_tmp: Path) -> None:
    for replica in (0, 1):
        (short_tmp / f"p{replica}").mkdir()
    config = write_topology(short_tmp, REPLICATED, pool_size=0)
    with Up(config) as up:
        up.wait_states()
        result = up.cli("scale", "pipe", "3")
        assert result.returncode == 1, describe(result)
        assert "pipe.2: FATAL" in result.stdout, describe(result)
        assert up.devices()["pipe.2"]["state"] == "FATAL"
        back = up.cli("scale", "pipe", "2")
        assert back.returncode == 0, describe(back)


def test_start_and_restart_exit_1_when_the_device_ends_exited(short_tmp: Path) -> None:
    config = write_topology(short_tmp, QUITTER, pool_size=0)
    with Up(config) as up:
        up.wait_states({"quitter": "EXITED", "good": "RUNNING"})
        for command in ("start", "restart"):
            result = up.cli(command, "quitter")
            assert result.returncode == 1, describe(result)
            assert "quitter: EXITED (not ready within start_timeout" in result.stdout, describe(result)
        good = up.cli("restart", "good")
        assert good.returncode == 0, describe(good)


def documented_supervisor_fields() -> set[str]:
    text = CLI_DOC.read_text(encoding="utf-8")
    table = text[text.index("`--json` prints one object") :]
    table = table[: table.index("The shape is stable")]
    return set(re.findall(r"`supervisor\.(\w+)`", table))


def test_status_json_has_every_documented_supervisor_field(short_tmp: Path) -> None:
    config = write_topology(short_tmp, REPLICATED.replace("p{replica}/", "{replica}-"), pool_size=1)
    config.write_text(config.read_text().replace("pool_size = 1\n", 'pool_size = 1\nmetrics = "127.0.0.1:0"\n', 1))
    with Up(config) as up:
        up.wait_states()
        result = up.cli("status", "--json")
        assert result.returncode == 0, describe(result)
        supervisor = json.loads(result.stdout)["supervisor"]
        documented = documented_supervisor_fields()
        assert documented == {
            "pid",
            "uptime",
            "started",
            "orphan_grace",
            "source",
            "run_dir",
            "control_endpoint",
            "shutting_down",
            "pool_idle",
            "metrics",
            "adopted",
            "version",
            "upgrade",
        }
        assert documented <= set(supervisor), f"missing: {sorted(documented - set(supervisor))}"
        run_dir = short_tmp / "run"
        assert supervisor["pid"] == up.pid
        assert isinstance(supervisor["uptime"], float) and supervisor["uptime"] > 0
        started = psutil.Process(up.pid).create_time()
        assert started <= supervisor["started"] <= started + 30, (started, supervisor["started"])
        assert supervisor["orphan_grace"] == 0  # what write_topology asks for
        assert supervisor["source"] == str(config)
        assert supervisor["run_dir"] == str(run_dir)
        assert supervisor["control_endpoint"] == f"ipc://{run_dir}/supervisor.sock"
        assert supervisor["shutting_down"] is False
        assert supervisor["pool_idle"] in (0, 1)
        host, port = supervisor["metrics"].rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0, "the real port, not the 0 asked for"
        assert supervisor["adopted"] == 0
        assert supervisor["upgrade"] == {"state": "idle", "attempt": 0}
        assert supervisor["scaled"] == {}  # docs/cli.md, `scale`
        assert os.path.exists(run_dir / "supervisor.sock")
