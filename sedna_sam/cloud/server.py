"""HTTP face of the annotation service (stdlib ``ThreadingHTTPServer``):

- ``GET /healthz``: 200 with queue counts while the worker loop is alive, else 503.
- ``GET /metrics``: Prometheus text (:mod:`sedna_sam.cloud.metrics`: queue depth per state,
  processed, failed, seconds per stage, the job's rounds).
- ``GET /`` (and ``/status.json``): the queue status page (:mod:`sedna_sam.cloud.status`), with
  the webhook secret (header or ``?secret=``): it shows sample thumbnails.
- ``POST /webhook``: Label Studio's ANNOTATION_CREATED / ANNOTATION_UPDATED, accepted only
  with the shared secret, in the ``X-Sedna-Sam-Secret`` header (set as a webhook header in
  Label Studio) or as ``?secret=`` in the URL; compared in constant time. Missing secret:
  401; wrong secret: 403. The handler only marks the sample labelled (fast, idempotent);
  the worker loop fetches the annotation from Label Studio and ingests it.

Runs on :class:`sedna_sam.httpserver.BoundedHTTPServer`: a listen backlog and a waiting
queue big enough for a burst of webhook deliveries (Label Studio does not retry them), a
read timeout, bodies over :data:`MAX_BODY` refused with 413, a payload whose ids or dates
are not what Label Studio sends refused with 400.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sedna_sam.cloud.adapters import WEBHOOK_ACTIONS, WEBHOOK_SECRET_HEADER
from sedna_sam.cloud.metrics import CONTENT_TYPE
from sedna_sam.cloud.service import AnnotationService
from sedna_sam.httpserver import BoundedHTTPServer, HttpError, JsonHandler

log = logging.getLogger(__name__)

SECRET_HEADER = WEBHOOK_SECRET_HEADER  # what the service registers with its webhooks
ANNOTATION_ACTIONS = frozenset(WEBHOOK_ACTIONS)
MAX_BODY = 8 * 1024 * 1024  # a webhook payload with a big annotation is well below this
MAX_ID = 2**63 - 1  # Label Studio's ids are 64-bit integers (and so are the queue's)
HTTP_WORKERS, HTTP_QUEUE = 16, 512  # 100 simultaneous deliveries are all answered (tested)


def check_secret(expected: str, given: str | None) -> HTTPStatus | None:
    """None when ``given`` matches ``expected``; 401 when no secret was sent, 403 when a
    wrong one was. An empty ``expected`` refuses everything (no open webhook by accident)."""
    if not given:
        return HTTPStatus.UNAUTHORIZED
    if not expected or not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        return HTTPStatus.FORBIDDEN
    return None


def annotation_from_payload(payload: Any) -> tuple[int, int, str | None] | None:
    """(task id, annotation id, updated_at) from a Label Studio webhook payload, or None
    when the action is not about a submitted/updated annotation."""
    if not isinstance(payload, dict) or payload.get("action") not in ANNOTATION_ACTIONS:
        return None
    annotation = payload.get("annotation") or {}
    task = payload.get("task") or {}
    if not isinstance(annotation, dict):
        raise ValueError("'annotation' is not an object")
    task_id = task.get("id") if isinstance(task, dict) else task
    if task_id is None:
        task_id = annotation.get("task")
    if task_id is None or annotation.get("id") is None:
        raise ValueError("payload has no task id or annotation id")
    if annotation.get("was_cancelled"):
        return None  # a skipped task is no label
    updated_at = annotation.get("updated_at")
    if updated_at is not None and (not isinstance(updated_at, str) or len(updated_at) > 64):
        raise ValueError("annotation updated_at is not a date string")
    return _id(task_id, "task id"), _id(annotation["id"], "annotation id"), updated_at


def _id(value: Any, what: str) -> int:
    """A Label Studio id: a positive 64-bit integer (not a bool, a float or 2**70)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise ValueError(f"{what} {str(value)[:40]!r} is not a positive 64-bit integer")
    return value


class Handler(JsonHandler):
    service: AnnotationService  # set on the subclass made by make_service_server
    alive: threading.Event
    server_version = "sedna-sam-cloud"
    max_body = MAX_BODY

    def _send(self, status: HTTPStatus, body: bytes, content_type: str = "application/json") -> None:
        self.send_bytes(status, body, content_type)

    def _json(self, status: HTTPStatus, obj: Any) -> None:
        self.send_json(status, obj)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        if path == "/healthz":
            try:
                counts = self.service.queue.counts()
            except Exception as exc:  # noqa: BLE001 - the probe reports it
                self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "queue unreachable", "error": str(exc)})
                return
            ok = self.alive.is_set()
            body = {
                "status": "ok" if ok else "worker stopped",
                "queue": counts,
                "last_step_at": self.service.last_step_at,
            }
            self._json(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, body)
        elif path == "/metrics":
            self._send(HTTPStatus.OK, self.service.metrics.exposition(), CONTENT_TYPE)
        elif path in ("/", "/status.json"):
            self._status_page(url_query=urlsplit(self.path).query, as_json=path == "/status.json")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found; try /, /healthz, /metrics, POST /webhook"})

    def _status_page(self, url_query: str, as_json: bool) -> None:
        """The queue status page (sedna_sam.cloud.status): it shows sample thumbnails, so it
        takes the webhook's secret like POST /webhook does (header, or ?secret= so that a
        browser can open it)."""
        from sedna_sam.cloud import status

        given = self.headers.get(SECRET_HEADER) or (parse_qs(url_query).get("secret") or [None])[0]
        refused = check_secret(self.service.config.webhook_secret, given)
        if refused is not None:
            self._json(refused, {"error": "the status page needs the webhook secret (?secret=...)"})
            return
        summary = status.queue_summary(self.service.queue.all_samples())
        if as_json:
            self._json(HTTPStatus.OK, status.status_json(summary))
            return
        ls = self.service._ls
        page = status.render_status_page(
            summary,
            self.service.queue.recent(20),
            self.service.config.ls_url or None,
            getattr(ls, "project_id", None),
        )
        self._send(HTTPStatus.OK, page.encode("utf-8"), "text/html; charset=utf-8")

    def do_POST(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        if url.path != "/webhook":
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        given = self.headers.get(SECRET_HEADER) or (parse_qs(url.query).get("secret") or [None])[0]
        refused = check_secret(self.service.config.webhook_secret, given)
        if refused is not None:
            self.service.metrics.webhook("refused")
            log.warning("webhook from %s refused (%s)", self.client_address[0], refused.phrase)
            self._json(refused, {"error": refused.phrase})
            return
        try:
            found = annotation_from_payload(self.read_json())
        except HttpError as exc:
            self.service.metrics.webhook("bad_request")
            self._json(exc.status, {"error": str(exc)})
            return
        except (ValueError, TypeError, AttributeError) as exc:
            self.service.metrics.webhook("bad_request")
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"not a Label Studio annotation webhook: {exc}"})
            return
        if found is None:
            self.service.metrics.webhook("ignored")
            self._json(HTTPStatus.OK, {"result": "ignored"})
            return
        try:
            outcome = self.service.annotation_event(*found)
        except Exception:  # noqa: BLE001 - answer, never leave Label Studio hanging
            log.exception("webhook for task %s failed", found[0])
            self.service.metrics.webhook("error")
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "could not record the annotation"})
            return
        self.service.metrics.webhook("accepted" if outcome != "unknown-task" else "ignored")
        self._json(HTTPStatus.OK, {"result": outcome})


def make_service_server(
    service: AnnotationService, host: str, port: int, alive: threading.Event
) -> BoundedHTTPServer:
    """An HTTP server bound to (host, port) serving ``service``; port 0 picks a free one."""
    handler = type("BoundHandler", (Handler,), {"service": service, "alive": alive})
    return BoundedHTTPServer((host, port), handler, workers=HTTP_WORKERS, queue=HTTP_QUEUE)


def serve(
    service: AnnotationService,
    host: str = "0.0.0.0",
    port: int = 8000,
    *,
    interval_s: float = 5.0,
    stop: threading.Event | None = None,
    ready: Callable[[BoundedHTTPServer], None] | None = None,
) -> None:
    """Run the HTTP endpoints in a thread and the worker loop here until ``stop`` is set
    (SIGTERM/SIGINT set it in the CLI). Each loop is one :meth:`AnnotationService.step`;
    it then sleeps ``interval_s`` or until a webhook wakes it. An unexpected error in a
    step (e.g. the disk is full) is logged and the loop goes on; /healthz reports 503 only
    when the loop has stopped."""
    stop = stop or threading.Event()
    alive = threading.Event()
    server = make_service_server(service, host, port, alive)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    log.info(
        "annotation service on http://%s:%s (/healthz /metrics /webhook)", host, server.server_address[1]
    )
    if ready is not None:
        ready(server)
    alive.set()
    try:
        while not stop.is_set():
            try:
                moved = service.step()
                if any(moved.values()):
                    log.info("step: %s", ", ".join(f"{k} {v}" for k, v in moved.items() if v))
            except Exception:  # noqa: BLE001 - keep serving; the log says what broke
                log.exception("step failed; retrying in %.0f s", interval_s)
            service.wake.wait(interval_s)
            service.wake.clear()
    finally:
        alive.clear()
        server.shutdown()
        server.server_close()
        service.queue.close()
