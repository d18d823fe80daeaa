"""The run dir's layout has one owner (procdevices/runlayout.py): no other module spells a
file or socket name of the run dir, and every side that needs a path agrees on it."""

from __future__ import annotations

import ast
from pathlib import Path

from procdevices import runlayout
from procdevices.supervisor.config import load_topology
from procdevices.supervisor.devicelogs import log_path
from procdevices.supervisor.events import events_endpoint
from procdevices.supervisor.runstate import RunDir

PACKAGE = Path(__file__).resolve().parents[2] / "procdevices"
NAMES = (
    runlayout.SUPERVISOR_SOCKET,
    runlayout.EVENTS_SOCKET,
    runlayout.METRICS_SOCKET,
    runlayout.STATE_FILE,
    runlayout.HANDBACK_SOCKET,
    runlayout.DEFAULT_RUN_DIR,
    f"/{runlayout.CTL_DIR}/",
)


def _code_strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants that are code, not docstrings or comments."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def spellings(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "runlayout.py":
            continue
        for lineno, text in _code_strings(ast.parse(path.read_text(encoding="utf-8"))):
            found += [f"{path.relative_to(root.parent)}:{lineno}: {name!r}" for name in NAMES if name in text]
    return found


def test_only_runlayout_spells_the_run_dir_names() -> None:
    assert spellings() == []


def test_the_check_finds_a_spelling(tmp_path: Path) -> None:
    (tmp_path / "runlayout.py").write_text('X = "supervisor.sock"\n')
    (tmp_path / "other.py").write_text('"""supervisor.sock in a docstring is fine."""\nY = f"ipc://{d}/events.sock"\n')
    assert spellings(tmp_path) == [f"{tmp_path.name}/other.py:2: 'events.sock'"]


def test_the_supervisor_the_config_and_the_clients_agree(tmp_path: Path) -> None:
    config = tmp_path / "topology.toml"
    config.write_text(
        '[devices.pipe]\nkind = "streamer"\nin.bind = ["tcp://127.0.0.1:*"]\nout.bind = ["tcp://127.0.0.1:*"]\n'
    )
    topology = load_topology(config)
    run_dir = RunDir(topology.supervisor.run_dir)
    assert topology.supervisor.run_dir == tmp_path / runlayout.DEFAULT_RUN_DIR
    assert topology.supervisor.control_endpoint == run_dir.control_endpoint == f"ipc://{run_dir.path}/supervisor.sock"
    assert run_dir.device_control_endpoint("pipe") == f"ipc://{run_dir.path}/ctl/pipe.sock"
    assert run_dir.socket_paths(["pipe"]) == [run_dir.path / "supervisor.sock", run_dir.path / "ctl" / "pipe.sock"]
    assert run_dir.state_file == run_dir.path / "state.json"
    assert events_endpoint(run_dir.path) == f"ipc://{run_dir.path}/events.sock"
    assert log_path(run_dir.path, "pipe") == run_dir.path / "logs" / "pipe.log"


def test_a_control_endpoint_names_its_run_dir(tmp_path: Path) -> None:
    run_dir = RunDir(tmp_path / "run")
    endpoint = run_dir.device_control_endpoint("pipe-2")
    assert runlayout.run_dir_of_control_endpoint(endpoint) == str(run_dir.path)
    assert runlayout.handback_socket(run_dir.path) == f"{run_dir.path}/handback.sock"
    for other in (
        "tcp://127.0.0.1:5555",
        "ipc:///tmp/pipe.sock",
        f"ipc://{run_dir.path}/ctl/a/b.sock",
        "ipc:///ctl/.sock",
    ):
        assert runlayout.run_dir_of_control_endpoint(other) is None, other
