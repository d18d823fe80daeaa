"""The command line's held signals (procdevices/cli/interrupts.py): recorded, never acted on
while held; then handed on exactly once (replay), raised again as they would have been
(release), or dropped with the handlers put back (restore)."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from procdevices.cli import interrupts


@pytest.fixture
def handlers() -> Iterator[None]:
    before = {signum: signal.getsignal(signum) for signum in interrupts.HELD}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


def test_held_signals_are_recorded_then_raised_again_on_release(handlers: None) -> None:
    held = interrupts.hold()
    signal.raise_signal(signal.SIGINT)  # would be a KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)
    assert held.pending == [signal.SIGINT], "recorded once, acted on never"
    with pytest.raises(KeyboardInterrupt):
        held.release()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_replay_hands_the_signals_to_the_handlers_installed_since(handlers: None) -> None:
    held = interrupts.hold()
    signal.raise_signal(signal.SIGTERM)
    signal.raise_signal(signal.SIGHUP)
    seen: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda s, f: seen.append(s))  # what up's event loop does
    held.replay()
    assert seen == [signal.SIGTERM, signal.SIGHUP]
    held.replay()
    assert seen == [signal.SIGTERM, signal.SIGHUP], "each signal is handed on once"


def test_restore_puts_the_handlers_back_and_acts_on_nothing(handlers: None) -> None:
    before = signal.getsignal(signal.SIGINT)
    held = interrupts.hold()
    assert signal.getsignal(signal.SIGINT) is not before
    signal.raise_signal(signal.SIGINT)
    held.restore()
    assert signal.getsignal(signal.SIGINT) is before
    assert held.pending == []
