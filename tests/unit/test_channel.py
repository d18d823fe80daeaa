"""The launcher-device pipe (devices/channel.py): framing, EOF, descriptors, a spawned end."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from procdevices.devices.channel import Channel
from procdevices.devices.launch import SPAWN


@pytest.fixture
def pair() -> Iterator[tuple[Channel, Channel]]:
    a, b = Channel.pair()
    yield a, b
    a.close()
    b.close()


def test_objects_cross_in_order_both_ways(pair: tuple[Channel, Channel]) -> None:
    a, b = pair
    big = os.urandom(200_000)  # past the one-write size: header and body go separately
    a.send(("ready", {"pid": 1}))
    a.send(big)
    b.send("back")
    assert b.recv() == ("ready", {"pid": 1})
    assert b.recv() == big
    assert a.recv() == "back"


def test_a_closed_end_reads_as_eof_and_poll_sees_it(pair: tuple[Channel, Channel]) -> None:
    a, b = pair
    assert not b.poll(0)
    a.send(1)
    assert b.poll(0)
    assert b.recv() == 1
    a.close()
    assert a.closed and a.fileno() == -1
    assert b.poll(1.0)
    with pytest.raises(EOFError):
        b.recv()


def test_the_framing_is_multiprocessings(pair: tuple[Channel, Channel]) -> None:
    """The docstring's promise: a Connection reads what a Channel sends, and the reverse."""
    a, b = pair
    conn = Connection(os.dup(b.fileno()))
    try:
        a.send(["x", 2])
        assert conn.recv() == ["x", 2]
        conn.send({"y": os.urandom(70_000)})
        assert len(a.recv()["y"]) == 70_000
    finally:
        conn.close()


def test_descriptors_arrive_as_duplicates(pair: tuple[Channel, Channel], tmp_path: os.PathLike[str]) -> None:
    a, b = pair
    with socket.socket() as listening:
        a.send_fds([listening.fileno()])
        (fd,) = b.recv_fds(1)
        try:
            assert fd != listening.fileno()
            assert os.fstat(fd).st_ino == os.fstat(listening.fileno()).st_ino
        finally:
            os.close(fd)


def test_fewer_descriptors_than_announced_is_eof(pair: tuple[Channel, Channel]) -> None:
    a, b = pair
    r, w = os.pipe()
    try:
        a.send_fds([r])
        with pytest.raises(EOFError, match="expected 2 descriptors, got 1"):
            b.recv_fds(2)
        a.close()
        with pytest.raises(EOFError):
            b.recv_fds(1)
    finally:
        os.close(r)
        os.close(w)


def _echo(end: Channel) -> None:
    end.send(("echo", end.recv()))
    end.close()


@pytest.mark.timeout(60)
def test_an_end_pickled_into_a_spawned_process_works(pair: tuple[Channel, Channel]) -> None:
    a, b = pair
    process = SPAWN.Process(target=_echo, args=(b,))
    process.start()
    try:
        b.close()  # the child has its own duplicate
        a.send("hello")
        assert a.recv() == ("echo", "hello")
        with pytest.raises(EOFError):
            a.recv()
    finally:
        process.join(30)
    assert process.exitcode == 0
