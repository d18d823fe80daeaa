"""Three hosts as network namespaces on one machine (tests/support/netns.py), one topology
file, each host's devices run by that host's own engine: hosts a and b with `up --host`, host
c under a real supervisord running the program `export supervisord --host c` printed.

    a: feed (streamer)  PULL *:5570 ──► PUSH @sink.in ─────────────────┐
       REQ client ──► @broker.in                                       │
    b: broker (queue)   ROUTER *:5559 ──► DEALER *:5560                │
    c: sink (streamer)  PULL *:5571 ◄──────────────────────────────────┘ ──► PUSH *:5572
       REP worker ──► broker.out                PULL client ◄── *:5572

The control endpoints (tcp :7100 on each host's address) are private to the namespaces, as
are the device ports: no other test can collide with them.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.cli import cli, describe, wait_for
from support.netns import HostUp, Network, SupervisordHost, netns_or_skip

pytestmark = pytest.mark.timeout(240)


def topology(directory: Path, net: Network, *, cut_proof: bool = True) -> Path:
    hosts = "".join(
        f'[hosts.{h}]\naddress = "{net.address(h)}"\ncontrol = "tcp://{net.address(h)}:7100"\n\n' for h in net.hosts
    )
    feed_options = ", sockopts = { HEARTBEAT_TIMEOUT = 30000 }" if cut_proof else ""
    path = directory / "topology.toml"
    path.write_text(
        f"""\
[supervisor]
pool_size = 0

[supervisor.defaults]
probe = {{ interval = 0.2, timeout = 1.0, failures = 3 }}
stop_timeout = 2.0
kill_timeout = 1.0

[cluster]
keys = "keys"

{hosts}
[devices.broker]
host = "b"
kind = "queue"
in = {{ bind = ["tcp://*:5559"] }}
out = {{ bind = ["tcp://*:5560"] }}

[devices.feed]
host = "a"
kind = "streamer"
in = {{ bind = ["tcp://*:5570"] }}
# A link cut longer than HEARTBEAT_TIMEOUT drops the connection and with it what the kernel
# still held for it (the messages sent during the cut). The cut below lasts 3 s plus however
# long a loaded machine takes to start the pusher: a timeout well above that keeps the test
# about the cut, not about the machine's load. (Heartbeats at their defaults: the silent
# death test below, cut_proof=False.)
out = {{ connect = ["@sink.in"]{feed_options} }}

[devices.sink]
host = "c"
kind = "streamer"
in = {{ bind = ["tcp://*:5571"] }}
out = {{ bind = ["tcp://*:5572"] }}
"""
    )
    return path


@pytest.fixture
def net() -> Iterator[Network]:
    netns_or_skip()
    with Network(["a", "b", "c"]) as network:
        yield network


class Peers:
    """The users' own clients, each a process inside a host's namespace; all ended at exit."""

    def __init__(self, net: Network, script: str) -> None:
        self.net, self.script = net, script
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, host: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            self.net.run(host, [sys.executable, self.script, *args]), stdout=subprocess.PIPE, text=True
        )
        self.procs.append(proc)
        if args[0] in ("rep", "pull"):
            assert proc.stdout is not None
            assert json.loads(proc.stdout.readline()) == {"ready": True}
        return proc

    def run(self, host: str, *args: str, timeout: float = 60) -> dict[str, int]:
        result = subprocess.run(
            self.net.run(host, [sys.executable, self.script, *args]), capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, f"{args}: {result.stdout} {result.stderr}"
        answer: dict[str, int] = json.loads(result.stdout)
        return answer

    @staticmethod
    def finish(proc: subprocess.Popen[str], timeout: float) -> dict[str, int]:
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, out
        answer: dict[str, int] = json.loads(out.splitlines()[-1])
        return answer

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
            proc.communicate(timeout=10)


def timed(proc: subprocess.Popen[str], since: float) -> tuple[subprocess.CompletedProcess[str], float]:
    """Wait for ``proc``: its result and the seconds from ``since`` to its end."""
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), time.monotonic() - since


def test_three_hosts_one_topology(net: Network, short_tmp: Path, helper_script: object) -> None:
    config = topology(short_tmp, net)
    assert cli("keys", "generate", str(short_tmp / "keys"), cwd=short_tmp).returncode == 0
    exported = cli(
        "export", "supervisord", "--host", "c", "--run-dir", str(short_tmp / "run-c"), "-c", str(config), cwd=short_tmp
    )
    assert exported.returncode == 0, describe(exported)
    a, b = HostUp(config, net, "a"), HostUp(config, net, "b")
    c = SupervisordHost(config, net, "c", exported.stdout)
    broker_ep, worker_ep = f"tcp://{net.address('b')}:5559", f"tcp://{net.address('b')}:5560"
    feed_ep, sink_ep = f"tcp://{net.address('a')}:5570", f"tcp://{net.address('c')}:5572"
    peers = Peers(net, helper_script("netns_peer.py"))  # type: ignore[operator]
    with contextlib.ExitStack() as stack:
        for host in (a, b, c):
            stack.enter_context(host)
        stack.callback(peers.close)
        a.wait_states({"feed": "RUNNING"})
        b.wait_states({"broker": "RUNNING"})
        c.wait_states({"sink": "RUNNING"})

        # REQ on a -> queue on b -> REP on c; PUSH on a -> streamer a -> streamer c -> PULL on c.
        peers.start("c", "rep", worker_ep)
        assert peers.run("a", "req", broker_ep, "20", "30") == {"round_trips": 20}
        pull = peers.start("c", "pull", sink_ep, "50", "one", "30")
        peers.run("a", "push", feed_ep, "50", "one")
        assert peers.finish(pull, 40) == {"received": 50}

        # status --all from a: every host, every device.
        everything = a.cli("status", "--all", "--json")
        assert everything.returncode == 0, describe(everything)
        hosts = json.loads(everything.stdout)["hosts"]
        assert {name: [d["name"] for d in h["status"]["devices"]] for name, h in hosts.items()} == {
            "a": ["feed"],
            "b": ["broker"],
            "c": ["sink"],
        }
        assert all(h["reachable"] and h["error"] is None for h in hosts.values())

        # restart NAME from a restarts the device on c.
        old = c.devices()["sink"]["pid"]
        restarted = a.cli("restart", "sink")
        assert restarted.returncode == 0, describe(restarted)
        assert c.devices()["sink"]["pid"] != old

        # Host c's link cut for 3 s: nothing reaches c meanwhile; then everything does.
        pull = peers.start("c", "pull", sink_ep, "50", "two", "60")
        net.cut("c")
        cut_at = time.monotonic()
        try:
            peers.run("a", "push", feed_ep, "50", "two")  # a's own device takes them
            with pytest.raises(subprocess.TimeoutExpired):
                # The outage: c receives nothing while its link is down (3 s from the cut).
                pull.wait(max(0.5, 3.0 - (time.monotonic() - cut_at)))
        finally:
            net.mend("c")
        assert peers.finish(pull, 60) == {"received": 50}

        # SIGKILL of every procdevices process on b: within 5 s status --all says so (exit 5),
        # while a and c keep forwarding.
        # A command's own start-up (an interpreter, imports, the topology) grows with the load of
        # the machine. So beside `status --all`, at the same moment, the same command is asked of
        # one answering host (`status sink`, routed to c): the lost host may add its --timeout
        # (2 s) to that, never more. Quiet machine: ~2.9 s from the SIGKILL to the answer.
        b.kill_everything()
        killed = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            lost_call = pool.submit(timed, a.start_cli("status", "--all", "--json", "--timeout", "2"), killed)
            peer_call = pool.submit(timed, a.start_cli("status", "sink", "--json"), killed)
            (lost, took), (peer, usual) = lost_call.result(), peer_call.result()
        print(f"status --all with b lost: {took:.2f}s; status sink at the same time: {usual:.2f}s")
        assert lost.returncode == 5, describe(lost)
        assert peer.returncode == 0, describe(peer)
        assert took < max(5.0, usual + 2.0 + 1.5), f"status --all took {took:.1f}s (status sink: {usual:.1f}s)"
        report = json.loads(lost.stdout)["hosts"]
        assert report["b"]["reachable"] is False and report["b"]["status"] is None
        assert report["a"]["reachable"] and report["c"]["reachable"]
        pull = peers.start("c", "pull", sink_ep, "50", "three", "30")
        peers.run("a", "push", feed_ep, "50", "three")
        assert peers.finish(pull, 40) == {"received": 50}

        # b back: traffic through b resumes, nothing done on a or c.
        b2 = stack.enter_context(HostUp(config, net, "b", label="up-b2"))
        b2.wait_states({"broker": "RUNNING"})
        assert peers.run("a", "req", broker_ep, "20", "60") == {"round_trips": 20}
        back = a.cli("status", "--all", "--json")
        assert back.returncode == 0, describe(back)


def _connections(net: Network, host: str, peer: str) -> set[str]:
    """Local ports of ``host``'s established tcp connections to ``peer`` (ADDRESS:PORT)."""
    out = subprocess.run(
        net.run(host, ["ss", "-Htn", "state", "established", "dst", peer]),
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    return {line.split()[-2].rpartition(":")[2] for line in out.splitlines() if line.strip()}


def test_heartbeats_replace_a_connection_to_a_host_that_vanished(
    net: Network, short_tmp: Path, helper_script: object
) -> None:
    """Host c dies while its link is down (a never hears of it) and comes back after a reboot.
    The feed on a sends nothing meanwhile: only its ZMTP heartbeats (from the reference
    @sink.in) find the dead connection and make libzmq connect again, before any message."""
    config = topology(short_tmp, net, cut_proof=False)
    assert cli("keys", "generate", str(short_tmp / "keys"), cwd=short_tmp).returncode == 0
    sink_in = f"{net.address('c')}:5571"
    feed_ep, sink_ep = f"tcp://{net.address('a')}:5570", f"tcp://{net.address('c')}:5572"
    peers = Peers(net, helper_script("netns_peer.py"))  # type: ignore[operator]
    a, c = HostUp(config, net, "a"), HostUp(config, net, "c")
    with contextlib.ExitStack() as stack:
        stack.enter_context(a)
        stack.enter_context(c)
        stack.callback(peers.close)
        a.wait_states({"feed": "RUNNING"})
        c.wait_states({"sink": "RUNNING"})
        pull = peers.start("c", "pull", sink_ep, "10", "before", "30")
        peers.run("a", "push", feed_ep, "10", "before")
        assert peers.finish(pull, 40) == {"received": 10}
        before = _connections(net, "a", sink_in)
        assert len(before) == 1, before

        # c dies silently: its link down first, so no FIN or RST reaches a, then its kernel
        # state goes too (a reboot), so nothing of the old connection is retransmitted later.
        net.cut("c")
        c.kill_everything()
        net.reboot("c")  # back with its link up, and no memory of a's connection
        c2 = stack.enter_context(HostUp(config, net, "c", label="up-c2"))
        c2.wait_states({"sink": "RUNNING"})
        # `ss -E` prints a line whenever a socket in a's namespace closes: the wake-up.
        closes = subprocess.Popen(net.run("a", ["ss", "-HtnE"]), stdout=subprocess.PIPE, text=True)
        stack.callback(closes.communicate, timeout=10)
        stack.callback(closes.terminate)
        events = closes.stdout
        assert events is not None
        os.set_blocking(events.fileno(), False)

        def wake(seconds: float) -> None:
            ready, _, _ = select.select([events], [], [], seconds)
            if ready:
                events.read()

        fresh = wait_for(
            lambda: (_connections(net, "a", sink_in) - before) or None,
            20,
            "a new connection from a to the restarted sink (heartbeat timeout 5 s)",
            wake=wake,
        )
        assert fresh
        pull = peers.start("c", "pull", sink_ep, "20", "after", "30")
        peers.run("a", "push", feed_ep, "20", "after")
        assert peers.finish(pull, 40) == {"received": 20}
