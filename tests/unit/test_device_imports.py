"""What a device process imports: none of the heavy standard modules that pyzmq's own device
process does without (docs/performance.md, "pyzmq-spawn baseline with a minimal main"), and
none of multiprocessing, which pyzmq's does import (docs/performance.md, "Session 7").

``dataclasses`` brings ``inspect``, ``ast``, ``dis`` and ``tokenize`` (~1.2 MiB of private
memory and ~10 ms of CPU per device); ``hmac`` brings ``hashlib`` and OpenSSL (~3.7 MiB of
RSS). Each device of a topology pays them again, so they stay out of the device path:
the modules a spawned device, a warm worker and the fork server import.
"""

from __future__ import annotations

import pytest
from support.imports import imported_by

from procdevices.devices.launch import FORKSERVER_PRELOAD

#: Modules a device process must not import at start-up. ``uuid`` (its module and _uuid,
#: ~0.5 ms and 0.15 MiB per device): random inproc names come from ``os.urandom`` instead.
HEAVY = ("dataclasses", "inspect", "ast", "hmac", "hashlib", "uuid")

#: What a device spawned by procdevices (devices/spawnproc.py) does without, where
#: multiprocessing's spawn would import them in every device: its own modules, ``socket``
#: (with ``selectors``), and ``pathlib`` (``fnmatch``, ``urllib.parse``). ~40 M instructions,
#: ~0.7 MiB of private memory per device.
LEAN = ("multiprocessing", "multiprocessing.spawn", "socket", "selectors", "pathlib")

# What a device process runs: boot.main, then (unpickling its job) the runtime and its device
# class's module; a warm worker imports FORKSERVER_PRELOAD (boot.PRELOAD) while it waits.
DEVICE_PATH = ["procdevices.devices.boot", *FORKSERVER_PRELOAD]


@pytest.mark.timeout(60)
def test_the_device_path_imports_no_heavy_module() -> None:
    # Beyond what pyzmq itself imports: on Python 3.13 its Cython backend imports inspect and
    # ast, for pyzmq's own device as for ours.
    pyzmq = imported_by(["zmq", "zmq.devices"])
    assert sorted(imported_by(DEVICE_PATH).intersection(HEAVY) - pyzmq) == []


@pytest.mark.timeout(60)
def test_a_spawned_device_imports_neither_multiprocessing_nor_socket() -> None:
    pyzmq = imported_by(["zmq"])
    assert sorted(imported_by(DEVICE_PATH).intersection(LEAN) - pyzmq) == []


@pytest.mark.timeout(60)
def test_multiprocessings_spawn_would_bring_them() -> None:
    # The list above names what multiprocessing's child really imports: a rename there would
    # otherwise leave the test checking for modules nobody imports.
    assert set(LEAN) <= imported_by(["multiprocessing.spawn", "pathlib"])
