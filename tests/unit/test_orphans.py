"""devices/orphans.py: the grace a device reads from its environment, and which ADOPT
requests it follows (pure logic; the behaviour is tested with real processes in
tests/integration/test_orphan_grace.py)."""

from __future__ import annotations

import pytest

from procdevices.devices.orphans import ORPHAN_GRACE_ENV, AdoptionRefused, check_adoption, grace_from_env

TOKEN = "ab" * 16


@pytest.mark.parametrize(
    ("text", "grace"),
    [("10.0", 10.0), ("0.5", 0.5), ("0", 0.0), ("-3", 0.0), ("nan", 0.0), ("inf", 0.0), ("ten", 0.0), ("", 0.0)],
)
def test_grace_from_env(text: str, grace: float) -> None:
    assert grace_from_env({ORPHAN_GRACE_ENV: text}) == grace


def test_no_grace_without_a_supervisor() -> None:
    assert grace_from_env({}) == 0.0


def test_adopt_with_the_token_names_the_adopter() -> None:
    assert check_adoption({"token": TOKEN, "pid": 1234}, TOKEN).pid == 1234


@pytest.mark.parametrize(
    ("payload", "token", "reason"),
    [
        ({"token": "cd" * 16, "pid": 1234}, TOKEN, "wrong run token"),
        ({"token": TOKEN, "pid": 1234}, None, "not started by a supervisor"),
        ({"token": TOKEN}, TOKEN, "positive integer"),
        ({"token": TOKEN, "pid": True}, TOKEN, "positive integer"),
        ({"token": TOKEN, "pid": 0}, TOKEN, "positive integer"),
        ({"token": TOKEN, "pid": 2**31}, TOKEN, "positive integer"),
        ({"token": 5, "pid": 1234}, TOKEN, "token: string"),
        ([TOKEN, 1234], TOKEN, "payload is an object"),
        (None, TOKEN, "payload is an object"),
    ],
)
def test_adopt_refused(payload: object, token: str | None, reason: str) -> None:
    with pytest.raises(AdoptionRefused, match=reason):
        check_adoption(payload, token)


HANDBACK = "/run/x/handback.sock"


def test_adopt_names_the_handback_socket_of_the_device_run_dir() -> None:
    adoption = check_adoption({"token": TOKEN, "pid": 1234, "handback": HANDBACK}, TOKEN, HANDBACK)
    assert (adoption.pid, adoption.handback) == (1234, HANDBACK)
    assert check_adoption({"token": TOKEN, "pid": 1234}, TOKEN, HANDBACK).handback is None


@pytest.mark.parametrize(
    ("handback", "expected"),
    [
        ("/tmp/elsewhere.sock", HANDBACK),
        ("/run/x/../x/handback.sock", HANDBACK),
        (5, HANDBACK),
        (HANDBACK, None),  # a device outside a run dir sends its sockets nowhere
    ],
)
def test_adopt_refuses_any_other_handback(handback: object, expected: str | None) -> None:
    with pytest.raises(AdoptionRefused, match="not this device's run dir handback socket"):
        check_adoption({"token": TOKEN, "pid": 1234, "handback": handback}, TOKEN, expected)
