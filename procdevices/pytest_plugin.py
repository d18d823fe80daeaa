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

from collections.abc import Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from procdevices.testing import LiveTopology

__all__ = ["TopologyFactory", "procdevices_topology"]

_STARTED = pytest.StashKey[list["LiveTopology"]]()


class TopologyFactory(Protocol):
    """The type of the ``procdevices_topology`` fixture, for annotating tests."""

    def __call__(self, source: str | Mapping[str, Any], *, timeout: float = ...) -> LiveTopology: ...


@pytest.fixture
def procdevices_topology(request: pytest.FixtureRequest) -> Iterator[TopologyFactory]:
    """``procdevices_topology(toml_text_or_dict, timeout=30.0)`` starts a supervised topology
    (``python -m procdevices up``) in a private directory and returns a
    :class:`procdevices.testing.LiveTopology` once every device is RUNNING; the test fails with
    the reason and the supervisor's log when it does not come up. Everything it started is
    stopped and removed when the test ends, passes or fails."""
    from procdevices import testing

    started = request.node.stash.setdefault(_STARTED, [])

    def start(source: str | Mapping[str, Any], *, timeout: float = testing.DEFAULT_TIMEOUT) -> LiveTopology:
        topo = testing.LiveTopology(source, timeout=timeout, label=f"topology {len(started) + 1}")
        started.append(topo)
        try:
            return topo.up()
        except testing.TopologyError as e:
            # The log goes into a report section (below): the message stays one clear line.
            pytest.fail(f"procdevices {topo.label} did not come up: {e.reason}", pytrace=False)

    try:
        yield start
    finally:
        for topo in reversed(started):
            topo.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for topo in item.stash.get(_STARTED, []):
            report.sections.append((f"procdevices {topo.label} log", topo.log or "(nothing written)"))
    return report
