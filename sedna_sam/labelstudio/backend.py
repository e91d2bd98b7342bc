"""Interactive SAM for Label Studio: an ML backend that turns clicks and boxes into polygons.

Label Studio calls a connected ML backend's ``/predict`` only from its *smart* KeyPointLabels
and RectangleLabels tools, so the interactive labeling config (see
:func:`interactive_labeling_config_xml`) puts those beside the PolygonLabels on the same
Image. A click (positive, or negative with Alt) or a dragged box arrives as the request's
``params.context.result``; SAM's mask decoder turns the prompt into a mask, and the answer is
a ``polygonlabels`` region with the label the user had chosen, editable like any polygon.

The SAM image embedding (the expensive part: seconds on a CPU) is computed once per image
and kept in a bounded LRU cache, so every further click on that image costs only the mask
decoder (milliseconds).

Protocol (label-studio 1.23.2, ``ml/api_connector.py``): ``GET /health``; ``POST /setup``
{project, schema, hostname, access_token, extra_params} -> {model_version};
``POST /predict`` {tasks, project, label_config, params: {context: {result: [...]}}} ->
{results: [{result, score, model_version}, ...] one per task}; ``POST /webhook`` (events).

Security (README "Security model"): every route but ``/health`` needs HTTP basic auth (what
Label Studio's model connection sends) or a bearer token (:class:`BackendAuth`, from env /
a Secret); ``hostname`` and ``access_token`` of ``/setup`` are ignored, so the Label Studio
URL and token are only ever the operator's; images are read only from under the
local-files document root or fetched from that one Label Studio origin
(:class:`ImageSource`); request bodies, threads and image sizes are bounded
(:mod:`sedna_sam.httpserver`, :mod:`sedna_sam.images`).
"""

from __future__ import annotations

import base64
import hmac
import logging
import math
import os
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np

from sedna_sam.errors import InputError, SednaSamError
from sedna_sam.httpserver import BoundedHTTPServer, HttpError, JsonHandler
from sedna_sam.labels import LabelSet, labeling_config_xml

log = logging.getLogger(__name__)

PROMPT_TYPES = ("keypointlabels", "rectanglelabels")
USER_ENV = "SEDNA_SAM_BACKEND_USER"
PASSWORD_ENV = "SEDNA_SAM_BACKEND_PASSWORD"  # secret
TOKEN_ENV = "SEDNA_SAM_BACKEND_TOKEN"  # secret
MAX_TASKS_PER_REQUEST = 16  # Label Studio sends one task per interactive request
MAX_LABEL_CONFIGS = 1000  # projects whose labeling config /setup keeps


# --- labeling config ------------------------------------------------------------------


def interactive_labeling_config_xml(
    labels: LabelSet,
    from_name: str = "label",
    to_name: str = "image",
    click_name: str = "click",
    box_name: str = "box",
) -> str:
    """The labeling config of :func:`sedna_sam.labels.labeling_config_xml` plus smart
    KeyPointLabels (``click_name``) and RectangleLabels (``box_name``) with the same labels
    on the same Image: the tools that make Label Studio call the backend."""
    root = ET.fromstring(labeling_config_xml(labels, from_name=from_name, to_name=to_name))
    polygons = root.find("PolygonLabels")
    assert polygons is not None
    for tag, name, extra in (
        ("KeyPointLabels", click_name, {"strokeWidth": "2"}),
        ("RectangleLabels", box_name, {"strokeWidth": "1"}),
    ):
        control = ET.SubElement(
            root, tag, {"name": name, "toName": to_name, "smart": "true", "smartOnly": "true"}
        )
        control.attrib.update(extra)
        for label in polygons.findall("Label"):
            ET.SubElement(control, "Label", dict(label.attrib))
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


@dataclass(frozen=True)
class Controls:
    """Where a polygon answer goes: the PolygonLabels name, its Image and the task data key
    holding the image reference (``$image`` -> ``image``)."""

    polygon_from: str
    image_to: str
    data_key: str
    labels: tuple[str, ...]


def controls_from_config(label_config: str) -> Controls:
    """Find the PolygonLabels control and its Image in a labeling config."""
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError as exc:
        raise InputError(f"labeling config is not valid XML: {exc}") from None
    images = {el.get("name"): el.get("value", "") for el in root.iter("Image")}
    for poly in root.iter("PolygonLabels"):
        to_name = poly.get("toName")
        if to_name in images:
            labels = tuple(lbl.get("value", "") for lbl in poly.iter("Label"))
            return Controls(poly.get("name", "label"), to_name, images[to_name].lstrip("$"), labels)  # type: ignore[arg-type]
    raise InputError(
        "labeling config has no PolygonLabels on an Image; use `interactive_labeling_config_xml`"
    )


# --- prompts and answers (pure) -------------------------------------------------------


@dataclass
class Prompt:
    """SAM prompt in image pixels: ``points`` (N, 2) float (x, y), ``point_labels`` (N,)
    int (1 positive, 0 negative), ``box`` (4,) float (x0, y0, x1, y1) or None; ``label`` the
    class the user picked with the tool (None if the tool had none selected)."""

    points: np.ndarray
    point_labels: np.ndarray
    box: np.ndarray | None
    label: str | None


def prompt_from_context(
    results: list[dict], width: int, height: int, image_to: str | None = None
) -> Prompt | None:
    """Turn Label Studio context regions (percent coordinates) into a SAM prompt for an
    image of ``width`` x ``height`` pixels. Returns None if there is no keypoint or box.

    Keypoints: ``value.x, value.y`` percent; ``is_positive`` false means a negative click.
    Rectangles: ``value.x, y, width, height`` percent (the last box wins).
    """
    points, point_labels, box, label = [], [], None, None
    if not isinstance(results, list):
        raise InputError("params.context.result must be a list of regions")
    for item in results:
        if not isinstance(item, dict):
            raise InputError("params.context.result holds something that is not a region object")
        kind = item.get("type")
        if kind not in PROMPT_TYPES or (image_to and item.get("to_name", image_to) != image_to):
            continue
        value = item.get("value") or {}
        if not isinstance(value, dict):
            raise InputError(f"context region {item.get('id', '?')}: 'value' is not an object")
        x, y = _percent(value, "x", item) * width / 100.0, _percent(value, "y", item) * height / 100.0
        names = value.get(kind) or []
        if isinstance(names, list) and names and label is None:
            label = str(names[0])[:200]
        if kind == "keypointlabels":
            points.append((x, y))
            point_labels.append(0 if item.get("is_positive") is False else 1)
        else:
            w = _percent(value, "width", item, default=0.0) * width / 100.0
            h = _percent(value, "height", item, default=0.0) * height / 100.0
            box = np.array([x, y, x + w, y + h], dtype=np.float64)
    if not points and box is None:
        return None
    return Prompt(
        np.array(points, dtype=np.float64).reshape(-1, 2), np.array(point_labels, dtype=np.int64), box, label
    )


def _percent(value: dict, key: str, item: dict, default: float | None = None) -> float:
    """A finite percent coordinate of a context region (``x``, ``y``, ``width``, ``height``)."""
    raw = value.get(key, default)
    try:
        number = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or abs(number) > 1000:
        raise InputError(f"context region {str(item.get('id', '?'))[:40]} has no usable numeric {key}")
    return number


def polygon_results(
    mask: np.ndarray,
    label: str,
    controls: Controls,
    tolerance_px: float = 1.0,
    min_area_px: int = 25,
) -> list[dict]:
    """Label Studio ``polygonlabels`` regions for a (H, W) bool mask, points in percent of
    width/height, largest part first (a Label Studio polygon has no holes; each connected
    part becomes one region)."""
    from sedna_sam.formats.labelstudio import polygon_result
    from sedna_sam.geometry import polygon_area, polygons_from_mask

    h, w = mask.shape
    polygons = polygons_from_mask(mask, tolerance_px=tolerance_px, min_area_px=min_area_px)
    return [
        polygon_result(
            poly,
            label,
            w,
            h,
            region_id=uuid.uuid4().hex[:10],  # unique across clicks on one task
            from_name=controls.polygon_from,
            to_name=controls.image_to,
        )  # fmt: skip
        for poly in sorted(polygons, key=polygon_area, reverse=True)
    ]


# --- SAM with an embedding cache ------------------------------------------------------


@dataclass
class _Embedding:
    features: object  # (1, 256, 64, 64) tensor on the model's device
    original_size: tuple[int, int]
    input_size: tuple[int, int]


class InteractiveSam:
    """SAM's predictor with a bounded LRU cache of image embeddings.

    ``encoder_calls`` counts image-encoder runs (cache misses). One lock serializes the
    predictor, which holds one image at a time.
    """

    def __init__(self, sam, cache_size: int = 8) -> None:
        from segment_anything import SamPredictor

        if cache_size < 1:
            raise SednaSamError("embedding cache size must be at least 1")
        self.predictor = SamPredictor(sam)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, _Embedding] = OrderedDict()
        self._lock = threading.Lock()
        self.encoder_calls = 0

    def cached(self, key: str) -> bool:
        return key in self._cache

    def clear(self) -> None:
        """Forget every cached embedding (the next click on any image re-embeds it)."""
        with self._lock:
            self._cache.clear()

    def _use(self, key: str, load_image: Callable[[], np.ndarray]) -> bool:
        """Make ``key``'s embedding the predictor's current one; True if it was cached."""
        emb = self._cache.get(key)
        if emb is not None:
            self._cache.move_to_end(key)
            p = self.predictor
            p.features, p.original_size, p.input_size, p.is_image_set = (
                emb.features,
                emb.original_size,
                emb.input_size,
                True,
            )
            return True
        image = load_image()
        t0 = time.perf_counter()
        self.predictor.set_image(image, image_format="RGB")
        self.encoder_calls += 1
        p = self.predictor
        self._cache[key] = _Embedding(p.features, tuple(p.original_size), tuple(p.input_size))
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        log.info(
            "embedded %s (%dx%d) in %.2fs", key, image.shape[1], image.shape[0], time.perf_counter() - t0
        )
        return False

    def image_size(self, key: str) -> tuple[int, int] | None:
        """(width, height) of a cached image, or None."""
        emb = self._cache.get(key)
        return None if emb is None else (emb.original_size[1], emb.original_size[0])

    def segment(
        self, key: str, load_image: Callable[[], np.ndarray], prompt: Prompt, multimask: str = "auto"
    ) -> tuple[np.ndarray, float, bool]:
        """Mask for a prompt on image ``key`` -> ((H, W) bool mask, predicted IoU, cache hit).

        ``multimask``: "auto" asks SAM for 3 candidates when the prompt is one click (an
        ambiguous prompt) and 1 otherwise; "always"/"never" force it. The candidate with the
        highest predicted IoU wins.
        """
        multi = {"auto": len(prompt.points) == 1 and prompt.box is None, "always": True, "never": False}[
            multimask
        ]
        with self._lock:
            hit = self._use(key, load_image)
            masks, scores, _ = self.predictor.predict(
                point_coords=prompt.points if len(prompt.points) else None,
                point_labels=prompt.point_labels if len(prompt.points) else None,
                box=prompt.box,
                multimask_output=multi,
            )
        best = int(np.argmax(scores))
        return masks[best].astype(bool), float(scores[best]), hit


# --- images of tasks --------------------------------------------------------------------


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, default ports filled in."""
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    try:
        port = parsed.port
    except ValueError:
        raise InputError(f"{url[:200]!r} has an invalid port") from None
    return scheme, (parsed.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme, 0)


@dataclass
class ImageSource:
    """Reads a task's image from its reference, and from nowhere else.

    - ``/data/local-files/?d=REL`` (also behind the Label Studio URL) and plain relative
      paths: ``document_root/REL`` when that file is there, resolved with realpath and
      required to stay under the document root; otherwise fetched from Label Studio;
    - other ``/data/...`` paths and ``http(s)://`` URLs: fetched only from the configured
      Label Studio origin (scheme, host and port equal), with the token, without following
      redirects, at most ``max_bytes``;
    - absolute paths, ``file://``, ``s3://`` and URLs of any other host are refused.

    ``ls_url`` and ``token`` come from the operator (flags, env, a Secret), never from a
    request.
    """

    ls_url: str | None = None
    token: str | None = field(default=None, repr=False)
    document_root: str | None = None
    timeout_s: float = 30.0
    max_bytes: int = 64 << 20

    def load(self, ref: str) -> np.ndarray:
        from sedna_sam.images import decode_image_rgb, read_image_rgb

        ref = str(ref).strip()
        if not ref or "\x00" in ref:
            raise InputError("empty image reference")
        parsed = urlparse(ref)
        scheme = parsed.scheme.lower()
        if scheme in ("http", "https"):
            self._check_origin(ref)
        elif scheme:
            raise InputError(
                f"image {ref[:200]!r}: {scheme}:// references are not read by the backend; serve images "
                "through Label Studio (local files under the document root, or its own URLs)"
            )
        elif ref.startswith("/") and not ref.startswith("/data/"):
            raise InputError(
                f"image {ref[:200]!r}: absolute paths are not read; put images under the local-files "
                "document root and reference them as /data/local-files/?d=<relative path>"
            )
        if parsed.path.rstrip("/").endswith("/data/local-files"):
            rel = (parse_qs(parsed.query).get("d") or [""])[0]
            local = self._under_root(rel, ref)
            if local is not None and local.is_file():
                return read_image_rgb(local)
        elif not scheme and not ref.startswith("/"):
            local = self._under_root(ref, ref)
            if local is None:
                raise InputError(f"image {ref[:200]!r}: no document root is configured to read it from")
            return read_image_rgb(local)
        return decode_image_rgb(self._fetch(ref), f"image {ref[:200]!r}")

    def _under_root(self, rel: str, ref: str) -> Path | None:
        """``document_root/rel`` after realpath, or None without a document root;
        :class:`InputError` when it is absolute or leaves the root."""
        if not rel:
            raise InputError(f"image reference {ref[:200]!r} has no ?d=<path>")
        if rel.startswith("/") or rel.startswith("file:"):
            raise InputError(f"image {ref[:200]!r}: the path must be relative to the document root")
        if not self.document_root:
            return None
        root = Path(os.path.realpath(self.document_root))
        local = Path(os.path.realpath(root / rel))
        if local != root and root not in local.parents:
            raise InputError(f"image {ref[:200]!r} resolves outside the document root; refused")
        return local

    def _check_origin(self, url: str) -> None:
        if not self.ls_url:
            raise InputError(
                f"image {url[:200]!r}: URLs are fetched only from Label Studio, and none is configured"
            )
        if _origin(url) != _origin(self.ls_url):
            raise InputError(
                f"image {url[:200]!r}: not on the configured Label Studio ({urlparse(self.ls_url).netloc}); "
                "the backend fetches from nowhere else"
            )

    def _fetch(self, ref: str) -> bytes:
        import requests

        if not self.ls_url:
            raise InputError(
                f"image {ref[:200]!r} is served by Label Studio but no Label Studio URL is set "
                "(--label-studio-url or LABEL_STUDIO_URL)"
            )
        url = ref if urlparse(ref).scheme else self.ls_url.rstrip("/") + ref
        self._check_origin(url)
        headers = {"Authorization": f"Token {self.token}"} if self.token else {}
        try:
            with requests.get(
                url, headers=headers, timeout=(5.0, self.timeout_s), stream=True, allow_redirects=False
            ) as resp:
                if resp.status_code != 200:
                    raise InputError(f"image {ref[:200]!r}: HTTP {resp.status_code} from Label Studio")
                declared = resp.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > self.max_bytes:
                    raise InputError(f"image {ref[:200]!r}: {declared} bytes, over {self.max_bytes}")
                chunks, total = [], 0
                for chunk in resp.iter_content(1 << 16):
                    total += len(chunk)
                    if total > self.max_bytes:
                        raise InputError(f"image {ref[:200]!r}: more than {self.max_bytes} bytes; refused")
                    chunks.append(chunk)
        except requests.RequestException as exc:
            raise InputError(
                f"image {ref[:200]!r}: cannot fetch it from Label Studio ({type(exc).__name__})"
            ) from None
        return b"".join(chunks)


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
        result = polygon_results(mask, label, controls, self.tolerance_px, self.min_area_px)
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
    ``token`` (for other clients). From :data:`USER_ENV`, :data:`PASSWORD_ENV`,
    :data:`TOKEN_ENV` (a Secret); never logged."""

    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)

    @classmethod
    def from_env(cls) -> BackendAuth:
        return cls(
            os.environ.get(USER_ENV, ""), os.environ.get(PASSWORD_ENV, ""), os.environ.get(TOKEN_ENV, "")
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
                f"the backend needs credentials: set {USER_ENV} and {PASSWORD_ENV} (Label Studio connects "
                f"with HTTP basic auth; `ls push --connect-backend` passes them) and/or {TOKEN_ENV} for a "
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


# --- connecting to a project --------------------------------------------------------------


def _auth_fields(auth: BackendAuth) -> dict:
    """The model connection's authentication, as Label Studio's ML API takes it."""
    if not auth.basic:
        raise SednaSamError(
            f"Label Studio connects to ML backends with HTTP basic auth: set {USER_ENV} and {PASSWORD_ENV} "
            "(the same values the backend runs with)"
        )
    return {"auth_method": "BASIC_AUTH", "basic_auth_user": auth.username, "basic_auth_pass": auth.password}


def connect_backend(
    ls_url: str,
    token: str,
    project_id: int,
    backend_url: str,
    title: str = "sedna-sam interactive SAM",
    *,
    auth: BackendAuth,
) -> dict:
    """Connect an ML backend to a Label Studio project as interactive, with the backend's
    basic-auth credentials (idempotent: an existing connection with the same URL gets the
    credentials and the interactive flag set again). Label Studio calls the backend's
    /health and /setup while connecting, so it must be running."""
    import requests

    base = ls_url.rstrip("/")
    headers = {"Authorization": f"Token {token}"}
    fields = _auth_fields(auth)
    resp = requests.get(f"{base}/api/ml", params={"project": project_id}, headers=headers, timeout=30)
    _raise_for(resp, f"listing ML backends of project {project_id}")
    for backend in resp.json():
        if backend.get("url", "").rstrip("/") == backend_url.rstrip("/"):
            # The password is write-only in Label Studio's API: set it every time.
            upd = requests.patch(
                f"{base}/api/ml/{backend['id']}",
                # Label Studio re-validates the connection (health, setup) from these fields
                json={"project": project_id, "url": backend["url"], "is_interactive": True, **fields},
                headers=headers,
                timeout=60,
            )
            _raise_for(upd, "updating the ML backend connection")
            return upd.json()
    body = {"project": project_id, "url": backend_url, "title": title, "is_interactive": True, **fields}
    resp = requests.post(f"{base}/api/ml", json=body, headers=headers, timeout=60)
    _raise_for(resp, f"connecting ML backend {backend_url} to project {project_id}")
    return resp.json()


def connect_interactive(
    ls_url: str,
    token: str,
    project_id: int,
    backend_url: str,
    labels: LabelSet,
    title: str = "sedna-sam interactive SAM",
    *,
    auth: BackendAuth,
) -> dict:
    """What ``ls push --connect-backend`` does: give the project the interactive labeling
    config (its PolygonLabels/Image names kept, smart KeyPointLabels + RectangleLabels
    added) unless it already has smart tools, then :func:`connect_backend` with ``auth``."""
    import requests

    _auth_fields(auth)  # no credentials: stop before changing the project
    base = ls_url.rstrip("/")
    headers = {"Authorization": f"Token {token}"}
    resp = requests.get(f"{base}/api/projects/{project_id}", headers=headers, timeout=30)
    _raise_for(resp, f"reading project {project_id}")
    config = resp.json().get("label_config") or ""
    root = ET.fromstring(config) if config.strip() else None
    smart = root is not None and any(
        el.get("smart") == "true" for tag in ("KeyPointLabels", "RectangleLabels") for el in root.iter(tag)
    )
    if not smart:
        controls = (
            controls_from_config(config) if root is not None else Controls("label", "image", "image", ())
        )
        xml = interactive_labeling_config_xml(
            labels, from_name=controls.polygon_from, to_name=controls.image_to
        )
        upd = requests.patch(
            f"{base}/api/projects/{project_id}", json={"label_config": xml}, headers=headers, timeout=60
        )
        _raise_for(upd, f"adding the smart tools to project {project_id}'s labeling config")
        log.info("project %s: labeling config now has smart keypoint/box tools for the backend", project_id)
    return connect_backend(ls_url, token, project_id, backend_url, title, auth=auth)


def _raise_for(resp, doing: str) -> None:
    if resp.status_code == 403 and "reserved network address" in resp.text:
        # Label Studio 1.23 refuses ML backends (and the webhook it adds for them) on
        # loopback/private addresses unless both switches are off.
        raise SednaSamError(
            f"{doing}: Label Studio refuses ML backends on local/private addresses (this machine, a "
            "cluster Service); start it with ML_BLOCK_LOCAL_IP=false and SSRF_PROTECTION_ENABLED=false"
        )
    text = resp.text.lower()
    if resp.status_code == 400 and ("authentication" in text or "401 client error" in text):
        raise SednaSamError(
            f"{doing}: the backend refused the credentials Label Studio sent; set {USER_ENV} and "
            f"{PASSWORD_ENV} to the values the backend runs with"
        )
    if resp.status_code in (401, 403):
        raise SednaSamError(f"{doing}: Label Studio refused the token (HTTP {resp.status_code})")
    if resp.status_code >= 400:
        raise SednaSamError(f"{doing}: HTTP {resp.status_code}: {resp.text[:500]}")


def image_source_from_env(
    ls_url: str | None = None, token: str | None = None, document_root: str | None = None
) -> ImageSource:
    """An :class:`ImageSource` from flags, falling back to LABEL_STUDIO_URL,
    LABEL_STUDIO_API_KEY and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT."""
    return ImageSource(
        ls_url or os.environ.get("LABEL_STUDIO_URL"),
        token or os.environ.get("LABEL_STUDIO_API_KEY"),
        document_root or os.environ.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"),
    )
