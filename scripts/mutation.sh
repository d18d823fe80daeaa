#!/usr/bin/env bash
# Mutation testing of the supervisor's decision modules (core, child, health, policy, reload,
# launcher, listeners, events), the mutants killed by tests/unit. Not part of CI: a habit,
# run before changing those modules' tests, and its score kept in docs/architecture.md
# ("Test quality").
#
#   scripts/mutation.sh                  # every module (~30 min on 2 shared cores)
#   scripts/mutation.sh health policy    # some modules only (a few minutes each)
#   JOBS=4 scripts/mutation.sh           # more parallel test runs (default 2)
#
# Needs the dev extra: .venv/bin/pip install -e '.[dev]'. The configuration (which files,
# which tests) is [tool.mutmut] in pyproject.toml; mutmut works in ./mutants (git-ignored)
# and keeps its results there, so a second run only tests what changed.
# Prints the score per module and the surviving mutants; `.venv/bin/mutmut show NAME` shows one.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
JOBS=${JOBS:-2}
MODULES=(core child health policy reload launcher listeners events)

selected=()
for module in "$@"; do
    if [[ ! " ${MODULES[*]} " =~ " ${module} " ]]; then
        echo "mutation.sh: unknown module '${module}' (modules: ${MODULES[*]})" >&2
        exit 2
    fi
    selected+=("procdevices.supervisor.${module}.*")
done

"$VENV/bin/mutmut" run --max-children "$JOBS" "${selected[@]}" >/dev/null
"$VENV/bin/python" scripts/mutation_report.py "$@"
