#!/usr/bin/env python
"""A/B of the waits: this checkout against a git revision (``--base``, default ``main``).

    python scripts/waits_ab.py --base main --rounds 12

1. ``procdevices.testing``'s ``topology()`` starting and stopping a two-device topology:
   the base revision's procdevices/testing.py (loaded from ``git show``) against this one;
   ``up`` and ``down`` are this checkout's in both, so only the toolkit's waits differ.
2. ``procdevices restart NAME`` on one running topology: the base revision's command line
   (its procdevices package from ``git archive``) against this one.

Rounds alternate which side goes first; the figures are medians (and min-max) of wall time.
On a shared machine, compare the ratio, and run it more than once.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
TOPOLOGY = """
[devices.broker]
kind = "queue"
in  = { bind = ["ipc://broker-in.sock"] }
out = { bind = ["ipc://broker-out.sock"] }

[devices.pipe]
kind = "streamer"
in  = { bind = ["ipc://pipe-in.sock"] }
out = { bind = ["ipc://pipe-out.sock"] }
"""
# Runs `procdevices` from the package directory given first, whatever is installed (an
# editable install's finder would otherwise win over sys.path).
BASE_CLI = """\
import runpy, sys
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, sys.argv.pop(1))
sys.argv[0] = "procdevices"
runpy.run_module("procdevices", run_name="__main__", alter_sys=True)
"""


def base_testing(rev: str, scratch: Path) -> ModuleType:
    path = scratch / "testing_base.py"
    path.write_bytes(
        subprocess.run(
            ["git", "show", f"{rev}:procdevices/testing.py"], cwd=REPO, check=True, capture_output=True
        ).stdout
    )
    spec = importlib.util.spec_from_file_location("testing_base", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def base_package(rev: str, scratch: Path) -> Path:
    archive = scratch / "base.tar"
    with open(archive, "wb") as out:
        subprocess.run(["git", "archive", rev, "procdevices"], cwd=REPO, check=True, stdout=out)
    with tarfile.open(archive) as tar:
        tar.extractall(scratch / "base", filter="data")
    return scratch / "base"


def alternate(rounds: int, sides: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {label: [] for label in sides}
    labels = list(sides)
    for i in range(rounds):
        for label in labels if i % 2 == 0 else labels[::-1]:
            times[label].append(sides[label]())
    return times


def report(what: str, times: dict[str, list[float]]) -> None:
    print(what)
    for label, samples in times.items():
        print(
            f"  {label:6} median {statistics.median(samples):.3f}s (min {min(samples):.3f}, max {max(samples):.3f}) over {len(samples)}"
        )
    base, this = (statistics.median(samples) for samples in times.values())
    print(f"  ratio this/base: {this / base:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="main", help="the git revision to compare with (default main)")
    ap.add_argument("--rounds", type=int, default=12, help="samples per side (default 12)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    import procdevices.testing as this_testing

    with tempfile.TemporaryDirectory(prefix="waits-ab-") as tmp:
        scratch = Path(tmp)
        old_testing = base_testing(args.base, scratch)

        def up_down(module: ModuleType) -> Callable[[], float]:
            def run() -> float:
                started = time.monotonic()
                with module.topology(TOPOLOGY):
                    pass
                return time.monotonic() - started

            return run

        report(
            f"topology() up and down, {args.base} vs this checkout:",
            alternate(args.rounds, {"base": up_down(old_testing), "this": up_down(this_testing)}),
        )

        launcher = scratch / "base_cli.py"
        launcher.write_text(BASE_CLI)
        base_cli = [sys.executable, str(launcher), str(base_package(args.base, scratch))]
        this_cli = [sys.executable, "-m", "procdevices"]
        with this_testing.topology(TOPOLOGY) as topo:

            def restart(cli: list[str]) -> Callable[[], float]:
                def run() -> float:
                    started = time.monotonic()
                    done = subprocess.run(
                        [*cli, "restart", "pipe", "-c", str(topo.config_path)],
                        cwd=topo.directory,
                        env={k: v for k, v in os.environ.items() if not k.startswith("PROCDEVICES_")},
                        capture_output=True,
                        text=True,
                    )
                    assert done.returncode == 0, done.stderr
                    return time.monotonic() - started

                return run

            report(
                f"`procdevices restart pipe`, {args.base} vs this checkout:",
                alternate(args.rounds, {"base": restart(base_cli), "this": restart(this_cli)}),
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
