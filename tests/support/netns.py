"""Several hosts on one machine, as network namespaces (for multi-host tests).

``Network(["a", "b", "c"])`` builds, under names unique to this test (parallel runs never
collide):

    switch namespace  <prefix>sw : bridge br0, one veth end per host (v-a, v-b, ...), all up
    host namespaces   <prefix>a  : eth0 (the other veth end) = 10.77.0.1/24, lo up
                      <prefix>b  : eth0 = 10.77.0.2/24, lo up            ... and so on

The addresses exist inside those namespaces only and no namespace has a route out, so no
traffic ever leaves them (each test has its own switch, so two tests may use the same
addresses). ``cut(host)`` / ``mend(host)`` set the host's link down and up at the switch.
``reboot(host)`` deletes and remakes the host's namespace (its kernel state gone, as after a
power cycle). ``close()`` (the context manager's exit) deletes every namespace it made, which removes the
veth pairs and the bridge with them.

``HostUp`` is ``support.cli.Up`` for one host: ``ip netns exec NS python -m procdevices up
--host NAME --run-dir RUN``, each host with its own run dir next to the topology file; its
``cli`` runs client commands inside the namespace as that host ($PROCDEVICES_HOST,
$PROCDEVICES_RUN_DIR). ``netns_or_skip()`` says why namespaces cannot be made here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import psutil
import pytest

from support.cli import CLI, CLI_TIMEOUT, SupervisorEvents, Up

SUBNET = "10.77.0"


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def netns_or_skip() -> None:
    """Skip, with the reason, where network namespaces cannot be made (not root, no iproute2,
    a container without CAP_SYS_ADMIN)."""
    probe = f"pdprobe{uuid.uuid4().hex[:8]}"
    try:
        _ip("netns", "add", probe)
    except (OSError, FileNotFoundError) as e:
        pytest.skip(f"network namespaces cannot be made here: {e}")
    _ip("netns", "del", probe)


class Network:
    def __init__(self, hosts: list[str]) -> None:
        self.prefix = f"pd{uuid.uuid4().hex[:8]}"
        self.switch = f"{self.prefix}sw"
        self.hosts = list(hosts)
        self.made: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def namespace(self, host: str) -> str:
        return f"{self.prefix}{host}"

    def address(self, host: str) -> str:
        return f"{SUBNET}.{self.hosts.index(host) + 1}"

    def _add(self, name: str) -> None:
        _ip("netns", "add", name)
        self.made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        self._add(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for host in self.hosts:
            self._add_host(host)

    def _add_host(self, host: str) -> None:
        ns = self.namespace(host)
        self._add(ns)
        # Both ends are created inside their namespaces: nothing ever appears in ours.
        _ip("link", "add", f"v-{host}", "netns", self.switch, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.switch, "link", "set", f"v-{host}", "master", "br0")
        _ip("-n", self.switch, "link", "set", f"v-{host}", "up")
        # A fixed MAC per host, as a real NIC keeps across a reboot (the others' ARP caches stay right).
        _ip("-n", ns, "link", "set", "eth0", "address", f"02:77:00:00:00:{self.hosts.index(host) + 1:02x}")
        _ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")

    def reboot(self, host: str) -> None:
        """The host's kernel state gone, as after a power cycle: its namespace (with every
        socket and connection in it, and its veth pair) deleted and made again. Its processes
        must have ended first."""
        ns = self.namespace(host)
        # The pair first, synchronously: a namespace's own clean-up runs later in the kernel.
        _ip("-n", self.switch, "link", "del", f"v-{host}")
        _ip("netns", "del", ns)
        self.made.remove(ns)
        self._add_host(host)

    def cut(self, host: str) -> None:
        _ip("-n", self.switch, "link", "set", f"v-{host}", "down")

    def mend(self, host: str) -> None:
        _ip("-n", self.switch, "link", "set", f"v-{host}", "up")

    def run(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` to run inside ``host``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    def close(self) -> None:
        for name in reversed(self.made):
            try:
                _ip("netns", "del", name)
            except OSError:
                pass
        self.made.clear()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HostUp(Up):
    """``up --host NAME`` inside the host's namespace, with a run dir of its own."""

    def __init__(self, config: Path, net: Network, host: str, *, label: str | None = None) -> None:
        super().__init__(config, label=label or f"up-{host}")
        self.net = net
        self.host = host
        self.run_dir = config.parent / f"run-{host}"
        self.changes.close()
        self.changes = SupervisorEvents(self.run_dir)

    def argv(self) -> list[str]:
        return self.net.run(
            self.host, [*CLI, "up", "-c", str(self.config), "--host", self.host, "--run-dir", str(self.run_dir)]
        )

    def start(self) -> HostUp:
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            # `ip netns exec` execs the command: the pid is procdevices' own.
            self.proc = subprocess.Popen(
                self.argv(), cwd=self.directory, stdout=out, stderr=err, start_new_session=True
            )
        self.me = psutil.Process(self.proc.pid)
        return self

    def env(self) -> dict[str, str]:
        return {**os.environ, "PROCDEVICES_HOST": self.host, "PROCDEVICES_RUN_DIR": str(self.run_dir)}

    def cli(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.net.run(self.host, [*CLI, *args, "-c", str(self.config)]),
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
        )

    def start_cli(self, *args: str) -> subprocess.Popen[str]:
        """A client command inside the namespace, as this host, not waited for."""
        return subprocess.Popen(
            self.net.run(self.host, [*CLI, *args, "-c", str(self.config)]),
            cwd=self.directory,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(),
        )

    def kill_everything(self) -> None:
        """SIGKILL every procdevices process of this host at once (supervisor, devices, pool
        workers): the host's software is gone, its network stays."""
        victims = self.leftovers()
        for proc in victims:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(victims, timeout=10)
        if self.proc is not None:
            self.proc.wait(10)


class SupervisordHost(HostUp):
    """The host's ``up --host`` run by a real supervisord (in the host's namespace), from the
    program ``procdevices export supervisord --host NAME`` printed."""

    def __init__(self, config: Path, net: Network, host: str, program: str) -> None:
        super().__init__(config, net, host, label=f"supervisord-{host}")
        directory = config.parent / f"supervisord-{host}"
        directory.mkdir()
        self.conf = directory / "supervisord.conf"
        self.conf.write_text(
            "[supervisord]\n"
            f"logfile = {directory}/supervisord.log\n"
            f"pidfile = {directory}/supervisord.pid\n"
            f"childlogdir = {directory}\n"
            "[unix_http_server]\n"
            f"file = {directory}/s.sock\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
            "[supervisorctl]\n"
            f"serverurl = unix://{directory}/s.sock\n\n" + program
        )

    def argv(self) -> list[str]:
        import sys

        return self.net.run(self.host, [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(self.conf)])

    def stop(self) -> None:
        """SIGTERM to supervisord: it stops `up` (SIGTERM), which stops its devices; wait."""
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)

    def close(self, *, check: bool = True) -> None:
        self.stop()
        super().close(check=check)
