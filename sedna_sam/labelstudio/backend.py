"""Interactive SAM for Label Studio: an ML backend that turns clicks and boxes into polygons.

Label Studio calls a connected ML backend's ``/predict`` only from its *smart* KeyPointLabels
and RectangleLabels tools, so the interactive labeling config (see
:func:`interactive_labeling_config_xml`) puts those beside the PolygonLabels on the same
Image. A click (positive, or negative with Alt) or a dragged box arrives as the request's
``params.context.result``; SAM's mask decoder turns the prompt into a mask, and the answer is
a ``polygonlabels`` region with the label the user had chosen, editable like any polygon.

The SAM side (prompts, the embedding cache, masks to polygons) is
:mod:`sedna_sam.labelstudio.interactive`, the labeling configs
:mod:`sedna_sam.labelstudio.label_config`, where images come from
:mod:`sedna_sam.labelstudio.image_source`, connecting a project
:mod:`sedna_sam.labelstudio.connect`; this module is the HTTP side: the routes, their
authentication and the server.

Protocol (label-studio 1.23.2, ``ml/api_connector.py``): ``GET /health``; ``POST /setup``
{project, schema, hostname, access_token, extra_params} -> {model_version};
``POST /predict`` {tasks, project, label_config, params: {context: {result: [...]}}} ->
{results: [{result, score, model_version}, ...] one per task}; ``POST /webhook`` (events).

Security (docs/security.md): every route but ``/health`` needs HTTP basic auth (what
Label Studio's model connection sends) or a bearer token (:class:`BackendAuth`, from env /
a Secret); ``hostname`` and ``access_token`` of ``/setup`` are ignored, so the Label Studio
URL and token are only ever the operator's; images are read only from under the
local-files document root or fetched from that one Label Studio origin
(:class:`~sedna_sam.labelstudio.image_source.ImageSource`); request bodies, threads and image sizes are bounded
(:mod:`sedna_sam.httpserver`, :mod:`sedna_sam.images`).
"""

from __future__ import annotations

import base64
import hmac
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import urlparse

import numpy as np

from sedna_sam.errors import InputError, SednaSamError
from sedna_sam.httpserver import BoundedHTTPServer, HttpError, JsonHandler
from sedna_sam.labelstudio.image_source import ImageSource
from sedna_sam.labelstudio.interactive import InteractiveSam, mask_polygon_results, prompt_from_context
from sedna_sam.labelstudio.label_config import (
    Controls,
    controls_from_config,
    interactive_labeling_config_xml,
)

# docs/interactive.md documents interactive_labeling_config_xml under this module (it lives in .label_config).
__all__ = ["BackendAuth", "SamBackend", "interactive_labeling_config_xml", "make_backend_server"]

log = logging.getLogger(__name__)

BACKEND_USER_ENV = "SEDNA_SAM_BACKEND_USER"
BACKEND_PASSWORD_ENV = "SEDNA_SAM_BACKEND_PASSWORD"  # secret
BACKEND_TOKEN_ENV = "SEDNA_SAM_BACKEND_TOKEN"  # secret
MAX_TASKS_PER_REQUEST = 16  # Label Studio sends one task per interactive request
MAX_LABEL_CONFIGS = 1000  # projects whose labeling config /setup keeps


# --- the ML backend ---------------------------------------------------------------------


class SamBackend:
    """Label Studio ML-backend requests -> answers, independent of the HTTP server."""

    def __init__(
        self,
        sam: InteractiveSam,
        images: ImageSource,
        model_version: str = "sedna-sam-interactive",
        tolerance_px: float = 1.0,
        min_area_px: int = 25,
        multimask: str = "auto",
    ) -> None:
        self.sam = sam
        self.images = images
        self.model_version = model_version
        self.tolerance_px = tolerance_px
        self.min_area_px = min_area_px
        self.multimask = multimask
        self.label_configs: dict[str, str] = {}  # project uid -> labeling config from /setup

    def health(self) -> dict:
        return {"status": "UP", "model_class": "SamBackend", "model_version": self.model_version}

    def setup(self, body: dict) -> dict:
        project = str(body.get("project", ""))[:64]
        schema = body.get("schema")
        if isinstance(schema, str) and schema:
            key = project.split(".")[0]
            if key not in self.label_configs and len(self.label_configs) >= MAX_LABEL_CONFIGS:
                self.label_configs.pop(next(iter(self.label_configs)))
            self.label_configs[key] = schema
        # Label Studio also sends its URL ("hostname") and the project owner's token: both are
        # ignored. Where images come from, and with which token, is the operator's setting
        # only; a caller must never be able to point the token at a host of its choice.
        log.info("setup for project %s", project or "?")
        return {"model_version": self.model_version}

    def webhook(self, body: dict) -> dict:
        # Interactive SAM does not train; events are acknowledged so Label Studio stays quiet.
        log.info("webhook %s ignored (interactive backend does not train)", body.get("action"))
        return {"status": "ok", "action": body.get("action")}

    def predict(self, body: dict) -> dict:
        tasks = body.get("tasks") or []
        params = body.get("params") or {}
        if not isinstance(tasks, list) or not isinstance(params, dict):
            raise InputError("predict request: 'tasks' must be a list and 'params' an object")
        context = params.get("context") or body.get("context") or {}
        if not isinstance(context, dict):
            raise InputError("predict request: 'context' must be an object")
        if not context or not context.get("result"):
            return {"results": [], "model_version": self.model_version}  # batch predictions: not ours
        if len(tasks) > MAX_TASKS_PER_REQUEST:
            raise InputError(f"predict request with {len(tasks)} tasks; at most {MAX_TASKS_PER_REQUEST}")
        project = str(body.get("project", "")).split(".")[0]
        config = body.get("label_config") or self.label_configs.get(project)
        if not config:
            raise InputError("predict request has no label_config and /setup was not called for this project")
        if not isinstance(config, str):
            raise InputError("predict request: 'label_config' must be a string")
        controls = controls_from_config(config)
        return {"results": [self.predict_task(task, context["result"], controls) for task in tasks]}

    def predict_task(self, task: dict, context_results: list[dict], controls: Controls) -> dict:
        if not isinstance(task, dict) or not isinstance(task.get("data") or {}, dict):
            raise InputError("predict request: each task must be an object with a 'data' object")
        ref = (task.get("data") or {}).get(controls.data_key)
        if not ref or not isinstance(ref, str):
            raise InputError(f"task {str(task.get('id'))[:40]} has no data.{controls.data_key}")
        key = ref
        size = self.sam.image_size(key)
        loaded: dict[str, np.ndarray] = {}
        if size is None:  # first click on this image: read it now to know its size
            loaded["image"] = self.images.load(key)
            size = (loaded["image"].shape[1], loaded["image"].shape[0])
        prompt = prompt_from_context(context_results, size[0], size[1], controls.image_to)
        if prompt is None:
            return {"result": [], "score": 0.0, "model_version": self.model_version}
        t0 = time.perf_counter()
        mask, score, hit = self.sam.segment(
            key,
            lambda: loaded.get("image") if "image" in loaded else self.images.load(key),
            prompt,
            self.multimask,
        )
        label = prompt.label or (controls.labels[0] if controls.labels else "object")
        result = mask_polygon_results(mask, label, controls, self.tolerance_px, self.min_area_px)
        log.info(
            "task %s: %d points, box=%s -> %d px, iou %.2f, %d polygon(s), %.3fs (%s)",
            task.get("id"),
            len(prompt.points),
            prompt.box is not None,
            int(mask.sum()),
            score,
            len(result),
            time.perf_counter() - t0,
            "cached embedding" if hit else "new embedding",
        )
        return {"result": result, "score": round(score, 4), "model_version": self.model_version}


# --- HTTP --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendAuth:
    """Who may call the backend: HTTP basic auth with ``username``/``password`` (what Label
    Studio's model connection sends: Settings > Model > Authentication) and/or a bearer
    ``token`` (for other clients). From :data:`BACKEND_USER_ENV`, :data:`BACKEND_PASSWORD_ENV`,
    :data:`BACKEND_TOKEN_ENV` (a Secret); never logged."""

    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)

    @classmethod
    def from_env(cls) -> BackendAuth:
        return cls(
            os.environ.get(BACKEND_USER_ENV, ""),
            os.environ.get(BACKEND_PASSWORD_ENV, ""),
            os.environ.get(BACKEND_TOKEN_ENV, ""),
        )

    @property
    def basic(self) -> bool:
        return bool(self.username and self.password)

    @property
    def configured(self) -> bool:
        return self.basic or bool(self.token)

    def require(self) -> BackendAuth:
        """Self, or :class:`SednaSamError` saying how to configure credentials."""
        if not self.configured:
            raise SednaSamError(
                f"the backend needs credentials: set {BACKEND_USER_ENV} and {BACKEND_PASSWORD_ENV} (Label Studio connects "
                f"with HTTP basic auth; `ls push --connect-backend` passes them) and/or {BACKEND_TOKEN_ENV} for a "
                "bearer token; from a Secret, never on the command line"
            )
        return self

    def allows(self, header: str | None) -> bool:
        """True when an ``Authorization`` header carries these credentials (constant time)."""
        if not header:
            return False
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and self.token:
            return hmac.compare_digest(value.encode("utf-8"), self.token.encode("utf-8"))
        if scheme.lower() == "basic" and self.basic:
            try:
                given = base64.b64decode(value, validate=True)
            except ValueError:
                return False
            expected = f"{self.username}:{self.password}".encode()
            return hmac.compare_digest(given, expected)
        return False


def make_backend_server(
    backend: SamBackend,
    host: str = "127.0.0.1",
    port: int = 9090,
    *,
    auth: BackendAuth,
    max_body: int = 16 << 20,
    workers: int = 4,
    queue: int = 32,
    timeout_s: float = 30.0,
) -> BoundedHTTPServer:
    """An HTTP server answering Label Studio's ML-backend routes (``port`` 0 picks a free
    port: read it from ``server.server_address``).

    Every route but ``GET /health`` needs ``auth`` (401 otherwise); bodies over ``max_body``
    get 413, a bad Content-Length 400; ``workers`` requests run at once and ``queue`` more
    wait (then 503); a client gets ``timeout_s`` to send its request."""
    auth.require()
    routes: dict[str, Callable[[dict], dict]] = {
        "/setup": backend.setup,
        "/predict": backend.predict,
        "/webhook": backend.webhook,
        "/validate": lambda body: {"status": "ok"},
    }

    class Handler(JsonHandler):
        server_version = "sedna-sam-backend"
        timeout = timeout_s

        def _authorized(self) -> bool:
            if auth.allows(self.headers.get("Authorization")):
                return True
            self.close_connection = True
            self.send_json(
                HTTPStatus.UNAUTHORIZED,
                {"error": "authentication required"},
                {"WWW-Authenticate": 'Basic realm="sedna-sam backend"'},
            )
            log.warning("%s %s from %s refused: no valid credentials",
                        self.command, urlparse(self.path).path, self.client_address[0])  # fmt: skip
            return False

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = urlparse(self.path).path.rstrip("/")
            if path == "/health":
                self.send_json(200, backend.health())
            elif self._authorized():
                if path == "":
                    self.send_json(200, backend.health())
                else:
                    self.send_json(404, {"error": f"no route GET {path[:100]}"})

        def do_POST(self) -> None:  # noqa: N802
            if not self._authorized():
                return
            path = urlparse(self.path).path.rstrip("/")
            route = routes.get(path)
            try:
                if route is None:
                    raise HttpError(HTTPStatus.NOT_FOUND, f"no route POST {path[:100]}")
                body = self.read_json()
                body = {} if body is None else body
                if not isinstance(body, dict):
                    raise InputError("request body must be a JSON object")
                self.send_json(200, route(body))
            except HttpError as exc:
                log.warning("%s: %s", path[:100], exc)
                self.send_json(exc.status, {"error": str(exc)})
            except SednaSamError as exc:
                log.warning("%s: %s", path[:100], exc)
                self.send_json(400, {"error": str(exc)})
            except Exception as exc:  # keep serving; Label Studio shows the error text
                log.exception("%s failed", path[:100])
                self.send_json(500, {"error": f"{type(exc).__name__}: {exc}"})

    Handler.max_body = max_body
    return BoundedHTTPServer((host, port), Handler, workers=workers, queue=queue)
