"""Whether a device process's interpreter may start without ``site`` (``python -S``).

A new interpreter runs ``site`` before anything else: it finds the site-packages directories,
puts them and the paths their ``.pth`` files name on sys.path, runs the ``import`` lines of
those ``.pth`` files, imports sitecustomize and usercustomize, and adds ``exit``, ``help`` and
the like to the builtins. A device process takes its launcher's whole sys.path anyway
(boot.main), so the paths are work thrown away, and the rest costs every device: ~4 M
instructions (~1 ms) in a plain install, ~23 M (~6 ms) where an editable install's ``.pth``
imports its finder, with pathlib, re and urllib.parse (docs/performance.md, "Session 9").

So a device's interpreter skips ``site`` when its launcher's ``site`` did nothing else a device
could need: no sitecustomize or usercustomize was imported, and no ``.pth`` file runs code but
those of :data:`HARMLESS`. Anything else keeps ``site``, as before: coverage's or pytest-cov's
subprocess hook, another package's editable finder, the namespace packages of old setuptools.
boot.main then puts back the rest of what a device could see of ``site``: its launcher's
``sys.prefix`` and ``sys.exec_prefix`` (a venv's; without ``site`` they are the base
interpreter's) and the builtins it adds.

Decided once per launcher, at its first start of a device process: the answer is about what the
launcher's own ``site`` did when it started.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable

#: ``.pth`` files whose code concerns nobody in a device process, by the start of their name.
HARMLESS = (
    # setuptools: puts its own distutils first, for builds that import distutils.
    "distutils-precedence.pth",
    # virtualenv: mends distutils' and setuptools' install paths inside a virtualenv.
    "_virtualenv.pth",
    # procdevices' own editable install (setuptools names it after the distribution): its
    # finder finds procdevices, which a device process imports from its launcher's directory
    # without it (spawnproc._HOME).
    f"__editable__.{__name__.partition('.')[0]}-",
)

# What site runs of a .pth file: each line that starts so (site.addpackage).
_CODE = (b"import ", b"import\t")


def runs_code(pth: bytes) -> bool:
    """Whether ``site`` would run a line of this ``.pth`` file's text."""
    return any(line.startswith(_CODE) for line in pth.splitlines())


def code_in(directories: Iterable[str]) -> list[str]:
    """The ``.pth`` files in these directories whose code ``site`` runs, but the harmless."""
    found = []
    for directory in directories:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue  # site skips a directory that is not there too
        for name in names:
            if not name.endswith(".pth") or name.startswith(".") or name.startswith(HARMLESS):
                continue
            path = os.path.join(directory, name)
            try:
                with open(path, "rb") as f:
                    text = f.read()
            except OSError:
                continue
            if runs_code(text):
                found.append(path)
    return found


def _site_directories() -> list[str]:
    """The directories whose ``.pth`` files the launcher's site read (site.main)."""
    import site

    directories = site.getsitepackages()
    if site.ENABLE_USER_SITE:
        directories.append(site.getusersitepackages())
    return directories


@functools.cache
def skippable() -> bool:
    """Whether this launcher's device processes may start without ``site``.

    False when the launcher itself runs without it (its own ``-S`` is among the flags its
    children get already) or when its site ran code a device could depend on."""
    if sys.flags.no_site:
        return False
    if "sitecustomize" in sys.modules or "usercustomize" in sys.modules:
        return False
    return not code_in(_site_directories())


def flags() -> list[str]:
    """The interpreter flags a device process gets on top of its launcher's."""
    return ["-S"] if skippable() else []


def launcher_prefixes() -> tuple[str, str] | None:
    """What boot.main sets in a device process started without site in place of its launcher's
    (sys.prefix, sys.exec_prefix); None when the launcher runs without site itself."""
    return None if sys.flags.no_site else (sys.prefix, sys.exec_prefix)


__all__ = ["HARMLESS", "code_in", "flags", "launcher_prefixes", "runs_code", "skippable"]
