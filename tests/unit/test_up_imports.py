"""What `up` imports before it runs a device: not the metrics server's libraries unless a
metrics server is configured (docs/performance.md, "Session 5"); nothing that only other
commands use, or that `up` needs only once its first devices are spawned ("Session 8").

prometheus_client brings http.server, wsgiref, urllib.request, email and ssl: ~0.1 s of
`up`'s CPU at every start, paid before its first device is spawned. service.py imports
metrics.py only when ``metrics``, ``--metrics`` or ``metrics_socket`` asks for a server.
"""

from __future__ import annotations

import pytest
from support.imports import imported_by

#: Modules `up` must not import before its first spawn: every millisecond of its CPU there
#: delays every device (a second core idles meanwhile). The other commands' modules (cli/main.py
#: imports a command's module when it runs); psutil, which follows spawned devices; tempfile,
#: difflib, zmq.auth: a run dir to create, a misspelt key, a host's CURVE keys.
LATER = (
    "procdevices.cli.client",
    "procdevices.cli.tap",
    "procdevices.cli.top",
    "procdevices.web.command",
    "psutil",
    "tempfile",
    "difflib",
    "zmq.auth",
)

#: Modules `up` must not import while no metrics server is configured.
METRICS_ONLY = ("prometheus_client", "http.server", "wsgiref", "procdevices.supervisor.metrics")

# What `python -m procdevices up` imports: the command line, then (inside cli/serve.py's up())
# the modules it imports when it runs the supervisor.
UP_PATH = [
    "procdevices.cli.main",
    "procdevices.cli.serve",
    "procdevices.cli.cluster",
    "procdevices.cluster.control",
    "procdevices.devices.orphans",
    "procdevices.supervisor.upgrade",
    "procdevices.supervisor.adoption",
    "procdevices.supervisor.metricserror",
    "procdevices.supervisor.runstate",
    "procdevices.supervisor.service",
]


@pytest.mark.timeout(60)
def test_up_imports_no_metrics_server_library() -> None:
    assert sorted(imported_by(UP_PATH).intersection(METRICS_ONLY)) == []


@pytest.mark.timeout(60)
def test_the_metrics_module_does_bring_them() -> None:
    # The list above names what metrics.py really imports: a rename there would otherwise
    # leave the first test checking for modules nobody imports.
    assert set(METRICS_ONLY) <= imported_by(["procdevices.supervisor.metrics"])


@pytest.mark.timeout(60)
def test_up_imports_nothing_it_needs_only_later() -> None:
    assert sorted(imported_by(UP_PATH).intersection(LATER)) == []


@pytest.mark.timeout(60)
def test_the_later_modules_exist() -> None:
    # A misspelt name above would make the test before it pass for nothing.
    imported_by(list(LATER))
