"""Listening: the port is bound before the model loads, so a port in use is one line at once, not a uvicorn
traceback after a minute of loading; uvicorn then serves on that very socket (no race for the port)."""

from __future__ import annotations

import ipaddress
import socket

from slmkit.errors import SlmError
from slmkit.server.settings import whole_number


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port)."""
    if not isinstance(host, str) or not host.strip():  # "" would bind every interface: the network, unasked
        raise SlmError(f"--host must be an address such as 127.0.0.1 (this machine) or 0.0.0.0 (the network), "
                       f"got {host!r}")
    whole_number("--port", port)
    if not 0 <= port <= 65535:
        raise SlmError(f"--port must be 0..65535, got {port}")
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a host name: resolved below
        family = socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may reuse a port in TIME_WAIT
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = "already in use" if exc.errno == 98 else exc.strerror or str(exc)
        raise SlmError(f"cannot listen on {host}:{port}: {reason}; choose another --port or --host") from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def serve_forever(app, sock: socket.socket) -> None:
    """Serve `app` on the bound socket until Ctrl-C."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5))
    server.run(sockets=[sock])
