"""The settings table, the kinds table and the backoff sequence as docs/configuration.md states
them must match the code: SETTINGS, DeviceConfig's defaults, KIND_TABLE, policy.backoff_delay.
(In the manner of tests/test_states.py for docs/states.md.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from procdevices.supervisor.config import (
    IPC_PATH_MAX,
    KIND_TABLE,
    DeviceConfig,
    SupervisorConfig,
    default_topology,
    load_topology,
)
from procdevices.supervisor.config.kinds import CTRL_DEFAULT_TYPE, MON_DEFAULT_TYPE, Presence
from procdevices.supervisor.config.settings import (
    DEVICE_SETTING_KEYS,
    DEVICE_SETTINGS,
    GROUP_TYPES,
    MAX_DEADLINE_SECONDS,
    SETTINGS,
    SUPERVISOR_SETTINGS,
    Setting,
    ValueType,
)
from procdevices.supervisor.config.source import MAX_FILE_SIZE
from procdevices.supervisor.policy import Backoff, backoff_delay

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
TEXT = DOC.read_text(encoding="utf-8")


def section(heading: str) -> str:
    """The text under ``heading`` (a whole line) up to the next heading of any level."""
    lines = TEXT.splitlines()
    assert lines.count(heading) == 1, f"heading {heading!r} missing or repeated in {DOC.name}"
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("#")), len(lines))
    return "\n".join(lines[start:end])


def table(heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first markdown table under ``heading``, header excluded."""
    rows = [line for line in section(heading).splitlines() if line.startswith("|")]
    assert len(rows) >= 3, f"no table under {heading!r}"
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows[2:]]


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def expected_type(setting: Setting) -> str:
    """The Type column as the doc must write it for ``setting``."""
    if setting.value_type is ValueType.PATH:
        return "string (path)"
    if setting.value_type is ValueType.CHOICE:
        return "string"
    if setting.value_type is ValueType.MEMORY:
        assert setting.minimum is not None
        return f"integer (bytes) or string, >= {_num(setting.minimum / 1024**2)} MiB"
    base = setting.value_type.value
    low, high = setting.minimum, setting.maximum
    if setting.value_type is ValueType.INTEGER and low is not None and high is not None:
        return f"integer, {_num(low)}–{_num(high)}"
    bounds = []
    if low is not None:
        bounds.append(f"{'>=' if setting.min_inclusive else '>'} {_num(low)}")
    if high is not None:
        bounds.append(f"<= {_num(high)}")
    return f"{base} {', '.join(bounds)}" if bounds else base


def expected_default(setting: Setting) -> str:
    default = setting.default
    if isinstance(default, bool):
        return "`true`" if default else "`false`"
    if default is None:
        # An unset limit is no limit; an unset address serves nothing.
        return "none (off)" if setting.value_type is ValueType.ADDRESS else "none (no limit)"
    if isinstance(default, str):
        return f'`"{default}"`'
    if setting.choices is not None:
        assert isinstance(default, setting.choices)
        return f'`"{default.value}"`'
    return f"`{default!r}`"


# Rows of the doc tables that are not rows of SETTINGS: sockets, kind, prefixes, sub-tables.
NOT_SCALAR_SETTINGS = {"kind", "in", "out", "mon", "ctrl", "in_prefix", "out_prefix", "defaults", *GROUP_TYPES}

DOC_TABLES = {
    "## `[supervisor]`": SUPERVISOR_SETTINGS,
    "## `[devices.NAME]`": tuple(s for s in DEVICE_SETTINGS if s.group is None),
    **{f"### `{group}`": tuple(s for s in DEVICE_SETTINGS if s.group == group) for group in GROUP_TYPES},
}


@pytest.mark.parametrize("heading", list(DOC_TABLES))
def test_doc_settings_tables_match_the_schema(heading: str) -> None:
    rows = {row[0].strip("`"): row for row in table(heading)}
    for setting in DOC_TABLES[heading]:
        assert setting.field in rows, f"{DOC.name} {heading}: no row for `{setting.field}`"
        _, type_text, default_text, *_ = rows[setting.field]
        assert (type_text, default_text) == (expected_type(setting), expected_default(setting)), (
            f"{DOC.name} {heading}: row `{setting.field}` must read "
            f"| {expected_type(setting)} | {expected_default(setting)} |"
        )
    # Every other row documents a setting, so it must be in the schema table too.
    assert set(rows) - NOT_SCALAR_SETTINGS == {s.field for s in DOC_TABLES[heading]}


def test_doc_lists_the_keys_allowed_in_defaults() -> None:
    text = " ".join(section("## `[supervisor.defaults]`").split())
    listed = re.search(r"may be given here: (.*?)\. Each device", text)
    assert listed is not None
    assert re.findall(r"`([a-z_]+)`", listed.group(1)) == list(DEVICE_SETTING_KEYS)


def test_model_defaults_are_the_table_defaults() -> None:
    defaults = DeviceConfig._field_defaults
    for setting in DEVICE_SETTINGS:
        if setting.group is None:
            assert defaults[setting.path] == setting.default, setting.path
        else:
            group_default = GROUP_TYPES[setting.group]()
            assert getattr(group_default, setting.field) == setting.default, setting.path
            assert defaults[setting.group] == group_default, setting.group
    pool_size = next(s for s in SETTINGS if s.path == "pool_size")
    assert SupervisorConfig._field_defaults["pool_size"] == pool_size.default


def test_doc_backoff_sequence_is_policy_backoff_delay() -> None:
    text = " ".join(section("### `backoff`").split())
    claim = re.search(r"restarts after 1, 2, 3, \.\.\. consecutive failures wait ([0-9., ]+?) seconds", text)
    assert claim is not None, "the worked backoff sequence is missing"
    stated = [float(x) for x in claim.group(1).split(", ")]
    assert stated == [backoff_delay(Backoff(), n) for n in range(1, len(stated) + 1)]
    assert len(stated) >= 9  # long enough to show the cap


def test_doc_backoff_formula_is_policy_backoff_delay() -> None:
    text = " ".join(section("### `backoff`").split())
    assert "`n = 1`: nothing" in text
    formula = re.search(r"`n >= 2` \(a crash loop\): `([^`]+)` seconds", text)
    assert formula is not None and formula.group(1) == "min(max, initial * factor ** (n - 2))"
    for backoff in (Backoff(), Backoff(initial=0.5, max=20.0, factor=3.0), Backoff(initial=1.0, max=1.0, factor=1.0)):
        assert backoff_delay(backoff, 1) == 0.0
        for n in range(2, 12):
            stated = min(backoff.max, backoff.initial * backoff.factor ** (n - 2))
            assert backoff_delay(backoff, n) == stated


def test_doc_kinds_table_is_the_kind_table() -> None:
    rows = table("## Kinds")
    presence = {Presence.NONE: "no", Presence.OPTIONAL: "optional", Presence.REQUIRED: "required"}
    assert [row[0].strip("`") for row in rows] == [spec.name for spec in KIND_TABLE]
    for row, spec in zip(rows, KIND_TABLE, strict=True):
        assert row[1] == f"`{spec.in_type}` / `{spec.out_type}`", row
        assert row[2] == spec.use, row
        assert (row[3], row[4]) == (presence[spec.mon], presence[spec.ctrl]), row
    assert f"Type defaults to `{MON_DEFAULT_TYPE}`" in TEXT and f"Type defaults to `{CTRL_DEFAULT_TYPE}`" in TEXT


def test_doc_limits_are_the_code_limits() -> None:
    flat = " ".join(TEXT.split())
    assert MAX_FILE_SIZE == 1024**2 and "regular file of at most 1 MiB" in flat
    assert f"at most {_num(MAX_DEADLINE_SECONDS)} seconds" in flat
    assert IPC_PATH_MAX == 107 and flat.count("107-byte") + flat.count("107 bytes") >= 2


def test_default_topology_devices_use_the_documented_defaults() -> None:
    broker = default_topology().devices[0]
    for setting in DEVICE_SETTINGS:
        if setting.group is None:
            assert getattr(broker, setting.path) == setting.default, setting.path


def test_the_full_example_in_the_doc_loads(tmp_path: Path) -> None:
    example = re.search(r"## A full example\n\n```toml\n(.*?)```", TEXT, re.S)
    assert example is not None
    path = tmp_path / "procdevices.toml"
    path.write_text(example.group(1), encoding="utf-8")
    topology = load_topology(path)
    assert [d.name for d in topology.devices] == ["broker", "prices", "stage", "audited"]
