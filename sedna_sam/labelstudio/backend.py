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
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np

from sedna_sam.errors import InputError, SednaSamError
from sedna_sam.labels import LabelSet, labeling_config_xml

log = logging.getLogger(__name__)

PROMPT_TYPES = ("keypointlabels", "rectanglelabels")


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
    for item in results or []:
        kind = item.get("type")
        if kind not in PROMPT_TYPES or (image_to and item.get("to_name", image_to) != image_to):
            continue
        value = item.get("value") or {}
        try:
            x, y = float(value["x"]) * width / 100.0, float(value["y"]) * height / 100.0
        except (KeyError, TypeError, ValueError):
            raise InputError(f"context region {item.get('id', '?')} has no numeric x/y") from None
        names = value.get(kind) or []
        if names and label is None:
            label = str(names[0])
        if kind == "keypointlabels":
            points.append((x, y))
            point_labels.append(0 if item.get("is_positive") is False else 1)
        else:
            w, h = (
                float(value.get("width", 0)) * width / 100.0,
                float(value.get("height", 0)) * height / 100.0,
            )
            box = np.array([x, y, x + w, y + h], dtype=np.float64)
    if not points and box is None:
        return None
    return Prompt(
        np.array(points, dtype=np.float64).reshape(-1, 2), np.array(point_labels, dtype=np.int64), box, label
    )


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
    from sedna_sam.geometry import polygon_area, polygons_from_mask

    h, w = mask.shape
    out = []
    polygons = polygons_from_mask(mask, tolerance_px=tolerance_px, min_area_px=min_area_px)
    for poly in sorted(polygons, key=polygon_area, reverse=True):
        pts = np.asarray(poly, dtype=np.float64)
        pts = np.stack([pts[:, 0] * 100.0 / w, pts[:, 1] * 100.0 / h], axis=1)
        out.append(
            {
                "id": uuid.uuid4().hex[:10],
                "from_name": controls.polygon_from,
                "to_name": controls.image_to,
                "type": "polygonlabels",
                "original_width": w,
                "original_height": h,
                "image_rotation": 0,
                "value": {"points": np.clip(pts, 0.0, 100.0).round(4).tolist(), "polygonlabels": [label]},
            }
        )
    return out


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


@dataclass
class ImageSource:
    """Reads a task's image from its reference.

    ``/data/local-files/?d=REL`` is read from ``document_root/REL`` when that file is here,
    else fetched from Label Studio (``ls_url``, ``token``); ``/data/...`` and ``http(s)://``
    URLs are fetched (with the token only when they point at ``ls_url``); ``s3://`` and other
    fsspec URLs go through :func:`sedna_sam.storage.url_filesystem`; anything else is a local
    path.
    """

    ls_url: str | None = None
    token: str | None = field(default=None, repr=False)
    document_root: str | None = None
    timeout_s: float = 30.0

    def load(self, ref: str) -> np.ndarray:
        from sedna_sam.images import read_image_rgb

        parsed = urlparse(ref)
        if parsed.path.startswith("/data/local-files") and self.document_root:
            rel = unquote(parse_qs(parsed.query).get("d", [""])[0])
            local = Path(self.document_root) / rel
            if rel and local.is_file():
                return read_image_rgb(local)
        if parsed.scheme in ("http", "https") or ref.startswith("/data/"):
            return self._decode(self._fetch(ref), ref)
        if parsed.scheme and len(parsed.scheme) > 1:  # s3://, gs://, ... (not a Windows drive)
            from sedna_sam.storage import url_filesystem

            fs, path = url_filesystem(ref)
            with fs.open(path, "rb") as fh:
                return self._decode(fh.read(), ref)
        return read_image_rgb(ref)

    def _fetch(self, ref: str) -> bytes:
        import requests

        base = (self.ls_url or "").rstrip("/")
        url = ref if urlparse(ref).scheme else base + ref
        if not urlparse(url).scheme:
            raise InputError(
                f"image {ref!r} is a Label Studio path but no Label Studio URL is set (--label-studio-url)"
            )
        headers = {}
        if self.token and base and url.startswith(base):
            headers["Authorization"] = f"Token {self.token}"
        resp = requests.get(url, headers=headers, timeout=self.timeout_s)
        if resp.status_code != 200:
            raise InputError(f"image {ref!r}: HTTP {resp.status_code} from {urlparse(url).netloc}")
        return resp.content

    @staticmethod
    def _decode(data: bytes, ref: str) -> np.ndarray:
        from sedna_sam.images import read_image_rgb

        with tempfile.NamedTemporaryFile(suffix=Path(urlparse(ref).path).suffix or ".img") as tmp:
            tmp.write(data)
            tmp.flush()
            try:
                return read_image_rgb(tmp.name)
            except InputError as exc:
                raise InputError(str(exc).replace(tmp.name, ref)) from None


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
        project = str(body.get("project", ""))
        if body.get("schema"):
            self.label_configs[project.split(".")[0]] = body["schema"]
        # Label Studio passes its URL and the project owner's token; use them for images
        # unless the operator configured them (never logged).
        if not self.images.ls_url and body.get("hostname"):
            self.images.ls_url = str(body["hostname"])
        if not self.images.token and body.get("access_token"):
            self.images.token = str(body["access_token"])
        log.info("setup for project %s", project or "?")
        return {"model_version": self.model_version}

    def webhook(self, body: dict) -> dict:
        # Interactive SAM does not train; events are acknowledged so Label Studio stays quiet.
        log.info("webhook %s ignored (interactive backend does not train)", body.get("action"))
        return {"status": "ok", "action": body.get("action")}

    def predict(self, body: dict) -> dict:
        tasks = body.get("tasks") or []
        params = body.get("params") or {}
        context = params.get("context") or body.get("context") or {}
        if not context or not context.get("result"):
            return {"results": [], "model_version": self.model_version}  # batch predictions: not ours
        project = str(body.get("project", "")).split(".")[0]
        config = body.get("label_config") or self.label_configs.get(project)
        if not config:
            raise InputError("predict request has no label_config and /setup was not called for this project")
        controls = controls_from_config(config)
        return {"results": [self.predict_task(task, context["result"], controls) for task in tasks]}

    def predict_task(self, task: dict, context_results: list[dict], controls: Controls) -> dict:
        ref = (task.get("data") or {}).get(controls.data_key)
        if not ref:
            raise InputError(f"task {task.get('id')} has no data.{controls.data_key}")
        key = str(ref)
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


def make_server(backend: SamBackend, host: str = "127.0.0.1", port: int = 9090) -> ThreadingHTTPServer:
    """A threaded HTTP server answering Label Studio's ML-backend routes (``port`` 0 picks
    a free port: read it from ``server.server_address``)."""
    routes: dict[str, Callable[[dict], dict]] = {
        "/setup": backend.setup,
        "/predict": backend.predict,
        "/webhook": backend.webhook,
        "/validate": lambda body: {"status": "ok"},
    }

    class Handler(BaseHTTPRequestHandler):
        server_version = "sedna-sam-backend"

        def _send(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if urlparse(self.path).path.rstrip("/") in ("/health", ""):
                self._send(200, backend.health())
            else:
                self._send(404, {"error": f"no route GET {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            route = routes.get(urlparse(self.path).path.rstrip("/"))
            if route is None:
                self._send(404, {"error": f"no route POST {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise InputError("request body must be a JSON object")
                self._send(200, route(body))
            except (json.JSONDecodeError, SednaSamError) as exc:
                log.warning("%s: %s", self.path, exc)
                self._send(400, {"error": str(exc)})
            except Exception as exc:  # keep serving; Label Studio shows the error text
                log.exception("%s failed", self.path)
                self._send(500, {"error": f"{type(exc).__name__}: {exc}"})

        def log_message(self, fmt: str, *args) -> None:  # route access logs to logging
            log.debug("%s " + fmt, self.address_string(), *args)

    return ThreadingHTTPServer((host, port), Handler)


# --- connecting to a project --------------------------------------------------------------


def connect_backend(
    ls_url: str, token: str, project_id: int, backend_url: str, title: str = "sedna-sam interactive SAM"
) -> dict:
    """Connect an ML backend to a Label Studio project as interactive (idempotent: an
    existing connection with the same URL is returned as is). Label Studio calls the
    backend's /health and /setup while connecting, so it must be running."""
    import requests

    base = ls_url.rstrip("/")
    headers = {"Authorization": f"Token {token}"}
    resp = requests.get(f"{base}/api/ml", params={"project": project_id}, headers=headers, timeout=30)
    _raise_for(resp, f"listing ML backends of project {project_id}")
    for backend in resp.json():
        if backend.get("url", "").rstrip("/") == backend_url.rstrip("/"):
            if not backend.get("is_interactive"):
                upd = requests.patch(
                    f"{base}/api/ml/{backend['id']}",
                    json={"is_interactive": True},
                    headers=headers,
                    timeout=30,
                )
                _raise_for(upd, "marking the ML backend interactive")
                return upd.json()
            return backend
    body = {"project": project_id, "url": backend_url, "title": title, "is_interactive": True}
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
) -> dict:
    """What ``ls push --connect-backend`` does: give the project the interactive labeling
    config (its PolygonLabels/Image names kept, smart KeyPointLabels + RectangleLabels
    added) unless it already has smart tools, then :func:`connect_backend`."""
    import requests

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
    return connect_backend(ls_url, token, project_id, backend_url, title)


def _raise_for(resp, doing: str) -> None:
    if resp.status_code == 403 and "reserved network address" in resp.text:
        # Label Studio 1.23 refuses ML backends (and the webhook it adds for them) on
        # loopback/private addresses unless both switches are off.
        raise SednaSamError(
            f"{doing}: Label Studio refuses ML backends on local/private addresses (this machine, a "
            "cluster Service); start it with ML_BLOCK_LOCAL_IP=false and SSRF_PROTECTION_ENABLED=false"
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
