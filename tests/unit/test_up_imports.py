"""What `up` imports before it runs a device: not the metrics server's libraries unless a
metrics server is configured (docs/performance.md, "Session 5"); nothing that only other
commands use, or that `up` needs only once its first devices are spawned ("Session 8"); no
``dataclasses`` at all ("Session 11").

prometheus_client brings http.server, wsgiref, urllib.request, email and ssl: ~0.1 s of
`up`'s CPU at every start, paid before its first device is spawned. service.py imports
metrics.py only when ``metrics``, ``--metrics`` or ``metrics_socket`` asks for a server.
"""

from __future__ import annotations

import pytest
from support.imports import imported_by, probe

from procdevices.cli.serve import UP_MODULES

#: Modules `up` must not import before its first spawn: every millisecond of its CPU there
#: delays every device (a second core idles meanwhile). The other commands' modules (cli/main.py
#: imports a command's module when it runs); psutil, which follows spawned devices; tempfile,
#: difflib, zmq.auth: a run dir to create, a misspelt key, a host's CURVE keys; shutil, which
#: argparse's formatter imports to size itself unless told the width (cli/main.py).
LATER = (
    "procdevices.cli.client",
    "procdevices.cli.tap",
    "procdevices.cli.top",
    "procdevices.web.command",
    "psutil",
    "tempfile",
    "difflib",
    "zmq.auth",
    "shutil",
)

#: Modules nothing on `up`'s path imports, beyond what pyzmq brings: ``dataclasses`` and what it
#: brings (~6 ms), and the ~0.6 ms each of its records costs to create (supervisor/__init__.py).
#: (On Python 3.13 pyzmq's Cython backend imports ``inspect``, with ``ast`` and ``dis``.)
HEAVY = ("dataclasses", "inspect", "ast", "dis")

#: Modules `up` must not import while no metrics server is configured.
METRICS_ONLY = ("prometheus_client", "http.server", "wsgiref", "procdevices.supervisor.metrics")

# What `python -m procdevices up` imports: one list, the upgrade preflight's (cli/serve.py).
UP_PATH = list(UP_MODULES)


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
def test_up_imports_no_dataclasses() -> None:
    assert sorted((imported_by(UP_PATH) - imported_by(["zmq"])).intersection(HEAVY)) == []


@pytest.mark.timeout(60)
def test_the_later_modules_exist() -> None:
    # A misspelt name above would make the test before it pass for nothing.
    imported_by(list(LATER))


# `up`'s command line as the entry point parses it: the parser of `up` alone, and its handler.
_PARSE_UP = """
import importlib, json, sys
main = importlib.import_module("procdevices.cli.main")
argv = ["-c", "topology.toml", "up", "--host", "a"]
command = main.command_in(argv)
parser, _ = main.build_parser(only=command)
args = parser.parse_args(argv)
main.handler_of(args.command, args.handler)
print(json.dumps([command, sorted(sys.modules)]))
"""


@pytest.mark.timeout(60)
def test_parsing_ups_command_line_imports_nothing_it_needs_only_later() -> None:
    command, modules = probe(_PARSE_UP)
    assert command == "up"
    assert sorted(set(modules).intersection(LATER)) == []
    assert sorted((set(modules) - imported_by(["zmq"])).intersection(HEAVY)) == []


def test_up_modules_names_every_module_up_imports_itself() -> None:
    # UP_MODULES is written by hand beside up()'s own imports: an import added there and not
    # to the list would escape the upgrade's preflight and the tests above.
    import ast
    import importlib
    import inspect

    def module_of(package: str, name: str) -> str:
        """What `from package import name` imports a module as: the submodule, else the package."""
        try:
            return importlib.import_module(f"{package}.{name}").__name__
        except ModuleNotFoundError:
            return package

    from procdevices.cli import serve

    function = ast.parse(inspect.getsource(serve.up)).body[0]
    imported = set()
    for node in ast.walk(function):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("procdevices"):
            for alias in node.names:
                imported.add(module_of(node.module, alias.name))
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names if a.name.startswith("procdevices"))
    assert imported and imported <= set(UP_MODULES), sorted(imported - set(UP_MODULES))
