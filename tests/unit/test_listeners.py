"""The supervisor's listening sockets (no device process: the sockets themselves)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from support.fakes import topology

from procdevices.supervisor.listeners import Listeners


def test_a_wildcard_port_is_resolved_once_and_kept(short_tmp: Path) -> None:
    (instance,) = topology({"pipe": {"in": {"bind": ["tcp://127.0.0.1:*"]}}}, short_tmp).instances()
    listeners = Listeners()
    try:
        owned = listeners.own(instance)
        (endpoint,) = owned.in_.bind
        assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith(":*")
        assert listeners.own(instance).in_.bind == (endpoint,), "a second generation got another port"
        port = int(endpoint.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # the kernel accepts into the backlog: no process of the device runs
        assert owned.out is not None
        assert set(listeners.for_instance("pipe")) == {endpoint, *owned.out.bind}
    finally:
        listeners.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_ipc_files_are_made_and_removed(short_tmp: Path) -> None:
    (instance,) = topology({"pipe": {}}, short_tmp).instances()
    listeners = Listeners()
    owned = listeners.own(instance)
    assert owned.out is not None
    paths = [Path(e[len("ipc://") :]) for e in (*owned.in_.bind, *owned.out.bind)]
    assert all(p.is_socket() for p in paths)
    listeners.release("pipe")
    assert not any(p.exists() for p in paths)
    listeners.close()


def test_a_shared_endpoint_stays_open_until_its_last_owner_goes(short_tmp: Path) -> None:
    (one,) = topology({"pipe": {}}, short_tmp).instances()
    listeners = Listeners()
    listeners.own(one)
    renamed = one._replace(name="pipe.0")
    listeners.own(renamed)  # a reload hands pipe's addresses to pipe.0
    listeners.release("pipe")
    assert listeners.for_instance("pipe.0"), "the successor lost its sockets"
    listeners.close()


def test_endpoints_the_supervisor_cannot_make_are_left_to_the_device(short_tmp: Path) -> None:
    (instance,) = topology(
        {"pipe": {"in": {"bind": ["tcp://lo:*"]}, "out": {"bind": ["ipc://@abstract-name"]}}}, short_tmp
    ).instances()
    listeners = Listeners()
    assert listeners.own(instance) == instance
    assert listeners.for_instance("pipe") == {}
    listeners.close()


def test_own_sockets_false_leaves_everything_to_the_device(short_tmp: Path) -> None:
    (instance,) = topology({"pipe": {"own_sockets": False}}, short_tmp).instances()
    listeners = Listeners()
    assert listeners.own(instance) == instance and listeners.for_instance("pipe") == {}
    listeners.close()
