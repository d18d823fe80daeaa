"""The supervisor's commands: one method per command, found through one table.

Handlers reach the supervisor only through :class:`Verbs`, a handful of public verbs, so a
command is readable on its own and testable with a fake. A handler answers exactly once,
through ``reply``: at once, or later for commands that wait on devices (stats, pause,
resume). It signals refusal by raising :class:`~procdevices.control.protocol.ProtocolError`;
the request server turns that into an error reply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from procdevices.control.protocol import Command, ErrorCode, ProtocolError, SupervisorCommand, SupervisorRequest
from procdevices.supervisor import health
from procdevices.supervisor.child import Child
from procdevices.supervisor.states import PROCESS_STATES, State
from procdevices.supervisor.traffic import parse_counters

Reply = Callable[[dict[str, Any]], None]
Handler = Callable[[SupervisorRequest, Reply], None]
# (ok, body) per child, as the device answered
DeviceAnswer = Callable[[Child, bool, Any], None]

# How long a forwarded command (stats, pause, resume) waits for each device.
FORWARD_TIMEOUT = 2.0


class Verbs(Protocol):
    """What the command handlers may ask of the supervisor."""

    @property
    def shutting_down(self) -> bool: ...

    def select(self, name: str | None) -> list[Child]: ...

    def describe(self) -> dict[str, Any]: ...

    def start(self, child: Child) -> None: ...

    def stop(self, child: Child) -> None: ...

    def restart(self, child: Child) -> None: ...

    def begin_shutdown(self, why: str) -> None: ...

    def ask(self, child: Child, command: Command, timeout: float, answer: DeviceAnswer) -> None: ...

    def reload(self, path: str | None) -> dict[str, Any]: ...

    def scale(self, name: str, replicas: int) -> dict[str, Any]: ...

    def upgrade(self) -> dict[str, Any]: ...

    def now(self) -> float: ...


class CommandHandlers:
    def __init__(self, supervisor: Verbs) -> None:
        self.supervisor = supervisor
        self.table: dict[SupervisorCommand, Handler] = {
            SupervisorCommand.STATUS: self.status,
            SupervisorCommand.STATS: self.stats,
            SupervisorCommand.START: self.start,
            SupervisorCommand.STOP: self.stop,
            SupervisorCommand.RESTART: self.restart,
            SupervisorCommand.PAUSE: self.pause,
            SupervisorCommand.RESUME: self.resume,
            SupervisorCommand.DOWN: self.down,
            SupervisorCommand.RELOAD: self.reload,
            SupervisorCommand.SCALE: self.scale,
            SupervisorCommand.UPGRADE: self.upgrade,
        }

    def handle(self, request: SupervisorRequest, reply: Reply) -> None:
        self.table[request.command](request, reply)

    # -- one method per command -----------------------------------------------------------
    def status(self, request: SupervisorRequest, reply: Reply) -> None:
        now = self.supervisor.now()
        children = self.supervisor.select(request.name)
        reply(_ok({"supervisor": self.supervisor.describe(), "devices": [c.describe(now) for c in children]}))

    def start(self, request: SupervisorRequest, reply: Reply) -> None:
        self._refuse_while_shutting_down()
        children = self.supervisor.select(request.name)
        busy = [c.name for c in children if c.state in PROCESS_STATES or c.state is State.QUEUED]
        if busy:
            raise ProtocolError(ErrorCode.REFUSED, f"already running: {', '.join(busy)}")
        for child in children:
            self.supervisor.start(child)
        reply(_ok({"starting": [c.name for c in children]}))

    def stop(self, request: SupervisorRequest, reply: Reply) -> None:
        children = self.supervisor.select(request.name)
        for child in children:
            self.supervisor.stop(child)
        reply(_ok({"stopping": [c.name for c in children]}))

    def restart(self, request: SupervisorRequest, reply: Reply) -> None:
        self._refuse_while_shutting_down()
        children = self.supervisor.select(request.name)
        for child in children:
            self.supervisor.restart(child)
        reply(_ok({"restarting": [c.name for c in children]}))

    def down(self, request: SupervisorRequest, reply: Reply) -> None:
        describe = self.supervisor.describe()
        reply(_ok({"pid": describe["pid"], "stopping": [c.name for c in self.supervisor.select(None)]}))
        self.supervisor.begin_shutdown("down requested")

    def reload(self, request: SupervisorRequest, reply: Reply) -> None:
        reply(_ok(self.supervisor.reload(request.args.get("config"))))

    def scale(self, request: SupervisorRequest, reply: Reply) -> None:
        reply(_ok(self.supervisor.scale(request.args["name"], request.args["replicas"])))

    def upgrade(self, request: SupervisorRequest, reply: Reply) -> None:
        """Re-execute with the procdevices now installed; answered once the check of the new
        version has begun (`status`'s ``supervisor.upgrade`` follows it)."""
        self._refuse_while_shutting_down()
        reply(_ok(self.supervisor.upgrade()))

    def pause(self, request: SupervisorRequest, reply: Reply) -> None:
        self._forward(Command.PAUSE, request, reply, _record_paused)

    def resume(self, request: SupervisorRequest, reply: Reply) -> None:
        self._forward(Command.RESUME, request, reply, _record_paused)

    def stats(self, request: SupervisorRequest, reply: Reply) -> None:
        """The process's own counters, plus the totals over every process this device has had
        (they never go backwards across restarts) and rates over the last probe intervals."""

        def with_history(child: Child, body: Any) -> Any:
            counters = parse_counters(body)
            if counters is None:
                return body
            child.traffic.observe(counters, self.supervisor.now())
            return {**body, **child.traffic.summary()}

        self._forward(Command.STATS, request, reply, with_history)

    # -- shared -----------------------------------------------------------------------------
    def _refuse_while_shutting_down(self) -> None:
        if self.supervisor.shutting_down:
            raise ProtocolError(ErrorCode.REFUSED, "the supervisor is shutting down")

    def _forward(
        self, command: Command, request: SupervisorRequest, reply: Reply, on_ok: Callable[[Child, Any], Any]
    ) -> None:
        """Ask each selected running device; answer once all have answered."""
        children = [c for c in self.supervisor.select(request.name) if c.state is State.RUNNING]
        if not children:
            raise ProtocolError(ErrorCode.NOT_RUNNING, f"no running device matches {request.name or '*'}")
        results: dict[str, Any] = {}
        errors: dict[str, str] = {}

        def answered(child: Child, ok: bool, body: Any) -> None:
            if ok:
                results[child.name] = on_ok(child, body)
            else:
                errors[child.name] = str(body.get("error", body)) if isinstance(body, dict) else str(body)
            if len(results) + len(errors) < len(children):
                return
            answer: dict[str, Any] = {"ok": not errors, "result": results, "errors": errors}
            if errors:
                answer["error"] = "; ".join(f"{name}: {why}" for name, why in errors.items())
                answer["code"] = ErrorCode.FAILED.value
            reply(answer)

        for child in children:
            self.supervisor.ask(child, command, FORWARD_TIMEOUT, answered)


def _ok(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def _record_paused(child: Child, body: Any) -> Any:
    health.pause_answered(child, body)
    return body
