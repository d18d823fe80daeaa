#!/usr/bin/env python
"""``python scripts/bench.py [flags]``: the benchmark of procdevices against pyzmq's
zmq.devices. The code is the package scripts/bench/ (its ``__init__`` says what each phase
measures; one module per phase, a shared harness); this file keeps the documented command.
"""

import os
import sys

# Only when run: a spawned child (a procdevices device started by the benchmark) re-imports
# the main module as __mp_main__, and must not pay for the benchmark's imports.
if __name__ == "__main__":
    # scripts/ is sys.path[0] already; explicit, for a run through a symbolic link.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench.cli import main

    sys.exit(main())
