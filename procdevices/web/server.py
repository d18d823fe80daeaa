"""The HTTP side of ``procdevices web``: aiohttp serves the page, its static files, the JSON API
and the server-sent event stream (docs/web.md).

Why aiohttp: one maintained package that is both the HTTP server and the framework, on
asyncio, which pyzmq's ``zmq.asyncio`` also uses, so the event stream, the status polls and
every open page share one thread and one loop; a long-lived response (server-sent events) is a
plain ``StreamResponse``, and its shutdown cancels open streams instead of waiting for browsers
to leave (an ASGI server such as uvicorn waits for them before it exits).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from procdevices.control.client import SupervisorUnreachable, call_supervisor
from procdevices.control.protocol import SupervisorCommand
from procdevices.web.link import Cluster, SupervisorLink
from procdevices.web.security import TOKEN_COOKIE, Access, Refused

STATIC = Path(__file__).parent / "static"
ACTIONS = {
    "pause": SupervisorCommand.PAUSE,
    "resume": SupervisorCommand.RESUME,
    "restart": SupervisorCommand.RESTART,
    "stop": SupervisorCommand.STOP,
    "start": SupervisorCommand.START,
}
KEEPALIVE = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
# Nothing the page needs comes from elsewhere, and it may not be framed (a confirmation
# could be clicked through an invisible frame).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

LINK = web.AppKey("link", SupervisorLink)
ACCESS = web.AppKey("access", Access)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    access = request.app[ACCESS]
    token = request.query.get("token")
    if request.path == "/" and token is not None and access.token_matches(token):
        # Opened once with the token: a cookie carries it from now on, out of the address bar.
        redirect = web.HTTPSeeOther("/")
        redirect.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", path="/")
        raise redirect
    try:
        access.check(request.method, request.host, request.headers, request.cookies, request.scheme)
    except Refused as e:
        response: web.StreamResponse = web.json_response({"ok": False, "error": e.reason}, status=e.status)
    else:
        response = await handler(request)
    response.headers.update(SECURITY_HEADERS)
    return response


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html")


async def state(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[LINK].state)


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``state`` (the whole of ``/api/state``) at once and after every
    change, ``event`` (a supervisor event as ``procdevices events --json`` prints it)."""
    link = request.app[LINK]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
    response.headers.update(SECURITY_HEADERS)
    await response.prepare(request)
    subscriber = link.subscribe()
    try:
        while True:
            try:
                message = await asyncio.wait_for(subscriber.queue.get(), KEEPALIVE)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if message is None:
                break
            kind, data = message
            await response.write(f"event: {kind}\ndata: {data}\n\n".encode())
    except ConnectionResetError:
        pass  # the page left
    finally:
        link.unsubscribe(subscriber)
    return response


async def action(request: web.Request) -> web.StreamResponse:
    """``POST /api/devices/{name}/{action}``: the same request as the command line's."""
    name, verb = request.match_info["name"], request.match_info["action"]
    command = ACTIONS.get(verb)
    if command is None:
        return web.json_response({"ok": False, "error": f"no action {verb!r} ({', '.join(ACTIONS)})"}, status=404)
    link = request.app[LINK]
    known = {g["device"] for g in link.state["devices"]} | {
        i["name"] for g in link.state["devices"] for i in g["instances"]
    }
    if name not in known:
        return web.json_response({"ok": False, "error": f"no device named {name!r}"}, status=404)
    try:
        reply: dict[str, Any] = await asyncio.to_thread(_send, link, command, name)
    except SupervisorUnreachable as e:
        return web.json_response({"ok": False, "error": str(e)}, status=503)
    link.poke()  # the page sees the outcome at once, not at the next poll
    return web.json_response(reply, status=200 if reply.get("ok") else 409)


def _send(link: SupervisorLink, command: SupervisorCommand, name: str) -> dict[str, Any]:
    """To this host's supervisor, or with ``--all`` to the supervisor of the device's host,
    the way ``status --all`` reaches it."""
    if link.cluster is None:
        return call_supervisor(link.endpoint, command, {"name": name})
    from procdevices.cluster.remote import call_remote

    host = next(
        (g["host"] for g in link.state["devices"] if name in {g["device"], *(i["name"] for i in g["instances"])}),
        None,
    )
    target = link.cluster.target(host)
    if target is None:
        raise SupervisorUnreachable(f"no host of the topology runs {name!r}")
    return call_remote(target, command, {"name": name})


def make_app(link: SupervisorLink, access: Access) -> web.Application:
    app = web.Application(middlewares=[guard])
    app[LINK] = link
    app[ACCESS] = access
    app.router.add_get("/", index)
    app.router.add_get("/api/state", state)
    app.router.add_get("/api/events", events)
    app.router.add_post("/api/devices/{name}/{action}", action)
    app.router.add_static("/static/", STATIC)

    async def lifecycle(app: web.Application) -> Any:
        await link.start()
        yield
        await link.close()

    app.cleanup_ctx.append(lifecycle)

    async def end_streams(app: web.Application) -> None:
        link.end_streams()

    app.on_shutdown.append(end_streams)
    return app


async def serve(
    host: str,
    port: int,
    run_dir: Path,
    *,
    token: str | None,
    allow_actions: bool,
    ready: Callable[[str], None],
    cluster: Cluster | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM; ``ready(url)`` once listening (the real port for 0)."""
    link = SupervisorLink(run_dir, allow_actions=allow_actions, cluster=cluster)
    app = make_app(link, Access(token=token, allow_actions=allow_actions))
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host.strip("[]"), port)
        await site.start()
        address = runner.addresses[0]
        shown = f"[{address[0]}]" if ":" in address[0] else address[0]
        ready(f"http://{shown}:{address[1]}/")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
