"""The supervisor behind ``procdevices up``: configuration, policy, children, loop and service.

Its records are NamedTuples (values) and plain classes with ``__slots__`` (mutable records such
as a Child), not dataclasses. On Python 3.11 a frozen dataclass costs ~0.6 ms to create (it
compiles six generated methods), a NamedTuple ~0.06 ms, and importing ``dataclasses`` brings
``inspect``, ``ast`` and ``dis`` (~6 ms). `up` made 38 of them before its first device could
start, every other command ~20 (the configuration's and the run state's): ~25 ms of CPU before
the first spawn, while the machine's other CPUs idle (docs/performance.md, "Session 11").
tests/unit/test_up_imports.py keeps ``dataclasses`` off `up`'s path.
"""
