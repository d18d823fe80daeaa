"""The pytest plugin of procdevices: the ``procdevices_topology`` fixture.

Registered through the ``pytest11`` entry point, so installing procdevices is enough;
``-p no:procdevices`` disables it. A thin layer over :mod:`procdevices.testing`, which is only
imported when a test asks for the fixture: the plugin costs a session nothing else.

    def test_echo(procdevices_topology):
        topo = procdevices_topology(TOML_TEXT_OR_DICT)   # every device RUNNING
        client.connect(topo.endpoint("broker"))

When a test that started a topology fails, each topology's supervisor log is attached to the
report as a section ("procdevices topology 1 log"). See docs/testing.md.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from procdevices.testing import LiveTopology

__all__ = ["TopologyFactory", "procdevices_topology"]

_STARTED = pytest.StashKey[list["LiveTopology"]]()


class TopologyFactory(Protocol):
    """The type of the ``procdevices_topology`` fixture, for annotating tests."""

    def __call__(
        self,
        source: str | Mapping[str, Any],
        *,
        timeout: float = ...,
        states: Mapping[str, str] | None = ...,
        base_dir: str | os.PathLike[str] | None = ...,
    ) -> LiveTopology: ...


def pytest_addoption(parser: pytest.Parser) -> None:
    help = (
        "directory in which each topology gets its private directory (default /tmp; keep it short: "
        "unix socket paths are limited to 107 bytes)"
    )
    parser.addoption("--procdevices-base-dir", metavar="DIR", help=help)
    parser.addini("procdevices_base_dir", help)


@pytest.fixture
def procdevices_topology(request: pytest.FixtureRequest) -> Iterator[TopologyFactory]:
    """``procdevices_topology(toml_text_or_dict, timeout=30.0, states=None, base_dir=None)``
    starts a supervised topology (``python -m procdevices up``) in a private directory and
    returns a :class:`procdevices.testing.LiveTopology` once every device is RUNNING (or in its
    state from ``states``, e.g. ``{"blocked": "FATAL"}``); the test fails with
    the reason and the supervisor's log when it does not come up. Everything it started is
    stopped and removed when the test ends, passes or fails."""
    from procdevices import testing

    started = request.node.stash.setdefault(_STARTED, [])
    configured = request.config.getoption("procdevices_base_dir") or request.config.getini("procdevices_base_dir")

    def start(
        source: str | Mapping[str, Any],
        *,
        timeout: float = testing.DEFAULT_TIMEOUT,
        states: Mapping[str, str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> LiveTopology:
        topo = testing.LiveTopology(
            source,
            timeout=timeout,
            states=states,
            base_dir=base_dir or configured or None,
            label=f"topology {len(started) + 1}",
        )
        started.append(topo)
        try:
            return topo.up()
        except testing.TopologyError as e:
            reason = e.reason
        # Outside the except block: no chained traceback. The log goes into a report section
        # (below), so the message stays one clear line.
        pytest.fail(f"procdevices {topo.label} did not come up: {reason}", pytrace=False)

    try:
        yield start
    finally:
        for topo in reversed(started):
            topo.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for topo in item.stash.get(_STARTED, []):
            report.sections.append((f"procdevices {topo.label} log", topo.log or "(nothing written)"))
    return report
