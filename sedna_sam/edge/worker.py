"""The edge inference worker: segment each frame, score it, keep the corner cases.

Per frame: Segformer logits -> TrainIds PNG (16-bit, 255 never used here) and an
optional colour overlay in the result dir -> the configured scorer's score -> if
``score >= threshold`` the frame and its metadata go into the sample buffer
(``unseen_save_url``), from where the shipper uploads them. The deployed model is
re-checked every ``poll_s`` seconds and reloaded between frames when its files change
(a failed load keeps the old model running). A timing line is logged for every frame.

Run by Sedna (deploySpec of the LifelongLearningJob), the worker reads the same env a
Sedna inference worker reads (:mod:`sedna_sam.sedna_compat`). When Sedna's lib is
importable, :func:`run_with_sedna_lib` drives the frames through
``LifelongLearning.inference`` with our scorer registered as the unseen-sample
recognition plug-in. THAT PATH IS NOT EXERCISED HERE: the lib is not installable in
this environment (it comes from kubeedge/sedna's lib/ in the Docker images) and it
needs Sedna's knowledge-base index; the plain path below is what tests cover.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sedna_sam import sedna_compat
from sedna_sam.edge.buffer import SampleBuffer, make_sample_id, sample_metadata
from sedna_sam.edge.calibrate import EDGE_CONFIG_NAME, read_edge_config, scorer_from_config
from sedna_sam.edge.scorers import Scorer
from sedna_sam.edge.sources import Failure, Frame, check_source, open_source
from sedna_sam.errors import BatchReport, SednaSamError
from sedna_sam.images import write_png
from sedna_sam.labels import LabelSet, cityscapes

log = logging.getLogger(__name__)

MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "preprocessor_config.json",
    EDGE_CONFIG_NAME,
)


# --- the deployed model --------------------------------------------------------------


def resolve_model_dir(spec: str) -> Path:
    """Local Segformer directory for a model spec: a directory, a file inside one
    (``config.json``, weights), a ``file://`` URL, or a Sedna KB index (``.pkl``, needs
    the Sedna lib to unpickle). A ``;``-separated MODEL_URLS takes its first entry."""
    urls = sedna_compat.split_urls(spec)
    if not urls:
        raise SednaSamError("no model given: pass --model DIR or set MODEL_URLS")
    url = urls[0]
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" in url:
        raise SednaSamError(
            f"{url}: remote model URLs are not loaded directly; mount the model directory "
            "(the LifelongLearningJob's outputDir) into the pod and pass its path"
        )
    path = Path(url).expanduser()
    if path.suffix == ".pkl":
        return _model_dir_from_kb_index(path)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise SednaSamError(f"{url}: model directory does not exist")
    if not (path / "config.json").is_file():
        raise SednaSamError(f"{path}: not a Segformer model directory (no config.json)")
    return path


def _model_dir_from_kb_index(index: Path) -> Path:
    """The model directory a Sedna KB index (``deploy/index.pkl``) points at.

    Sedna writes the index with its own classes, so reading it needs the lib (NOT
    EXERCISED HERE). Without it, a model directory beside the index is used when
    there is exactly one.
    """
    if not index.is_file():
        raise SednaSamError(f"{index}: Sedna KB index not found (has the first training finished?)")
    if sedna_compat.sedna_available():  # pragma: no cover - needs the Sedna lib
        from sedna.common.file_ops import FileOps  # type: ignore[import-not-found]

        kb = FileOps.load(str(index))
        for group in (kb.get("seen_task") or {}).get("task_groups", []):
            model_file = Path(str(group.model.model))
            return model_file if model_file.is_dir() else model_file.parent
    if (index.parent / "model" / "config.json").is_file():  # the trainer's round layout
        return index.parent / "model"
    beside = [p for p in index.parent.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    if len(beside) == 1:
        return beside[0]
    raise SednaSamError(
        f"{index}: cannot read a Sedna KB index without the Sedna lib, and {index.parent} does not "
        "hold exactly one model directory; pass --model DIR"
    )


def model_fingerprint(model_dir: Path) -> tuple:
    """(name, size, mtime_ns) of the files that make the model: changes when it is redeployed."""
    out = []
    for name in MODEL_FILES:
        try:
            st = (model_dir / name).stat()
        except FileNotFoundError:
            continue
        out.append((name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def model_version(model_dir: Path) -> str:
    """Short content hash of the model's config and weights (same files = same version)."""
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        path = model_dir / name
        if path.is_file():
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:12]


def labels_for_model(id2label: dict[int, str]) -> LabelSet:
    """Class names from the model; Cityscapes colours where names match."""
    city = cityscapes()
    by_name = {n: city.colour(i) for i, n in city.id2label.items()}
    return LabelSet(dict(id2label), {i: by_name[n] for i, n in id2label.items() if n in by_name})


@dataclass
class LoadedModel:
    segformer: Any
    model_dir: Path
    version: str
    fingerprint: tuple
    scorer: Scorer
    calibrated: bool
    colours: np.ndarray  # (256, 3) uint8
    inherited: bool = False  # threshold carried over from an earlier calibrated model


class ModelWatcher:
    """Holds the current model and reloads it when its files change (checked at most
    every ``poll_s`` seconds, between frames)."""

    def __init__(
        self,
        spec: str,
        device: str | None = None,
        poll_s: float = 30.0,
        scorer: str | None = None,
        threshold: float | None = None,
    ) -> None:
        self.spec = spec
        self.device = device
        self.poll_s = poll_s
        self.scorer_name = scorer
        self.threshold = threshold
        self.reloads = 0
        self._failed: tuple = ()
        self.current = self._load()
        self._last_check = time.monotonic()

    def _load(self) -> LoadedModel:
        from sedna_sam.segformer import load_segformer

        model_dir = resolve_model_dir(self.spec)
        fingerprint = model_fingerprint(model_dir)
        segformer = load_segformer(model_dir, self.device)
        scorer, calibrated = scorer_from_config(read_edge_config(model_dir), self.scorer_name, self.threshold)
        previous = getattr(self, "current", None)
        inherited = False
        if (
            not calibrated
            and previous is not None
            and (previous.calibrated or previous.inherited)
            and previous.scorer.name == scorer.name
        ):
            # A retrained model deployed without its edge config: the old threshold is a
            # far better guess than the class default until someone calibrates again.
            scorer, inherited = previous.scorer, True
            log.warning(
                "%s has no %s; keeping the previous model's %s threshold %.4g until it is calibrated",
                model_dir,
                EDGE_CONFIG_NAME,
                scorer.name,
                scorer.threshold,
            )
        elif not calibrated:
            log.warning(
                "%s: no calibrated threshold for scorer %r; using its default %.4g "
                "(run `sedna-sam edge calibrate --model %s --data KNOWN_DIR`)",
                model_dir,
                scorer.name,
                scorer.threshold,
                model_dir,
            )
        version = model_version(model_dir)
        log.info("model %s version %s, scorer %r", model_dir, version, scorer)
        colours = labels_for_model(segformer.id2label).colour_table()
        return LoadedModel(segformer, model_dir, version, fingerprint, scorer, calibrated, colours, inherited)

    def maybe_reload(self, force: bool = False) -> bool:
        """Reload when the model's files changed; True when a new model is in use."""
        now = time.monotonic()
        if not force and now - self._last_check < self.poll_s:
            return False
        self._last_check = now
        try:
            model_dir = resolve_model_dir(self.spec)
        except SednaSamError as exc:
            log.error("model check failed (%s); keeping version %s", exc, self.current.version)
            return False
        fingerprint = model_fingerprint(model_dir)
        if (model_dir, fingerprint) in ((self.current.model_dir, self.current.fingerprint), self._failed):
            return False
        try:
            new = self._load()
        except Exception as exc:  # a half-copied model: keep serving the old one
            self._failed = (model_dir, fingerprint)  # retried once these files change again
            log.error(
                "new model at %s does not load (%s); keeping version %s", model_dir, exc, self.current.version
            )
            return False
        old = self.current.version
        self.current = new
        self.reloads += 1
        log.info("hot reload: model version %s -> %s", old, new.version)
        return True


# --- the worker ----------------------------------------------------------------------


@dataclass
class WorkerSettings:
    """Everything ``edge run`` needs; :meth:`from_env` fills what Sedna provides."""

    model: str
    source: str
    result_dir: Path
    unseen_dir: Path
    scorer: str | None = None
    threshold: float | None = None
    overlay: bool = False
    max_fps: float | None = None
    device: str | None = None
    poll_s: float = 30.0
    watch: bool = False
    every: int = 1
    buffer_max_bytes: int = 2 << 30
    buffer_max_count: int = 10_000
    node: str = field(default_factory=sedna_compat.node_name)
    timing_log: Path | None = None
    max_frames: int | None = None

    @classmethod
    def from_env(cls, env=None, **given: Any) -> WorkerSettings:
        """Settings from explicit values (``None`` = not given) over Sedna's env names."""

        def pick(key: str, env_name: str, default=None):
            value = given.get(key)
            return value if value is not None else sedna_compat.get_param(env_name, default, env)

        model = pick("model", "MODEL_URLS")
        if not model:
            raise SednaSamError("no model: pass --model DIR or set MODEL_URLS")
        source = given.get("source")
        if not source:
            raise SednaSamError("no frame source: pass --source DIR|FILE|VIDEO|CAMERA|URL")
        poll = given.get("poll_s")
        rest = {
            k: v
            for k, v in given.items()
            if v is not None and k not in ("model", "source", "result_dir", "unseen_dir", "poll_s", "node")
        }
        return cls(
            model=model,
            source=source,
            result_dir=Path(pick("result_dir", "INFERENCE_RESULT_DIR", "./inference_results")),
            unseen_dir=Path(pick("unseen_dir", "unseen_save_url", "./unseen_samples")),
            poll_s=float(poll) if poll is not None else sedna_compat.model_poll_seconds(env),
            node=given.get("node") or sedna_compat.node_name(env),
            **rest,
        )


@dataclass
class FrameResult:
    name: str
    score: float
    flagged: bool
    kept: bool
    timings_ms: dict[str, float]


class EdgeWorker:
    def __init__(self, settings: WorkerSettings) -> None:
        if settings.max_fps is not None and settings.max_fps <= 0:
            raise SednaSamError(f"--max-fps must be > 0, got {settings.max_fps}")
        check_source(settings.source)
        self.settings = settings
        settings.result_dir.mkdir(parents=True, exist_ok=True)
        self.buffer = SampleBuffer(settings.unseen_dir, settings.buffer_max_bytes, settings.buffer_max_count)
        self.models = ModelWatcher(
            settings.model, settings.device, settings.poll_s, settings.scorer, settings.threshold
        )
        self.report = BatchReport("frames")

    def result_path(self, name: str) -> Path:
        return self.settings.result_dir / f"{name}_TrainIds.png"

    def overlay_path(self, name: str) -> Path:
        return self.settings.result_dir / f"{name}_overlay.png"

    def already_done(self, path: Path) -> bool:
        from sedna_sam.storage import image_stem

        return self.result_path(image_stem(path)).is_file()

    def frames(self, stop: threading.Event) -> Iterator[Frame | Failure]:
        s = self.settings
        return open_source(
            s.source, watch=s.watch, poll_s=1.0, every=s.every, skip=self.already_done, stop=stop
        )

    def process(self, frame: Frame, flag: bool | None = None) -> FrameResult:
        """Segment, score and (if flagged) buffer one frame; ``flag`` overrides the
        threshold decision (the Sedna path passes its plug-in's verdict)."""
        m = self.models.current
        t0 = time.perf_counter()
        logits = m.segformer.logits([frame.image])  # (1, C, h/4, w/4)
        if m.segformer.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        t1 = time.perf_counter()
        score = m.scorer.score(logits[0])
        t2 = time.perf_counter()
        ids = _upsampled_ids(logits, frame.image.shape[:2])
        write_png(self.result_path(frame.name), ids.astype(np.uint16))
        if self.settings.overlay:
            blend = (0.5 * frame.image + 0.5 * m.colours[ids]).astype(np.uint8)
            write_png(self.overlay_path(frame.name), blend)
        t3 = time.perf_counter()
        flagged = m.scorer.flags(score) if flag is None else bool(flag)
        kept = False
        if flagged:
            data, ext = frame.encoded()
            sample_id = make_sample_id(frame.name, data)
            meta = sample_metadata(
                sample_id,
                f"{sample_id}{ext}",
                data,
                score=score,
                scorer=m.scorer.name,
                threshold=m.scorer.threshold,
                model_version=m.version,
                node=self.settings.node,
                frame_time=frame.time,
                source=str(frame.path) if frame.path else self.settings.source,
                width=int(frame.image.shape[1]),
                height=int(frame.image.shape[0]),
                calibrated=m.calibrated,
            )
            kept = self.buffer.add(ext, data, meta)
        t4 = time.perf_counter()
        timings = {
            "infer_ms": (t1 - t0) * 1e3,
            "score_ms": (t2 - t1) * 1e3,
            "write_ms": (t3 - t2) * 1e3,
            "buffer_ms": (t4 - t3) * 1e3,
            "total_ms": (t4 - t0) * 1e3,
        }
        return FrameResult(frame.name, score, flagged, kept, timings)

    def run(self, stop: threading.Event | None = None) -> BatchReport:
        """Process frames until the source ends (or ``stop`` is set); returns the report."""
        stop = stop or threading.Event()
        s = self.settings
        self.report = BatchReport("frames")
        timing_file = open(s.timing_log, "a", encoding="utf-8") if s.timing_log else None
        min_interval = 1.0 / s.max_fps if s.max_fps else 0.0
        next_slot = time.monotonic()
        n = 0
        try:
            for item in self.frames(stop):
                if isinstance(item, Failure):
                    self.report.fail(item.item, item.message)
                    continue
                if min_interval:  # frame-rate cap: wait for this frame's slot
                    delay = next_slot - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        break
                    next_slot = max(next_slot, time.monotonic()) + min_interval
                if self.models.maybe_reload():
                    self.report.count("model reloads")
                try:
                    r = self.process(item)
                except Exception as exc:  # one bad frame must not stop the stream
                    log.exception("%s: processing failed", item.name)
                    self.report.fail(item.name, f"{type(exc).__name__}: {exc}")
                    continue
                self.report.ok()
                if r.flagged:
                    self.report.count("flagged")
                    if not r.kept:
                        self.report.count("dropped (buffer full)")
                log.info(
                    "frame %s: score %.4f%s infer %.1f ms, score %.2f ms, write %.1f ms, total %.1f ms",
                    r.name,
                    r.score,
                    " FLAGGED," if r.flagged else ",",
                    r.timings_ms["infer_ms"],
                    r.timings_ms["score_ms"],
                    r.timings_ms["write_ms"],
                    r.timings_ms["total_ms"],
                )
                if timing_file:
                    rec = {
                        "frame": r.name,
                        "score": r.score,
                        "flagged": r.flagged,
                        "model_version": self.models.current.version,
                    }
                    timing_file.write(
                        json.dumps({**rec, **{k: round(v, 3) for k, v in r.timings_ms.items()}}) + "\n"
                    )
                    timing_file.flush()
                n += 1
                if s.max_frames and n >= s.max_frames:
                    break
        finally:
            if timing_file:
                timing_file.close()
        return self.report


def _upsampled_ids(logits, size: tuple[int, int]) -> np.ndarray:
    """(H, W) class ids from (1, C, h, w) logits upsampled bilinearly to ``size``."""
    import torch.nn.functional as F

    up = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return up[0].argmax(0).cpu().numpy()


# --- the Sedna lib path (NOT EXERCISED HERE: needs kubeedge/sedna's lib and a KB index) ---


class SegformerEstimator:
    """Sedna estimator for inference: ``load(model_url)``, ``predict(data)``; training
    and evaluation are done by ``sedna-sam train``/``eval``, not through this object."""

    def __init__(self, device: str | None = None, **kwargs: Any) -> None:
        self.device = device
        self.watcher: ModelWatcher | None = None

    def load(self, model_url: str = "", **kwargs: Any) -> None:
        self.watcher = ModelWatcher(model_url, self.device)

    def logits(self, image: np.ndarray):
        assert self.watcher is not None, "load() first"
        return self.watcher.current.segformer.logits([image])

    def predict(self, data, **kwargs: Any) -> list[np.ndarray]:
        return [_upsampled_ids(self.logits(_sample_image(x)), _sample_image(x).shape[:2]) for x in data]

    def train(self, train_data, valid_data=None, **kwargs: Any):
        raise SednaSamError("train with `sedna-sam train`, not through the edge estimator")

    def evaluate(self, data, **kwargs: Any):
        raise SednaSamError("evaluate with `sedna-sam eval`, not through the edge estimator")

    def save(self, model_path: str = "", **kwargs: Any):
        raise SednaSamError("the edge estimator does not save models")


def _sample_image(sample) -> np.ndarray:
    """Image of one Sedna inference sample: ``(path, ...)``, ``{"image": PIL}`` or an array."""
    from sedna_sam.images import read_image_rgb

    if isinstance(sample, dict):
        return np.asarray(sample["image"].convert("RGB"))
    if isinstance(sample, np.ndarray):
        return sample
    return read_image_rgb(sample[0] if isinstance(sample, (list, tuple)) else sample)


def make_utd_plugin(scorer_name: str) -> type:
    """A Sedna unseen-sample-recognition class scoring with our scorer ``scorer_name``.

    Sedna builds it as ``cls(task_index, estimator=..., **param)`` and calls it with a
    ``BaseDataSource``; it returns ``(seen, unseen)`` data sources. Each sample's score
    is kept in ``last_scores`` (by position) for the metadata.
    """
    from sedna_sam.edge.scorers import SCORERS

    class CornerCaseRecognition:
        def __init__(
            self, task_index=None, estimator=None, threshold: float | None = None, **params: Any
        ) -> None:
            self.estimator = estimator
            self.scorer = SCORERS.create(scorer_name, threshold=threshold, **params)
            self.last_scores: list[float] = []

        def _logits(self, image):
            est = self.estimator
            for candidate in (est, getattr(est, "estimator", None), getattr(est, "base_model", None)):
                if candidate is not None and hasattr(candidate, "logits"):
                    return candidate.logits(image)[0]
            raise SednaSamError("the Sedna estimator does not expose logits(image); use SegformerEstimator")

        def __call__(self, samples, **kwargs: Any):
            from sedna.datasources import BaseDataSource  # type: ignore[import-not-found]

            seen = BaseDataSource(data_type=samples.data_type)
            unseen = BaseDataSource(data_type=samples.data_type)
            seen.x, unseen.x = [], []
            self.last_scores = []
            for x in samples.x:
                s = self.scorer.score(self._logits(_sample_image(x)))
                self.last_scores.append(s)
                (unseen.x if self.scorer.flags(s) else seen.x).append(x)
            return seen, unseen

    CornerCaseRecognition.__name__ = f"SednaSam{scorer_name.capitalize()}Recognition"
    return CornerCaseRecognition


def utd_alias(scorer_name: str) -> str:
    return f"sedna_sam_{scorer_name}"


def register_sedna_plugins() -> bool:
    """Register every scorer as a Sedna UTD plug-in (``sedna_sam_<name>``); False without the lib."""
    from sedna_sam.edge.scorers import SCORERS

    if not sedna_compat.sedna_available():
        return False
    for name in SCORERS.names():
        sedna_compat.register_utd_plugin(utd_alias(name), make_utd_plugin(name))
    return True


def run_with_sedna_lib(
    settings: WorkerSettings, stop: threading.Event | None = None
) -> BatchReport:  # pragma: no cover
    """Frames through ``sedna.core.lifelong_learning.LifelongLearning.inference``.

    NOT EXERCISED HERE (no Sedna lib, no knowledge base). Sedna downloads and deploys
    the KB index named by MODEL_URLS, runs our plug-in to split seen/unseen, predicts
    with :class:`SegformerEstimator`, and hands unseen frames to our post-process, which
    keeps them in the same buffer with the same metadata as the plain path.
    """
    from sedna.core.lifelong_learning import LifelongLearning  # type: ignore[import-not-found]
    from sedna.datasources import BaseDataSource  # type: ignore[import-not-found]

    register_sedna_plugins()
    worker = EdgeWorker(settings)  # the plain worker owns model, buffer and outputs
    m = worker.models.current
    estimator = SegformerEstimator(settings.device)
    estimator.watcher = worker.models
    ll = LifelongLearning(
        estimator,
        unseen_sample_recognition={
            "method": utd_alias(m.scorer.name),
            "param": {"threshold": m.scorer.threshold, **m.scorer.params()},
        },
    )
    stop = stop or threading.Event()
    for item in worker.frames(stop):
        if isinstance(item, Failure):
            worker.report.fail(item.item, item.message)
            continue
        data = BaseDataSource(data_type="test")
        data.x = [(str(item.path),)] if item.path else [{"image": _pil(item.image)}]
        _, is_unseen, _ = ll.inference(data, unseen_sample_postprocess=lambda sample, _dir: None)
        worker.models.maybe_reload()
        # Sedna decided seen/unseen with our plug-in; results and samples are written like
        # the plain path (one more forward pass: Sedna's API does not hand back logits).
        r = worker.process(
            item, flag=is_unseen is True or (isinstance(is_unseen, dict) and any(is_unseen.values()))
        )
        worker.report.ok()
        log.info("frame %s: sedna unseen=%s, score %.4f", item.name, is_unseen, r.score)
    return worker.report


def _pil(image: np.ndarray):  # pragma: no cover - Sedna path only
    from PIL import Image

    return Image.fromarray(image)
