"""The HTTP servers we expose (the interactive SAM backend, the cloud annotation service),
hardened the same way: both run on :class:`BoundedHTTPServer` with handlers derived from
:class:`JsonHandler`.

- a bounded pool of worker threads with a bounded queue of accepted connections; a
  connection beyond both gets ``503`` at once instead of another thread;
- a listen backlog of :data:`LISTEN_BACKLOG` (Python's default of 5 resets bursts of
  webhook deliveries, which Label Studio does not retry);
- a read timeout per connection (a client that stops sending loses its connection);
- request bodies: ``Content-Length`` required to be a non-negative integer (``400``
  otherwise), chunked bodies refused (``411``), bodies over the cap refused (``413``)
  without being read into memory: the 413 is sent at once, then what the client keeps
  sending is read away (up to :data:`DRAIN_LIMIT`, a few seconds) so that it can read the
  answer instead of a reset connection.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 256
DRAIN_LIMIT = 64 << 20  # an oversized body is read away (not kept) up to this much after the 413


class HttpError(Exception):
    """Ends a request with ``status`` and ``{"error": message}``."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class BoundedHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server whose threads and pending connections are bounded:
    ``workers`` requests are served at a time, ``queue`` more wait; beyond that a
    connection is answered ``503`` and closed."""

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler, *, workers: int = 8, queue: int = 64) -> None:
        if workers < 1 or queue < 0:
            raise ValueError("workers must be >= 1 and queue >= 0")
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="http")
        self._slots = threading.BoundedSemaphore(workers + queue)
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 29\r\nConnection: close\r\n\r\n"
                    b'{"error": "server too busy"}\n'
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            self._pool.submit(self._serve, request, client_address)
        except RuntimeError:  # the pool is shut down: the server is closing
            self._slots.release()
            self.shutdown_request(request)

    def _serve(self, request, client_address) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        """A connection that broke (reset, timed out) is logged in one line, not a traceback."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.debug("connection from %s: %s", client_address[0], exc)
        else:
            log.exception("request from %s failed", client_address[0])

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


class JsonHandler(BaseHTTPRequestHandler):
    """Request handler with the body limits and JSON answers both our servers use."""

    timeout = 30.0  # seconds a client may take to send its request line, headers and body
    max_body = 16 << 20
    protocol_version = "HTTP/1.0"  # one request per connection: nothing waits on keep-alive
    _drain_after = 0

    def finish(self) -> None:
        if self._drain_after:  # the answer went out; now let the client finish sending
            self._drain(self._drain_after)
        super().finish()

    def log_message(self, fmt: str, *args: Any) -> None:  # no access log (query strings may hold secrets)
        log.debug("%s %s", self.command, self.path.split("?", 1)[0])

    def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_bytes(status, data, "application/json", headers)

    def send_bytes(
        self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def read_body(self) -> bytes:
        """The request body, at most :attr:`max_body` bytes; :class:`HttpError` otherwise.
        An oversized body is drained (up to :data:`DRAIN_LIMIT`) so the client can read
        the 413, and the connection is closed after the answer."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "chunked request bodies are not accepted")
        raw = (self.headers.get("Content-Length") or "0").strip()
        if not raw.isdigit():
            self.close_connection = True
            raise HttpError(HTTPStatus.BAD_REQUEST, f"Content-Length {raw[:40]!r} is not a byte count")
        length = int(raw)
        if length > self.max_body:
            self.close_connection = True
            self._drain_after = min(length, DRAIN_LIMIT)
            raise HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request body of {length} bytes is over the limit of {self.max_body} bytes",
            )
        try:
            data = self.rfile.read(length) if length else b""
        except OSError:  # the read timeout: a client that stopped sending
            self.close_connection = True
            raise HttpError(HTTPStatus.REQUEST_TIMEOUT, "the request body did not arrive in time") from None
        if len(data) != length:
            self.close_connection = True
            raise HttpError(HTTPStatus.BAD_REQUEST, f"body ended after {len(data)} of {length} bytes")
        return data

    def read_json(self) -> Any:
        """The body parsed as JSON (``400`` when it is not)."""
        data = self.read_body()
        try:
            return json.loads(data or b"null")
        except (ValueError, RecursionError) as exc:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from None

    def _drain(self, n: int) -> None:
        """Read away up to ``n`` bytes the client is still sending, for at most 5 s, and
        stop after 0.5 s without data (a client that only declared a huge length)."""
        deadline = time.monotonic() + 5.0
        try:
            self.connection.settimeout(0.5)
            while n > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(n, 65536))
                if not chunk:
                    return
                n -= len(chunk)
        except OSError:
            return
