"""A mass start on a busy machine, on the fake clock: start_timeout catches a start that hangs,
not one that waits for a CPU (startclock.py)."""

from __future__ import annotations

from pathlib import Path

from support.fakes import Harness, topology

from procdevices.supervisor.states import State

STEP = 0.05


def run_busy_machine(h: Harness, *, cpus: int, other_load: int, work: float, seconds: float) -> int:
    """Let ``seconds`` pass on a machine of ``cpus`` CPUs shared fairly by every starting device
    and ``other_load`` busy processes of other programs: a start needs ``work`` CPU-seconds.
    A device the supervisor kills exits at once. Returns how many were killed while starting."""
    done: dict[int, float] = {}
    kills = 0
    for _ in range(round(seconds / STEP)):
        starting = [c for c in h.sup.children if c.state is State.STARTING and c.process is not None]
        rate = min(1.0, cpus / (len(starting) + other_load)) if starting else 0.0
        for child in starting:
            process = h.process(child.name)
            done[process.pid] = done.get(process.pid, 0.0) + rate * STEP
            if "SIGKILL" not in process.signals and done[process.pid] >= work:
                h.ready(child.name)
        h.advance(STEP)
        for child in list(h.sup.children):
            if child.process is None:
                continue
            killed = h.process(child.name)
            if "SIGKILL" in killed.signals and not killed.reaped:
                kills += 1
                h.exit(child.name, -9)
    return kills


def test_a_mass_start_on_a_busy_machine_kills_nothing_that_is_merely_slow(tmp_path: Path) -> None:
    """64 replicas on 2 CPUs beside 14 busy processes (the issue's load ~14): 32 start at
    once, each gets 2/46 of a CPU, so a start of 0.5 CPU-s takes 11.5 s on the wall clock,
    past start_timeout (10 s). Counted on the wall clock, the whole first wave was killed."""
    names = [f"r{i}" for i in range(64)]
    h = Harness(topology({name: {} for name in names}, tmp_path), cpus=2).start()
    assert h.sup.starts.max_starting == 32

    kills = run_busy_machine(h, cpus=2, other_load=14, work=0.5, seconds=60.0)

    assert kills == 0 and not h.logged("not ready within start_timeout")
    assert all(h.state(name) == "RUNNING" for name in names)
    assert all(h.launches(name) == 1 for name in names), "a device was started twice"


def test_a_hung_start_is_still_killed_once_its_share_of_start_timeout_is_used(tmp_path: Path) -> None:
    """Four devices on 2 CPUs: each has half a CPU while all four start. Three are ready
    after 2 s (1 s of their budget); the fourth hangs: alone from then on, its clock is the
    wall clock, and it is killed after 1 + 9 s of budget, 11 s after its spawn."""
    h = Harness(topology({name: {} for name in "abcd"}, tmp_path), cpus=2).start()
    h.advance(2.0)
    h.ready("a", "b", "c")
    h.advance(8.9)
    assert h.state("d") == "STARTING" and not h.logged("not ready within start_timeout")
    h.advance(0.2)
    assert h.logged("d: not ready within start_timeout 10.0s (11.0s on the wall clock, starting beside others)")
    assert h.process("d").signals == ["SIGKILL"]


def test_alone_a_hung_start_is_killed_after_start_timeout_as_before(tmp_path: Path) -> None:
    h = Harness(topology({"a": {}, "b": {}}, tmp_path), cpus=2).start()  # two on two CPUs: a CPU each
    h.ready("a")
    h.advance(9.9)
    assert h.state("b") == "STARTING"
    h.advance(0.2)
    assert h.logged("b: not ready within start_timeout 10.0s; killing")


def test_the_loop_sleeps_until_the_moved_deadline(tmp_path: Path) -> None:
    """The next deadline follows the shared clock: never in the past (the loop would spin)."""
    h = Harness(topology({name: {} for name in "abcd"}, tmp_path), cpus=1).start()
    h.advance(12.0)  # 4 on 1 CPU: 3 s of budget used each
    deadline = h.sup.next_deadline(h.clock.now)
    assert deadline > h.clock.now
    assert abs(min(deadline, h.clock.now + 1.0) - (h.clock.now + 1.0)) < 1e-9  # 7 s × 4 away: the 1 s tick
    assert h.sup.starts.clock.deadline(h.child("a"), 10.0, h.clock.now, 4) == h.clock.now + 28.0
