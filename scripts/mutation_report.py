"""The score of a mutation run (scripts/mutation.sh), per module, from mutmut's results in
./mutants: killed (a test failed, or the run timed out) out of every mutant, and the
survivors (a mutant no test noticed, or one no test even ran). Usage:

    python scripts/mutation_report.py [MODULE...] [--survivors FILE]

``--survivors FILE`` writes every survivor, grouped by function: its name, its status, the
line it changed (before/after) and a first sorting of why it survived (``log``: only a log
line's level, device or text changed; ``text``: only a message's wording; ``unreached``: no
unit test runs that code; ``behaviour``: anything else, explained in docs/architecture.md).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}
TIMEOUTS = {36, -24, 24, 152, 255}
CAUGHT = {"killed", "timeout"}


def status(code: int | None) -> str:
    if code in TIMEOUTS:
        return "timeout"
    return STATUS.get(code, "not checked") if code is not None else "not checked"


def function_of(name: str) -> str:
    """'procdevices.supervisor.health.xǁHealthǁcheck__mutmut_3' -> 'Health.check'."""
    local = name.rsplit(".", 1)[1].rsplit("__mutmut_", 1)[0]
    return local.removeprefix("x_").removeprefix("xǁ").replace("ǁ", ".")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("modules", nargs="*")
    parser.add_argument("--root", default="mutants/procdevices/supervisor")
    parser.add_argument("--survivors", type=Path)
    args = parser.parse_args()
    root = Path(args.root)
    modules = args.modules or sorted(p.name.removesuffix(".py.meta") for p in root.glob("*.py.meta"))
    total: Counter[str] = Counter()
    survivors: dict[str, list[str]] = defaultdict(list)
    print(f"{'module':<10} {'mutants':>7} {'killed':>7} {'timeout':>7} {'survived':>8} {'no tests':>8}  score")
    for module in modules:
        meta = root / f"{module}.py.meta"
        if not meta.exists():
            print(f"{module}: no results (run scripts/mutation.sh {module})", file=sys.stderr)
            continue
        codes: dict[str, int | None] = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        counts = Counter(status(code) for code in codes.values())
        total += counts
        sources = _functions(root / f"{module}.py")
        for name, code in sorted(codes.items(), key=lambda item: _natural(item[0])):
            if status(code) in ("survived", "no tests"):
                before, after = _change(sources, name.rsplit(".", 1)[1])
                kind = _kind(status(code), before, after)
                survivors[f"{module}.{function_of(name)}"].append(
                    f"    {name.rsplit('__mutmut_', 1)[1]:>4} {kind:<9} - {before}\n{'':>19}+ {after}\n"
                )
        print(_row(module, counts))
    print(_row("all", total))
    if args.survivors is not None:
        header = (
            "# Surviving mutants of scripts/mutation.sh, by function: number, first sorting, line before (-) and\n"
            "# after (+). Full name for `mutmut show`: procdevices.supervisor.MODULE.xǁClassǁmethod__mutmut_N\n"
            "# (x_function__mutmut_N for a module-level function). Why each survives: docs/architecture.md.\n"
        )
        lines = [f"{function}\n" + "".join(names) for function, names in sorted(survivors.items())]
        args.survivors.write_text(header + "".join(lines), encoding="utf-8")
    return 0


def _natural(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("__mutmut_")
    return stem, int(number) if number.isdigit() else -1


def _functions(path: Path) -> dict[str, str]:
    """Every function of mutmut's mutated copy of a module, by name, as source text."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and "__mutmut_" in node.name:
            found[node.name] = "\n".join(lines[node.lineno - 1 : node.end_lineno])
    return found


def _change(sources: dict[str, str], mutant: str) -> tuple[str, str]:
    """The original line(s) and the mutated one(s), each joined into one line."""
    original = sources.get(mutant.rsplit("__mutmut_", 1)[0] + "__mutmut_orig", "").splitlines()[1:]
    mutated = sources.get(mutant, "").splitlines()[1:]
    removed, added = [], []
    for line in difflib.ndiff(original, mutated):
        if line.startswith("- "):
            removed.append(line[2:].strip())
        elif line.startswith("+ "):
            added.append(line[2:].strip())
    return " ".join(removed) or "?", " ".join(added) or "(removed)"


_LOG = re.compile(r"\blog\(|\blevel=|logging\.|\bdevice=")


def _kind(state: str, before: str, after: str) -> str:
    if state == "no tests":
        return "unreached"
    if _LOG.search(before) or _LOG.search(after):
        return "log"
    strip = re.compile(r"(\"[^\"]*\"|'[^']*')")
    if strip.sub('""', before) == strip.sub('""', after):
        return "text"
    return "behaviour"


def _row(label: str, counts: Counter[str]) -> str:
    n = sum(counts.values())
    caught = sum(counts[s] for s in CAUGHT)
    score = f"{100 * caught / n:.1f} %" if n else "-"
    return (
        f"{label:<10} {n:>7} {counts['killed']:>7} {counts['timeout']:>7} {counts['survived']:>8} "
        f"{counts['no tests']:>8}  {score}"
    )


if __name__ == "__main__":
    sys.exit(main())
