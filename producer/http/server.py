"""How ``lcm-api serve`` runs uvicorn: one process, or ``--workers N`` behind one socket.

With more than one process uvicorn binds the socket itself, as ``socket.socket(AF_INET)``
(protocol number 0), and asyncio sets TCP_NODELAY only on sockets whose protocol number is
IPPROTO_TCP: the accepted connections then keep Nagle's algorithm, and a response written
in two segments (headers, then body) waits for the client's delayed ACK, about 40 ms on
Linux, on every request of a keep-alive connection. That was the 48 ms single-client stall
of two processes (bench/results/api-20261202-1806-2workers). :class:`NoDelay` sets
TCP_NODELAY on every connection, whoever bound the socket. uvloop and httptools (the
``api-fast`` extra) are used when installed, as uvicorn's ``auto`` does.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

try:  # what uvicorn's http="auto" picks: httptools when installed, else h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover - depends on the installed extras
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]


class NoDelay(_Base):
    """uvicorn's HTTP protocol with TCP_NODELAY set on each connection."""

    def connection_made(self, transport: Any) -> None:
        set_nodelay(transport.get_extra_info("socket"))
        super().connection_made(transport)


def set_nodelay(sock: Any) -> None:
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def serve(
    settings: Any, host: str, port: int, workers: int, log_level: str, access_log: bool
) -> None:
    import uvicorn

    from producer.http.app import create_app

    app: Any = create_app(settings) if workers == 1 else "producer.http.app:create_app"
    uvicorn.run(
        app,
        factory=workers > 1,  # each process builds its app from the environment's settings
        host=host,
        port=port,
        workers=workers,
        http="producer.http.server:NoDelay",  # by name: each process imports it
        log_level=log_level,
        # The access log has method, path and status; never headers, so never a key.
        access_log=access_log,
    )
