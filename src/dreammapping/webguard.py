"""What stands between the web app / live view and the rest of the machine: the address it listens on is checked
before viser starts (viser retries a bad one forever), and its websocket only talks to pages it served itself.

- `check_listen_address(host, port)`: a port outside 0..65535 is a ConfigError (exit 2); a host that is no address
  (`999.1.1.1`), does not resolve within a few seconds, or is not an address of this machine (an unroutable one) is
  an OutputError (exit 6), at once.
- `allow_only_own_origin(server, host)`: a browser sends the page's Origin with every websocket it opens; a
  connection whose Origin is not the app's own address (scheme://host:port, as the Host header names it, for a host
  the app listens as) is closed before viser processes anything from it. Without this, any web page the user visits
  could open ws://127.0.0.1:7860, start runs, download results and probe paths (cross-site websocket hijacking, and
  DNS rebinding when only Origin == Host were compared). Clients that send no Origin (scripts, not browsers) pass.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
from urllib.parse import urlsplit

from dreammapping.errors import ConfigError, OutputError

RESOLVE_SECONDS = 5.0
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


def check_listen_address(host: str, port: int, flag: str = "--port") -> None:
    """ConfigError for a port outside 0..65535; OutputError when `host` cannot be listened on (see the module)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"{flag} must be 0..65535, got {port}")
    if host.replace(".", "").isdigit():  # looks like IPv4: must be one (no resolver round trip for 999.1.1.1)
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise OutputError(f"cannot listen on {host}: not an IPv4 address") from None
    infos = _resolve(host, port)
    family, kind, proto, _, address = infos[0]
    probe = socket.socket(family, kind, proto)
    try:
        probe.bind((address[0], 0))  # any free port: only the address is in question (viser picks the port)
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise OutputError(f"cannot listen on {host}: {e.strerror or e} (not an address of this machine?)") \
                from None
    finally:
        probe.close()


def _resolve(host: str, port: int) -> list:
    """getaddrinfo with a deadline (it has none of its own; a missing DNS server can stall it for a minute)."""
    result: list = []
    error: list = []

    def run() -> None:
        try:
            result.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE))
        except OSError as e:
            error.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(RESOLVE_SECONDS)
    if thread.is_alive():
        raise OutputError(f"cannot listen on {host}: the name did not resolve within {RESOLVE_SECONDS:g} s")
    if error or not result:
        reason = getattr(error[0], "strerror", None) or str(error[0]) if error else "no address"
        raise OutputError(f"cannot listen on {host}: {reason}")
    return result


def origin_allowed(origin: str | None, host_header: str | None, listen_host: str) -> bool:
    """Whether a websocket from a page at `origin` may talk to an app listening on `listen_host`, reached as
    `host_header` (the request's Host). No Origin: not a browser, allowed."""
    if origin is None:
        return True
    if not host_header:
        return False
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or parts.netloc.lower() != host_header.lower():
        return False  # another site's page (or a file://, a null origin)
    name = (parts.hostname or "").lower()
    if listen_host in WILDCARDS:  # listening on every interface: any name this machine is reached by
        return True
    allowed = {listen_host.lower()} | (set(LOOPBACK_NAMES) if _is_loopback(listen_host) else set())
    return name in allowed


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allow_only_own_origin(server, host: str) -> None:
    """Close every websocket of viser `server` whose Origin is not the app's own, before viser's own connect
    callbacks (which send the page's state) or any message of it is processed."""
    infra = server._websock_server  # viser has no public hook on the handshake; its connect callbacks see this

    async def check(client) -> None:
        connection = infra._live_connections.get(client.client_id)
        if connection is None or connection.request is None:
            return
        headers = connection.request.headers
        if not origin_allowed(headers.get("Origin"), headers.get("Host"), host):
            await connection.close(1008, "cross-origin connection refused")

    infra._client_connect_cb.insert(0, check)
