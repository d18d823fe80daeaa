"""Where the topology and the run dir are, for every command.

The topology file: ``-c/--config``, else ``$PROCDEVICES_CONFIG``, else ``./procdevices.toml``,
else the embedded default topology. The run dir: ``--run-dir``, else ``$PROCDEVICES_RUN_DIR``,
else the topology's ``[supervisor] run_dir``; the embedded default topology's run dir is a
per-user directory (``$XDG_RUNTIME_DIR/procdevices``, else ``/tmp/procdevices-UID``), so a
client finds a supervisor of the default topology from any directory.

Commands that run something (``up``, ``check``, ``run``, ``supervisord-conf``) need the whole
topology valid. Client commands (``status``, ``stop``, ...) only need the run dir: they read
just that from the file and, if the file no longer validates, warn once and carry on — the
running supervisor is the source of truth. They refuse a run dir that is not the caller's
(owner and mode, as ``up`` checks them).
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

from procdevices import runlayout
from procdevices.supervisor.config import Topology, default_topology, find_config, load_topology, validate_run_dir
from procdevices.supervisor.runstate import RunDir

ENV_CONFIG = "PROCDEVICES_CONFIG"
ENV_RUN_DIR = "PROCDEVICES_RUN_DIR"
DEFAULT_FILE_RUN_DIR = runlayout.DEFAULT_RUN_DIR  # next to the topology file, as the loader defaults it
MAX_RAW_BYTES = 1 << 20


def config_path(flag: str | None) -> Path | None:
    explicit = flag if flag is not None else os.environ.get(ENV_CONFIG) or None
    return find_config(explicit, Path.cwd())


def default_run_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_absolute():
        return Path(runtime) / "procdevices"
    return Path(f"/tmp/procdevices-{os.getuid()}")


def run_dir_override(flag: str | None) -> Path | None:
    chosen = flag if flag is not None else os.environ.get(ENV_RUN_DIR) or None
    # abspath, not resolve(): a symlinked run dir must reach RunDir as given, to be refused.
    return Path(os.path.abspath(chosen)) if chosen is not None else None


def topology(config_flag: str | None, run_dir_flag: str | None) -> Topology:
    """The whole topology, validated (ConfigError otherwise), with the run dir override."""
    return _load(config_path(config_flag), run_dir_override(run_dir_flag))


def _load(path: Path | None, override: Path | None) -> Topology:
    if path is None:
        loaded = default_topology(run_dir=override or default_run_dir())
    else:
        # The override goes in before the rules run: they check the run dir `up` will use.
        loaded = load_topology(path, run_dir=override)
    validate_run_dir(loaded, loaded.supervisor.run_dir)  # and that `up` can create it
    return loaded


def client_run_dir(config_flag: str | None, run_dir_flag: str | None) -> Path:
    """The run dir a client should talk to. Only ``[supervisor] run_dir`` is read from the
    file: a topology that no longer validates (or names a host that is gone) must not stop an
    operator from reaching the supervisor that runs it."""
    found = run_dir_override(run_dir_flag)
    if found is None:
        path = config_path(config_flag)
        found = default_run_dir() if path is None else _raw_run_dir(path)
    # A client trusts only a run dir ``up`` would trust: anyone else's sockets could answer
    # with anything (RunDirError: one line, exit 78).
    RunDir(found).check_trusted()
    return found


def _raw_run_dir(path: Path) -> Path:
    """``[supervisor] run_dir`` read without validating anything else (the loader's default,
    ``.procdevices`` next to the file, when it cannot be read)."""
    raw: object = DEFAULT_FILE_RUN_DIR
    try:
        if not path.is_file() or path.stat().st_size > MAX_RAW_BYTES:
            raise ValueError("not a regular file of at most 1 MiB")  # a FIFO would block, /dev/zero never end
        with open(path, "rb") as f:
            data = tomllib.load(f)
        supervisor = data.get("supervisor", {})
        raw = supervisor.get("run_dir", DEFAULT_FILE_RUN_DIR) if isinstance(supervisor, dict) else raw
        if not isinstance(raw, str) or not raw:
            raise ValueError(f"supervisor.run_dir is not a path: {raw!r}")
    except (OSError, ValueError, RecursionError) as e:
        raw = DEFAULT_FILE_RUN_DIR
        print(f"procdevices: warning: {path}: {e}; looking for the supervisor in {path.parent / raw}", file=sys.stderr)
    return Path(os.path.abspath(path.parent / str(raw)))


def reloader(config_flag: str | None, run_dir_flag: str | None) -> Callable[[str | None], Topology]:
    """What `up` re-reads on `reload` or SIGHUP: the file it started with (found once, now, as
    at start), or the file a `reload -c FILE` names; the run dir override of the start stays."""
    started_with = config_path(config_flag)
    override = run_dir_override(run_dir_flag)
    return lambda path: _load(Path(path) if path else started_with, override)
