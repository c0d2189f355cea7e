"""A local HTTP server on 127.0.0.1 (a thread, bounded) serving scripted responses for the download tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    """What one URL path answers: `status`, `body`, and how it is sent.

    `length`: the Content-Length header (None: no header, the body ends when the connection closes); `cut_after`:
    close the connection after this many body bytes (a truncated transfer) for the first `cut_times` requests;
    `delay_s`: pause before each `chunk` bytes (a trickle), at most `max_send_s` seconds in all."""

    body: bytes = b""
    status: int = 200
    length: int | None = -1  # -1: the body's real length
    cut_after: int | None = None
    cut_times: int = 1
    chunk: int = 65536
    delay_s: float = 0.0
    max_send_s: float = 10.0
    requests: int = 0
    sent: list[int] = field(default_factory=list)  # body bytes written per request


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, Route] = {}

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        route = self.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        route.requests += 1
        self.send_response(route.status)
        length = len(route.body) if route.length == -1 else route.length
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Connection", "close")
        self.end_headers()
        body = route.body
        if route.cut_after is not None and route.requests <= route.cut_times:
            body = body[: route.cut_after]
        sent, start = 0, time.monotonic()
        try:
            while sent < len(body) and time.monotonic() - start < route.max_send_s:
                if route.delay_s:
                    time.sleep(route.delay_s)
                self.wfile.write(body[sent : sent + route.chunk])
                self.wfile.flush()
                sent += len(body[sent : sent + route.chunk])
        except OSError:  # the client gave up (refused, timed out): stop sending
            pass
        finally:
            route.sent.append(sent)
        self.close_connection = True


@contextmanager
def serve(routes: dict[str, Route]) -> Iterator[Callable[[str], str]]:
    """Serve `routes` on 127.0.0.1 (a free port) for the block; yields url(path) -> "http://127.0.0.1:PORT/path".

    On exit it waits for the request threads (each sends for at most its route's `max_send_s`), so every `Route.sent`
    is recorded once the block ends."""
    handler = type("Handler", (_Handler,), {"routes": routes})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = False  # tracked, so server_close() joins them
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield lambda path: f"http://127.0.0.1:{server.server_address[1]}{path}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
