"""Who may read the page and who may act, for ``procdevices web``: pure decisions on a
request's method, path, headers and cookies, so each rule is tested without a server.

The rules (docs/web.md):

1. **Token.** With ``--token-file`` every request must carry the token: ``Authorization:
   Bearer TOKEN``, or the cookie the page gets by opening ``/?token=TOKEN`` once (HttpOnly,
   SameSite=Strict). Without a token only a loopback ``--listen`` is allowed (checked at start).
2. **Host.** Without a token the ``Host`` header must name a loopback address: a web page
   elsewhere cannot point a DNS name at 127.0.0.1 and read the API (DNS rebinding).
3. **Actions** (POST) are refused with 403 unless ``--allow-actions`` was given; then they
   need the header ``X-Procdevices-Action: 1`` (a cross-site form cannot send a custom
   header, and a cross-site ``fetch`` that tries is stopped by the browser's CORS preflight,
   which this server never approves), and, when the browser sends them, an ``Origin`` equal
   to the page's own and ``Sec-Fetch-Site: same-origin``.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TOKEN_COOKIE = "procdevices_web_token"
ACTION_HEADER = "X-Procdevices-Action"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Refused(Exception):
    """A request this server will not serve: the HTTP status and one line why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def is_loopback(host: str) -> bool:
    """``127.0.0.1``, ``[::1]``, ``localhost`` (with or without a port)."""
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: str) -> str:
    """The token in ``path`` (surrounding white space ignored); ValueError with the reason
    when the file is unreadable, empty, or readable by other users."""
    file = Path(path)
    try:
        mode = file.stat().st_mode
        text = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the token file {path}: {e}") from None
    if mode & 0o077:
        raise ValueError(f"the token file {path} is readable by others (mode {mode & 0o777:o}): chmod 600 it")
    if len(text) < 16:
        raise ValueError(f"the token in {path} is shorter than 16 characters")
    return text


@dataclass(frozen=True)
class Access:
    token: str | None
    allow_actions: bool

    def check(
        self, method: str, host: str, headers: Mapping[str, str], cookies: Mapping[str, str], scheme: str = "http"
    ) -> None:
        """Raise Refused unless the request may be served."""
        if self.token is None:
            if not is_loopback(host):
                raise Refused(403, f"unexpected Host {host!r}: this server answers on a loopback address only")
        elif not self.authenticated(headers, cookies):
            raise Refused(401, "a token is required (Authorization: Bearer TOKEN, or open /?token=TOKEN once)")
        if method.upper() in SAFE_METHODS:
            return
        if not self.allow_actions:
            raise Refused(403, "read-only: actions need `procdevices web --allow-actions`")
        if headers.get(ACTION_HEADER) != "1":
            raise Refused(403, f"actions need the header {ACTION_HEADER}: 1 (cross-site requests are refused)")
        origin = headers.get("Origin")
        if origin is not None and origin != f"{scheme}://{host}":
            raise Refused(403, f"cross-origin request refused (Origin {origin!r})")
        site = headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            raise Refused(403, f"cross-site request refused (Sec-Fetch-Site {site!r})")

    def authenticated(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
        return self.token_matches(headers.get("Authorization", "").removeprefix("Bearer ")) or self.token_matches(
            cookies.get(TOKEN_COOKIE, "")
        )

    def token_matches(self, offered: str) -> bool:
        from hmac import compare_digest  # here: hmac loads OpenSSL, which `up` does not need

        return self.token is not None and compare_digest(offered.encode(), self.token.encode())


# Where `web` listens unless told (`--listen`); also `export supervisord --web`'s default.
DEFAULT_LISTEN = "127.0.0.1:9465"


def listen_address(text: str) -> str:
    from procdevices.supervisor.config.settings import split_host_port

    try:
        split_host_port(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text
