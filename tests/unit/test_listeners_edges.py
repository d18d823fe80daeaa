"""The supervisor's listening sockets at their edges: each host form of tcp, an explicit port,
every role (in, out, mon, ctrl), two roles written alike, what a release keeps for the other
instances, stale and vanished ipc files, and the errors that name the endpoint."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.fakes import topology

from procdevices.supervisor.config import DeviceConfig
from procdevices.supervisor.listeners import Listeners


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    made = Listeners()
    try:
        yield made
    finally:
        made.close()


def instance(base: Path, **overrides: Any) -> DeviceConfig:
    (only,) = topology({"pipe": overrides}, base).instances()
    return only


def held(listeners: Listeners, name: str, endpoint: str) -> socket.socket:
    """A duplicate of the listening socket ``name`` takes over for ``endpoint``."""
    return socket.socket(fileno=os.dup(listeners.for_instance(name)[endpoint].fd))


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


@pytest.mark.parametrize(
    ("host", "address"), [("*", "0.0.0.0"), ("localhost", "127.0.0.1"), ("127.0.0.1", "127.0.0.1")]
)
def test_each_tcp_host_form_is_bound_where_libzmq_would(
    listeners: Listeners, tmp_path: Path, host: str, address: str
) -> None:
    owned = listeners.own(instance(tmp_path, **{"in": {"bind": [f"tcp://{host}:*"]}}))
    (endpoint,) = owned.in_.bind
    assert endpoint.startswith(f"tcp://{host}:") and port_of(endpoint) > 0
    with held(listeners, "pipe", endpoint) as sock:
        assert (sock.family, sock.type) == (socket.AF_INET, socket.SOCK_STREAM)
        assert sock.getsockname() == (address, port_of(endpoint))


def test_an_explicit_port_is_kept(listeners: Listeners, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    owned = listeners.own(instance(tmp_path, **{"in": {"bind": [f"tcp://127.0.0.1:{port}"]}}))
    assert owned.in_.bind == (f"tcp://127.0.0.1:{port}",)
    with held(listeners, "pipe", f"tcp://127.0.0.1:{port}") as sock:
        assert sock.getsockname()[1] == port


def test_every_role_is_owned_and_two_roles_written_alike_get_their_own_port(
    listeners: Listeners, tmp_path: Path
) -> None:
    wildcard = {"bind": ["tcp://127.0.0.1:*"]}
    owned = listeners.own(
        instance(tmp_path, kind="steerable", **{"in": wildcard, "out": wildcard, "mon": wildcard, "ctrl": wildcard})
    )
    specs = [owned.in_, owned.out, owned.mon, owned.ctrl]
    assert all(spec is not None for spec in specs)
    endpoints = [spec.bind[0] for spec in specs if spec is not None]
    assert len(set(endpoints)) == 4 and not any(e.endswith(":*") for e in endpoints)
    assert set(listeners.for_instance("pipe")) == set(endpoints)
    again = listeners.own(
        instance(tmp_path, kind="steerable", **{"in": wildcard, "out": wildcard, "mon": wildcard, "ctrl": wildcard})
    )
    assert [again.in_.bind[0], *(s.bind[0] for s in (again.out, again.mon, again.ctrl) if s)] == endpoints


def test_a_release_keeps_what_the_other_instances_resolved(listeners: Listeners, tmp_path: Path) -> None:
    first = instance(tmp_path, **{"in": {"bind": ["tcp://127.0.0.1:*"]}})
    (second,) = topology({"other": {"in": {"bind": ["tcp://127.0.0.1:*"]}}}, tmp_path).instances()
    listeners.own(first)
    (theirs,) = listeners.own(second).in_.bind
    listeners.release("pipe")
    assert listeners.for_instance("pipe") == {}
    assert listeners.own(second).in_.bind == (theirs,), "another instance lost its port"
    (new,) = listeners.own(first).in_.bind
    assert new in listeners.for_instance("pipe") and new != theirs


def test_a_stale_ipc_file_is_replaced_and_a_vanished_one_is_no_error(listeners: Listeners, short_tmp: Path) -> None:
    path = short_tmp / "pipe-in"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a killed device leaves
    owned = listeners.own(instance(short_tmp))
    assert f"ipc://{path}" in owned.in_.bind and path.is_socket()
    with held(listeners, "pipe", f"ipc://{path}") as sock:
        assert (sock.family, sock.type) == (socket.AF_UNIX, socket.SOCK_STREAM)
    path.unlink()  # someone removed it meanwhile
    listeners.release("pipe")
    assert listeners.for_instance("pipe") == {}


def test_ipc_star_is_left_to_the_device(listeners: Listeners, tmp_path: Path) -> None:
    config = instance(tmp_path, **{"in": {"bind": ["ipc://*"]}})
    assert listeners.own(config).in_.bind == ("ipc://*",) and "ipc://*" not in listeners.for_instance("pipe")


def test_a_port_in_use_is_an_error_naming_the_endpoint(listeners: Listeners, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as caught:
            listeners.own(instance(tmp_path, **{"in": {"bind": [f"tcp://127.0.0.1:{port}"]}}))
    assert caught.value.errno == errno.EADDRINUSE
    assert caught.value.strerror == f"cannot listen on tcp://127.0.0.1:{port}: Address already in use"


def test_an_ipc_path_that_cannot_be_made_is_an_error_naming_the_endpoint(listeners: Listeners, short_tmp: Path) -> None:
    path = short_tmp / "missing" / "in.sock"
    with pytest.raises(OSError) as caught:
        listeners.own(instance(short_tmp, **{"in": {"bind": [f"ipc://{path}"]}}))
    assert caught.value.errno == errno.ENOENT
    assert caught.value.strerror == f"cannot listen on ipc://{path}: No such file or directory"
