"""What the client commands print for a human (``--json`` prints the supervisor's own data)."""

from __future__ import annotations

from typing import Any


def state_text(device: dict[str, Any]) -> str:
    """RUNNING, RUNNING (paused), RUNNING (blocked on out 12s), RUNNING (python loop), FATAL, ..."""
    state = str(device["state"])
    notes = []
    if device.get("mq_loop") == "python":
        notes.append("python loop")  # a monitored queue on its slower loop: never silent
    if device.get("paused"):
        notes.append("paused")
    blocked = device.get("blocked")
    if blocked:
        side = f" on {blocked['side']}" if blocked.get("side") else ""
        notes.append(f"blocked{side} {duration(blocked.get('seconds'))}")
    return f"{state} ({', '.join(notes)})" if notes else state


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def status_table(devices: list[dict[str, Any]]) -> str:
    """One row per device process; its resolved endpoints on the line below."""
    rows = [("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT")]
    endpoint_lines: list[str] = []
    for d in devices:
        rows.append(
            (
                str(d["name"]),
                state_text(d),
                str(d["pid"] or "-"),
                duration(d["uptime"]),
                str(d["restarts"]),
                str(d["last_exit"] or ""),
            )
        )
        endpoints = d.get("endpoints") or {}
        endpoint_lines.append(" ".join(f"{role}={','.join(eps)}" for role, eps in endpoints.items() if eps))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    out = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2])]
        cells += [row[3].rjust(widths[3]), row[4].rjust(widths[4]), row[5]]
        out.append("  ".join(cells).rstrip())
        if index > 0 and endpoint_lines[index - 1]:
            out.append("    " + endpoint_lines[index - 1])
    return "\n".join(out)


def stats_lines(results: dict[str, dict[str, Any]]) -> str:
    """Per device: this process's counters, then its totals since the supervisor started and
    its recent rates, when the supervisor sent them."""
    lines = []
    for name, counters in sorted(results.items()):
        own = {k: v for k, v in counters.items() if not isinstance(v, dict)}
        lines.append(f"{name}: " + " ".join(f"{k}={v}" for k, v in own.items()))
        for label, key in (("totals", "totals"), ("per second", "rates")):
            extra = counters.get(key)
            if isinstance(extra, dict):
                lines.append(f"  {label}: " + " ".join(f"{k}={v:g}" for k, v in extra.items()))
    return "\n".join(lines)


def changes(what: str, summary: dict[str, list[str]]) -> str:
    """A reload's or scale's reply: one line per kind of change, per device."""
    lines = [f"{what}:"]
    for kind in ("restarted", "started", "stopped", "updated", "unchanged", "pool_size", "not_applied"):
        names = summary.get(kind) or []
        if names:
            lines.append(f"  {kind:<10} {', '.join(names)}")
    if len(lines) == 1:
        lines.append("  nothing to change")
    return "\n".join(lines)
