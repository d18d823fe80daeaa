"""Listening descriptors handed to a running worker over its pipe (inherit.send_job)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from procdevices.devices import runtime as rt
from procdevices.devices.channel import Channel
from procdevices.devices.inherit import FollowingFd, InheritedFd, receive_job, send_job


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock
    sock.close()


def test_the_descriptors_follow_the_job_and_the_sender_keeps_its_own(listening: socket.socket) -> None:
    supervisor_end, worker_end = Channel.pair()
    endpoint = f"tcp://127.0.0.1:{listening.getsockname()[1]}"
    try:
        send_job(supervisor_end, rt.Job(b"device", "ipc://ctl", listeners={endpoint: InheritedFd(listening.fileno())}))
        supervisor_end.send("next")  # what follows on the pipe is not mistaken for the job's
        job = receive_job(worker_end)
        fd = job.listeners[endpoint]
        assert isinstance(fd, int) and fd != listening.fileno()
        with socket.socket(fileno=fd) as taken_over:
            assert os.fstat(fd).st_ino == os.fstat(listening.fileno()).st_ino, "not the same socket"
            with socket.create_connection(listening.getsockname(), timeout=5):
                accepted, _ = taken_over.accept()  # the worker's copy accepts from the one queue
                accepted.close()
        assert worker_end.recv() == "next"
        with socket.create_connection(listening.getsockname(), timeout=5):
            listening.accept()[0].close()  # the sender's copy is still open and listening
    finally:
        supervisor_end.close()
        worker_end.close()


def test_a_job_without_listeners_travels_alone() -> None:
    supervisor_end, worker_end = Channel.pair()
    try:
        send_job(supervisor_end, rt.Job(b"device", "ipc://ctl"))
        supervisor_end.send("next")
        assert receive_job(worker_end) == rt.Job(b"device", "ipc://ctl")
        assert worker_end.recv() == "next"
    finally:
        supervisor_end.close()
        worker_end.close()


def test_descriptors_that_never_come_end_the_wait() -> None:
    """A job that announces descriptors, then a closed pipe: the worker stops waiting."""
    supervisor_end, worker_end = Channel.pair()
    try:
        supervisor_end.send(rt.Job(b"device", "ipc://ctl", listeners={"tcp://127.0.0.1:1": FollowingFd(0)}))
        supervisor_end.close()
        with pytest.raises(EOFError):
            receive_job(worker_end)
    finally:
        worker_end.close()
