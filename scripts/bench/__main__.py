"""``python scripts/bench`` (or ``python -m bench`` in scripts/): the benchmark; see
``bench/__init__.py`` for what it measures and ``python scripts/bench.py --help`` for flags."""

import os
import sys

# Only when run: a spawned child (a procdevices device started by the benchmark) re-imports
# the main module as __mp_main__, and must not pay for the benchmark's imports.
if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.cli import main

    sys.exit(main())
