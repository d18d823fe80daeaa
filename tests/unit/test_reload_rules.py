"""Reload's rules, pinned field by field: docs/cli.md's reload table (which settings keep the
process, which restart it), a run_dir that cannot change, the order of a handover, the warm
pool's new size, and the decisions published as events."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
from support.fakes import Harness, topology

from procdevices.control.protocol import ErrorCode
from procdevices.supervisor import policy
from procdevices.supervisor.config import ConfigError, DeviceConfig, Topology, settings
from procdevices.supervisor.reload import instances, plan

CLI_DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"

# One change per name of the table, written as a device's overrides in tests/support/fakes.py.
SUPERVISION: dict[str, dict[str, Any]] = {
    "restart": {"restart": "never"},
    "backoff": {"backoff": {"initial": 1.0, "factor": 3.0, "max": 9.0}},
    "intensity": {"intensity": {"max_restarts": 7, "within": 30.0}},
    "stable_after": {"stable_after": 20.0},
    "probe": {"probe": {"interval": 3.0, "timeout": 1.0, "failures": 4}},
    "memory_limit": {"memory_limit": "64MiB"},
    "start_timeout": {"start_timeout": 20.0},
    "stop_timeout": {"stop_timeout": 7.0},
    "kill_timeout": {"kill_timeout": 4.0},
}


def process_changes(base: Path) -> dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """(before, after) overrides for each name of the table's process row."""
    mq = {"kind": "monitored_queue", "mon": {"bind": [f"ipc://{base}/a-mon"]}}
    return {
        "kind": [({}, {"kind": "queue"})],
        "sockets": [
            ({}, {"in": {"bind": [f"ipc://{base}/elsewhere-in"]}}),
            ({}, {"out": {"bind": [f"ipc://{base}/a-out"], "connect": [f"ipc://{base}/peer"]}}),
        ],
        "socket options": [
            ({}, {"out": {"bind": [f"ipc://{base}/a-out"], "sockopts": {"SNDHWM": 10}}}),
            ({}, {"in": {"bind": [f"ipc://{base}/a-in"], "sockopts": {"RCVHWM": 10}}}),
        ],
        "prefixes": [(mq, {**mq, "in_prefix": "request"}), (mq, {**mq, "out_prefix": "reply"})],
        "stop_linger": [({}, {"stop_linger": 0.25})],
        "own_sockets": [({}, {"own_sockets": False})],
    }


def table_row(starts_with: str) -> set[str]:
    """The backticked names in the first cell of the reload table's row ``starts_with``, plus
    its plain-words entries (``sockets``, ``socket options``, ``prefixes``)."""
    text = CLI_DOC.read_text(encoding="utf-8")
    section = text[text.index("## `reload`") :]
    row = next(line for line in section.splitlines() if line.startswith(f"| {starts_with}"))
    cell = row.split("|")[1]
    inside = cell[cell.index("(") + 1 : cell.rindex(")")]
    return {part.strip().strip("`") for part in inside.split(",")}


def test_the_reload_table_names_exactly_the_fields_tested_here(tmp_path: Path) -> None:
    assert table_row("only supervision settings") == set(SUPERVISION)
    assert table_row("what the process runs") == set(process_changes(tmp_path))
    # Every setting of a device instance is in one row or the other (name, replicas and host
    # are which instances exist, not a setting of one: their rows say INSTANCES).
    table = {"in_", "out", "mon", "ctrl", "in_prefix", "out_prefix", *SUPERVISION} | set(process_changes(tmp_path))
    instances_fields = {f for f, how in settings.device_field_on_reload().items() if how is settings.OnReload.INSTANCES}
    assert instances_fields == {"name", "replicas", "host"}
    fields = set(DeviceConfig._fields) - instances_fields
    assert fields <= table | {"sockets"}, f"not in docs/cli.md's reload table: {sorted(fields - table)}"


def change(tmp_path: Path, before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[str]]:
    old, new = topology({"a": before}, tmp_path), topology({"a": after}, tmp_path)
    return plan(instances(old), instances(new)).summary()


@pytest.mark.parametrize("name", sorted(SUPERVISION))
def test_a_supervision_setting_keeps_the_process(tmp_path: Path, name: str) -> None:
    summary = change(tmp_path, {}, SUPERVISION[name])
    assert summary["updated"] == ["a"] and summary["restarted"] == [], f"{name}: {summary}"


@pytest.mark.parametrize("name", ["kind", "sockets", "socket options", "prefixes", "stop_linger", "own_sockets"])
def test_a_process_setting_restarts_the_device(tmp_path: Path, name: str) -> None:
    for before, after in process_changes(tmp_path)[name]:
        summary = change(tmp_path, before, after)
        assert summary["restarted"] == ["a"] and summary["updated"] == [], f"{name} {after}: {summary}"


def test_the_same_file_changes_nothing(tmp_path: Path) -> None:
    summary = change(tmp_path, SUPERVISION["probe"], SUPERVISION["probe"])
    assert summary["unchanged"] == ["a"] and not (summary["updated"] or summary["restarted"])


class Files:
    def __init__(self, topo: Topology) -> None:
        self.current: Topology | ConfigError = topo

    def __call__(self, path: str | None) -> Topology:
        if isinstance(self.current, ConfigError):
            raise self.current
        return self.current


def reloadable(tmp_path: Path, devices: dict[str, dict[str, Any]]) -> tuple[Harness, Files]:
    topo = topology(devices, tmp_path)
    files = Files(topo)
    return Harness(topo, load=files).start(), files


def test_a_changed_run_dir_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    harness, files = reloadable(tmp_path, {"a": {}})
    harness.ready("a")
    process = harness.process("a")
    moved = topology({"a": {}, "b": {}}, tmp_path)
    files.current = moved._replace(supervisor=moved.supervisor._replace(run_dir=tmp_path / "elsewhere"))
    reply = harness.request("reload")
    assert reply["ok"] is False and reply["code"] == ErrorCode.INVALID_CONFIG.value
    assert "run_dir cannot change while running" in reply["error"]
    assert harness.logged("reload refused, nothing changed: run_dir cannot change")
    assert [c.name for c in harness.sup.children] == ["a"] and harness.process("a") is process
    assert harness.sup.topology.supervisor.run_dir == tmp_path / "run"


def test_a_handover_releases_the_old_address_before_the_new_instance_starts(tmp_path: Path) -> None:
    binds = {"in": {"bind": [f"ipc://{tmp_path}/p-in"]}, "out": {"bind": [f"ipc://{tmp_path}/p-out"]}}
    harness, files = reloadable(tmp_path, {"old": binds})
    harness.ready("old")
    old = harness.process("old")
    files.current = topology({"new": binds}, tmp_path)  # another name, the same addresses
    reply = harness.request("reload")
    assert reply["result"]["stopped"] == ["old"] and reply["result"]["started"] == ["new"]
    assert harness.launches("new") == 0, "the new instance started while the old one holds the address"
    assert harness.state("old") == "STOPPING" and "new" not in [c.name for c in harness.sup.children]
    harness.advance(1.0)
    assert harness.launches("new") == 0
    harness.exit("old", 0)
    assert old.reaped and harness.launcher.forgotten == ["old"]
    assert harness.launches("new") == 1 and harness.state("new") == "STARTING"
    steps = [(e["instance"], e.get("to")) for e in harness.events if e["type"] == "state"]
    assert steps.index(("old", "STOPPED")) < steps.index(("new", "STARTING"))
    ops = harness.launcher.ops
    assert ops.index(("forget", "old")) < ops.index(("launch", "new")), ops


def test_a_handover_during_a_shutdown_starts_nothing(tmp_path: Path) -> None:
    binds = {"in": {"bind": [f"ipc://{tmp_path}/p-in"]}, "out": {"bind": [f"ipc://{tmp_path}/p-out"]}}
    harness, files = reloadable(tmp_path, {"old": binds})
    harness.ready("old")
    files.current = topology({"new": binds}, tmp_path)
    harness.request("reload")
    harness.sup.on_signal(signal.SIGTERM)
    harness.exit("old", 0)
    assert harness.launches("new") == 0 and harness.sup.finished()


def test_a_new_pool_size_resizes_the_pool_at_once(tmp_path: Path) -> None:
    harness, files = reloadable(tmp_path, {"a": {}})
    harness.ready("a")
    raised = topology({"a": {}}, tmp_path)
    files.current = raised._replace(supervisor=raised.supervisor._replace(pool_size=5))
    reply = harness.request("reload")
    assert reply["result"]["pool_size"] == ["5"]
    assert harness.launcher.resized_to == 5


def test_stay_down_is_published(tmp_path: Path) -> None:
    harness = Harness(topology({"a": {"restart": "on-failure"}}, tmp_path)).start()
    harness.ready("a")
    process = harness.exit("a", 0)
    (decision,) = [e for e in harness.events if e["type"] == "decision"]
    assert decision["action"] == "stay_down" and decision["exit_code"] == 0 and decision["delay"] is None
    assert decision["instance"] == "a" and decision["device"] == "a"
    assert harness.state("a") == "EXITED" and process.reaped


@pytest.mark.parametrize(("cpus", "expected"), [(None, 16), (0, 16), (1, 16), (2, 32), (8, 128)])
def test_max_starting_is_sixteen_per_cpu(cpus: int | None, expected: int) -> None:
    assert policy.max_starting(cpus) == expected


def test_the_supervisor_uses_the_cpu_count_when_not_told(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("procdevices.supervisor.core.os.cpu_count", lambda: 3)
    harness = Harness(topology({"a": {}}, tmp_path), cpus=None)
    assert harness.sup.starts.max_starting == 48


def test_wildcard_ports_never_make_a_handover(tmp_path: Path) -> None:
    wildcard = {"in": {"bind": ["tcp://127.0.0.1:*"]}, "out": {"bind": ["tcp://127.0.0.1:*"]}}
    result = plan(instances(topology({"old": wildcard}, tmp_path)), instances(topology({"new": wildcard}, tmp_path)))
    assert result.handovers == [] and result.stopped == ["old"] and [i.config.name for i in result.started] == ["new"]


def test_a_changed_device_without_a_process_is_replaced_in_its_state(tmp_path: Path) -> None:
    harness, files = reloadable(tmp_path, {"stopped": {}, "waiting": {}})
    harness.ready("stopped", "waiting")
    harness.request("stop", name="stopped")
    harness.exit("stopped", 0)
    harness.exit("waiting", 1)  # BACKOFF: no process until its retry
    assert harness.state("stopped") == "STOPPED" and harness.child("waiting").process is None
    files.current = topology({"stopped": {"kind": "queue"}, "waiting": {"kind": "queue"}}, tmp_path)
    assert sorted(harness.request("reload")["result"]["restarted"]) == ["stopped", "waiting"]
    # An operator's stop holds for the new configuration; a device meant to run runs at once.
    assert harness.state("stopped") == "STOPPED" and harness.launches("stopped") == 1
    assert harness.state("waiting") == "STARTING" and harness.child("waiting").config.kind == "queue"
    assert {c.name for c in harness.sup.children} == {"stopped", "waiting"}
