"""What a device process imports: none of the heavy standard modules that pyzmq's own device
process does without (docs/performance.md, "pyzmq-spawn baseline with a minimal main").

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

# What a device process runs: multiprocessing's spawn entry point, then (unpickling its job)
# the runtime and its device class's module; a warm worker also runs launch.pool_worker_main.
DEVICE_PATH = ["multiprocessing.spawn", "procdevices.devices.launch", *FORKSERVER_PRELOAD]


@pytest.mark.timeout(60)
def test_the_device_path_imports_no_heavy_module() -> None:
    # Beyond what pyzmq itself imports: on Python 3.13 its Cython backend imports inspect and
    # ast, for pyzmq's own device as for ours.
    pyzmq = imported_by(["zmq", "zmq.devices"])
    assert sorted(imported_by(DEVICE_PATH).intersection(HEAVY) - pyzmq) == []
