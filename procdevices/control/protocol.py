"""Both control protocols of procdevices, and the validation every request passes first.

**A device's control socket** (the device binds a ROUTER, clients connect a DEALER):

    request:  [request id (1-64 bytes), command (ASCII, a Command), JSON payload]
    reply:    [request id, status (b"ok" | b"error"), JSON payload]

The request id lets a client drop a late reply to a request it already gave up on, so one
timeout never shifts every later answer by one.

**The supervisor's control endpoint** (``supervisor.sock``, a ROUTER; clients use REQ):

    request:  one frame, a JSON object {"command": SupervisorCommand, "args": {...}}
    reply:    one frame, {"ok": true, "result": ...}
              or {"ok": false, "error": "one line for a human", "code": ErrorCode}

Both sides speak the same :class:`ErrorCode` vocabulary; clients map codes to exceptions,
never class names. Every request is checked here (frame count, sizes, JSON depth, types)
before anything else sees it, so that no input can raise past a server's loop.
"""

from __future__ import annotations

import enum
import json
from typing import Any, NamedTuple

# Re-exported: the wire's error vocabulary lives on the bottom floor (errors.py maps to it).
from procdevices.errorcodes import ErrorCode as ErrorCode

# A request is a handful of short fields: anything larger is not ours.
MAX_REQUEST_BYTES = 64 * 1024
MAX_REQUEST_ID_BYTES = 64
MAX_JSON_DEPTH = 16
MAX_ARG_LENGTH = 4096  # a name, or a topology file's path


class Command(enum.Enum):
    """The commands a device's control socket understands."""

    PING = b"PING"  # liveness, and how the forwarding loop is doing
    STATS = b"STATS"
    PAUSE = b"PAUSE"
    RESUME = b"RESUME"
    STOP = b"STOP"
    INFO = b"INFO"
    ADOPT = b"ADOPT"  # a new supervisor of the same run takes an orphaned device (devices/orphans.py)


class SupervisorCommand(enum.Enum):
    """The commands the supervisor's control endpoint understands."""

    STATUS = "status"
    STATS = "stats"
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    PAUSE = "pause"
    RESUME = "resume"
    DOWN = "down"
    RELOAD = "reload"
    SCALE = "scale"
    UPGRADE = "upgrade"  # re-execute with the procdevices now installed (supervisor/upgrade.py)


OK = b"ok"
ERROR = b"error"


class ProtocolError(Exception):
    """A request that cannot be served; carries the code and a one-line reason."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def as_reply(self) -> dict[str, Any]:
        return error_reply(self.code, self.message)


def error_reply(code: ErrorCode, message: str) -> dict[str, Any]:
    return {"ok": False, "error": message, "code": code.value}


def error_code(body: Any) -> ErrorCode | None:
    """The code of an error payload (either protocol), None when it carries none we know."""
    if isinstance(body, dict):
        try:
            return ErrorCode(body.get("code"))
        except ValueError:
            return None
    return None


# The records of this module are NamedTuples, not dataclasses: every device process imports
# it, and ``dataclasses`` (with ``inspect``, ``ast``, ``dis``, ``tokenize``) would cost each
# device ~1.2 MiB of private memory and ~10 ms of CPU at start (docs/performance.md).


class DeviceStats(NamedTuple):
    """Traffic counters of a forwarding loop since it started.

    ``msgs`` count message frames, as libzmq does (a routing envelope counts).
    ``front`` is the in socket, ``back`` the out socket; ``in`` is what the device received
    on that socket, ``out`` what it sent through it.
    """

    front_msgs_in: int = 0
    front_bytes_in: int = 0
    front_msgs_out: int = 0
    front_bytes_out: int = 0
    back_msgs_in: int = 0
    back_bytes_in: int = 0
    back_msgs_out: int = 0
    back_bytes_out: int = 0

    @classmethod
    def from_counters(cls, values: list[int]) -> DeviceStats:
        if len(values) != len(cls._fields):
            raise ValueError(f"expected {len(cls._fields)} counters, got {len(values)}")
        return cls(*values)

    def as_dict(self) -> dict[str, int]:
        return self._asdict()

    @classmethod
    def from_wire(cls, value: object) -> DeviceStats | None:
        """The counters of a device's answer, or None when it is not exactly that shape
        (every counter there, a non-negative int)."""
        if not isinstance(value, dict):
            return None
        values = [value.get(name) for name in cls._fields]
        # type() is int: JSON's integers are exactly int, and a bool (an int) fails the same test.
        if not all(type(v) is int and v >= 0 for v in values):
            return None
        return cls(*values)  # type: ignore[arg-type]  # checked just above


#: What ``PingReply.loop`` says besides the loop phases (running, stopped, dead): the loop
#: waits in a send on a full peer (backpressure, not a hang).
LOOP_BLOCKED = "blocked"
#: ``PingReply.loop`` of a loop that ended without being asked: the device is hung.
LOOP_DEAD = "dead"


class PingReply(NamedTuple):
    """The answer to PING (docs/devices.md, "Liveness: PING"): built by the device's control
    server, read by the supervisor's health checks; one definition for both ends.

    ``loop`` is ``running``, ``stopped``, ``dead`` or ``blocked`` (then ``blocked_for``
    seconds, on ``blocked_side`` ``in``/``out`` or None when unknown); ``probed`` says whether
    the loop is steerable (its counters and blocking can be seen), ``answered_ago`` when it
    last answered, ``stats`` its last counters (they ride on PING: the supervisor learns the
    traffic on its probe tick at no extra cost).
    """

    pid: int
    paused: bool
    stopping: bool
    loop: str
    blocked_for: float | None = None
    blocked_side: str | None = None
    probed: bool = False
    answered_ago: float | None = None
    stats: DeviceStats | None = None

    def to_wire(self) -> dict[str, Any]:
        body = self._asdict()
        body["stats"] = self.stats.as_dict() if self.stats is not None else None
        return body

    @classmethod
    def from_wire(cls, body: object) -> PingReply | None:
        """The reply in ``body``, or None when it is not one (not an object, no ``loop``). A
        field of the wrong type reads as its default: one odd field (an older or newer
        device) must not cost the rest of the answer."""
        if not isinstance(body, dict) or not isinstance(body.get("loop"), str):
            return None

        def number(key: str) -> float | None:
            value = body.get(key)
            return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

        pid = body.get("pid")
        side = body.get("blocked_side")
        return cls(
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else 0,
            paused=body.get("paused") is True,
            stopping=body.get("stopping") is True,
            loop=body["loop"],
            blocked_for=number("blocked_for"),
            blocked_side=side if isinstance(side, str) else None,
            probed=body.get("probed") is True,
            answered_ago=number("answered_ago"),
            stats=DeviceStats.from_wire(body.get("stats")),
        )


def encode(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def decode(frame: bytes) -> Any:
    return json.loads(frame) if frame else None


def loads_bounded(frame: bytes, what: str) -> Any:
    """``json.loads`` for untrusted input: size and nesting bounded, every failure a
    ProtocolError (never ValueError, UnicodeError or RecursionError)."""
    if len(frame) > MAX_REQUEST_BYTES:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{what} is {len(frame)} bytes; at most {MAX_REQUEST_BYTES}")
    if _nesting(frame) > MAX_JSON_DEPTH:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(frame) if frame else None
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{what} is not valid JSON: {_one_line(str(e))}") from None


def _nesting(frame: bytes) -> int:
    """An upper bound of the JSON nesting depth, found without parsing (brackets inside
    strings are skipped), so a 100,000-deep array is refused before json sees it."""
    openers = frame.count(b"[") + frame.count(b"{")
    if openers <= MAX_JSON_DEPTH:
        return openers  # the common case, counted in C: no deeper than that many openers
    depth = deepest = 0
    in_string = escaped = False
    for byte in frame:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _one_line(text: str, limit: int = 200) -> str:
    text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the device protocol ------------------------------------------------------------------------


class DeviceRequest(NamedTuple):
    request_id: bytes
    command: Command
    payload: Any


def parse_device_request(frames: list[bytes]) -> DeviceRequest:
    """Validate a request as received by the device's ROUTER, *without* its routing id.

    Raises ProtocolError; when ``frames`` has no usable request id the caller cannot answer
    at all (``ProtocolError.code`` is BAD_REQUEST and ``request_id_of(frames)`` is None).
    """
    if request_id_of(frames) is None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "a request starts with a request id of 1 to 64 bytes")
    if len(frames) not in (2, 3):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"a request has 3 frames (id, command, payload), got {len(frames)}")
    try:
        command = Command(frames[1])
    except ValueError:
        known = ", ".join(c.value.decode() for c in Command)
        shown = _one_line(frames[1][:64].decode("latin-1"))
        raise ProtocolError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {shown!r} (commands: {known})") from None
    payload = loads_bounded(frames[2], "the payload") if len(frames) == 3 else None
    return DeviceRequest(frames[0], command, payload)


def request_id_of(frames: list[bytes]) -> bytes | None:
    if frames and 1 <= len(frames[0]) <= MAX_REQUEST_ID_BYTES:
        return frames[0]
    return None


def device_error(code: ErrorCode, message: str) -> dict[str, Any]:
    """The payload of a device's error reply."""
    return {"error": message, "code": code.value}


# -- the supervisor protocol --------------------------------------------------------------------

# The arguments each supervisor command accepts: name → (type, required).
_NAME_ARG: dict[str, tuple[type, bool]] = {"name": (str, False)}
SUPERVISOR_ARGS: dict[SupervisorCommand, dict[str, tuple[type, bool]]] = {
    SupervisorCommand.STATUS: _NAME_ARG,
    SupervisorCommand.STATS: _NAME_ARG,
    SupervisorCommand.START: _NAME_ARG,
    SupervisorCommand.STOP: _NAME_ARG,
    SupervisorCommand.RESTART: _NAME_ARG,
    SupervisorCommand.PAUSE: _NAME_ARG,
    SupervisorCommand.RESUME: _NAME_ARG,
    SupervisorCommand.DOWN: {},
    SupervisorCommand.RELOAD: {"config": (str, False)},
    SupervisorCommand.SCALE: {"name": (str, True), "replicas": (int, True)},
    SupervisorCommand.UPGRADE: {},
}


class SupervisorRequest(NamedTuple):
    command: SupervisorCommand
    args: dict[str, Any]

    @property
    def name(self) -> str | None:
        name = self.args.get("name")
        return name if isinstance(name, str) and name else None


def supervisor_request(command: SupervisorCommand, **args: Any) -> bytes:
    """The wire form of a supervisor request (for clients)."""
    return encode({"command": command.value, "args": {k: v for k, v in args.items() if v is not None}})


# How an argument's type is named in an error: JSON's words, with their article.
_JSON_TYPES: dict[type, str] = {str: "a string", int: "an integer"}


def parse_supervisor_request(frame: bytes) -> SupervisorRequest:
    """Validate one request to the supervisor's endpoint; raises ProtocolError."""
    body = loads_bounded(frame, "the request")
    if not isinstance(body, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, 'a request is a JSON object {"command": ..., "args": {...}}')
    unknown_keys = sorted(set(body) - {"command", "args"})
    if unknown_keys:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"unknown request keys: {_one_line(', '.join(unknown_keys))}")
    try:
        command = SupervisorCommand(body.get("command"))
    except (ValueError, TypeError):
        known = ", ".join(c.value for c in SupervisorCommand)
        shown = _one_line(repr(body.get("command")), 64)
        raise ProtocolError(ErrorCode.UNKNOWN_COMMAND, f"unknown command {shown} (commands: {known})") from None
    args = body.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{command.value}: args must be a JSON object")
    accepted = SUPERVISOR_ARGS[command]
    for key, value in args.items():
        if key not in accepted:
            allowed = ", ".join(accepted) or "none"
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"{command.value}: unknown argument {_one_line(key, 64)!r} (accepted: {allowed})"
            )
        kind, _ = accepted[key]
        if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{command.value}: {key} must be {_JSON_TYPES[kind]}")
        if isinstance(value, str) and len(value) > MAX_ARG_LENGTH:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{command.value}: {key} is longer than {MAX_ARG_LENGTH}")
    missing = [key for key, (_, required) in accepted.items() if required and args.get(key) is None]
    if missing:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{command.value}: missing argument {missing[0]!r}")
    return SupervisorRequest(command, args)
