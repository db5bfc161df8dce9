"""The one place that starts an HTTP server: uvicorn or granian, over the same ASGI app.

Why two. One process's ceiling is its HTTP server's floor, and the server is chosen here rather
than in the app: the app is a plain ASGI callable (app.py) that both run unchanged, so nothing
else in veloxserve knows which one answers. bench/bench_http_servers.py measures both side by side
(docs/benchmarks.md): granian parses HTTP and writes answers on its own Rust thread, so the Python
event loop only runs the app, and veloxserve's predict costs fewer CPU-microseconds a request.

What either must keep, and how:
- lifespan: both send lifespan.startup before the first request and lifespan.shutdown after the
  last (the app starts and stops Clipper's containers there);
- admission's heartbeat (serving/admission.py) is a timer on the loop that runs the app: granian
  runs embedded (granian.server.embed) on this process's asyncio loop (uvloop), so the app, its
  timers and its awaits share one loop as under uvicorn;
- graceful shutdown: SIGTERM or SIGINT stops accepting, lets requests in flight finish (an
  observe answered 200 is durable), runs lifespan.shutdown, and `serve` *returns*, so the caller's
  `finally: velox.close()` runs. uvicorn re-raises the signal it caught once it has stopped
  (signal.raise_signal): SIGTERM's default action then killed the process before Velox.close.
  `_uvicorn_server()` keeps the handling and drops the re-raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import signal
import socket
import threading
from collections.abc import Generator, Sequence
from enum import Enum
from typing import Any

from veloxserve.errors import InvalidInput

__all__ = ["HTTPServer", "serve"]

_BACKLOG = 2048


class HTTPServer(str, Enum):
    """`serve --http-server`: which server runs the app."""

    UVICORN = "uvicorn"
    GRANIAN = "granian"


def serve(app: Any, host: str, port: int, server: HTTPServer, sockets: Sequence[socket.socket] = ()) -> None:
    """Serve `app` on host:port (or on `sockets`, already bound and listening) until SIGTERM or SIGINT,
    then return once requests in flight are answered and the lifespan has shut down."""
    if server is HTTPServer.GRANIAN:
        if len(sockets) > 1:
            raise InvalidInput(
                "granian serves one socket: serve on several with --http-server uvicorn.", field="http_server"
            )
        _serve_granian(app, host, port, sockets[0] if sockets else None)
    else:
        _serve_uvicorn(app, host, port, sockets)


def _serve_uvicorn(app: Any, host: str, port: int, sockets: Sequence[socket.socket]) -> None:
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,
        log_level="warning",
        http="httptools",
        loop="uvloop",
        lifespan="on",
        backlog=_BACKLOG,
    )
    _uvicorn_server()(config).run(sockets=list(sockets) or None)


def _uvicorn_server() -> Any:
    import uvicorn

    class Uvicorn(uvicorn.Server):
        """uvicorn.Server without the re-raise of the caught signal after shutdown (module docstring)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Uvicorn


def _serve_granian(app: Any, host: str, port: int, sock: socket.socket | None) -> None:
    if importlib.util.find_spec("granian") is None:
        raise InvalidInput(
            "--http-server granian needs granian: pip install 'veloxserve[granian]' (or serve with uvicorn).",
            field="http_server",
        )
    import uvloop
    from granian.constants import HTTPModes, Interfaces
    from granian.log import LogLevels
    from granian.server.embed import Server

    class Granian(Server):
        """Granian's embedded server, listening on `sock` when the caller bound one (`demo` binds
        the port before it changes anything, and hands it over with no window in between)."""

        def _init_shared_socket(self) -> None:
            if sock is None:
                super()._init_shared_socket()
                return
            from granian._granian import SocketHolder

            fd: Any = sock.fileno()
            holder: Any = SocketHolder(fd, False, _BACKLOG)  # type: ignore[call-arg]  # its stub omits __new__'s
            self._ssp, self._shd, self._sfd = None, holder, fd

    granian = Granian(
        app,
        address=host,
        port=port,
        interface=Interfaces.ASGI,  # with lifespan
        http=HTTPModes.http1,
        websockets=False,
        backlog=_BACKLOG,
        log_level=LogLevels.warning,
        log_access=False,
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, granian.stop)
        try:
            await granian.serve()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    uvloop.run(main())
