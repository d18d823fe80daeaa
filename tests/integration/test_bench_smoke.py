"""The benchmark still runs through its documented command: `python scripts/bench.py` with a
tiny restart phase (one kill per own_sockets setting) writes its JSON with real figures, no
error, and leaves no process behind (the script kills and reports leftovers itself)."""

from __future__ import annotations

import json
import site
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import describe

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench.py"


@pytest.mark.timeout(180)
def test_a_tiny_restart_phase_runs_through_bench_py(short_tmp: Path) -> None:
    out = short_tmp / "bench.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--only", "restart", "--kills", "1", "--restart-runs", "1"]
        + ["--json", str(out)],
        cwd=short_tmp,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, describe(done)
    results = json.loads(out.read_text())
    assert results["errors"] == [] and results["meta"]["leftover_children"] == []
    assert list(results["meta"]["phases"]) == ["restart"]
    # The JSON says how procdevices is installed, and the report warns of an editable install,
    # whose finder every device process imports (docs/performance.md, "Session 9").
    # An editable install leaves its own .pth file in site-packages: evidence of another kind.
    editable = any(any(Path(d).glob("__editable__.procdevices-*.pth")) for d in site.getsitepackages())
    install = results["meta"]["procdevices_install"]
    assert (install == "editable") if editable else (install in ("regular", "unknown")), install
    assert ("NOTE: procdevices is an editable install here" in done.stdout) == (install == "editable")
    restart = results["restart"]
    assert "RESTART" in done.stdout and "own_sockets = false" in done.stdout
    for setting in ("own_sockets", "own_sockets_false"):
        (run,) = restart[setting]["runs"]
        (kill,) = run["kills"]
        assert 0 < kill["forward_ms"] < 30_000, kill
