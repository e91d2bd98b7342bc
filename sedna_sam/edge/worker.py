"""The edge inference worker: segment each frame, score it, keep the corner cases.

Per frame: Segformer logits -> TrainIds PNG (16-bit, 255 never used here) and an
optional colour overlay in the result dir -> the configured scorer's score -> if
``score >= threshold`` the frame and its metadata go into the sample buffer
(``unseen_save_url``), from where the shipper uploads them. The deployed model is
re-checked every ``poll_s`` seconds and reloaded between frames when its files change
(a failed load keeps the old model running). A timing line is logged for every frame.

Run by Sedna (deploySpec of the LifelongLearningJob), the worker reads the same env a
Sedna inference worker reads (:mod:`sedna_sam.sedna_compat`); with kubeedge/sedna's lib
installed the frames go through ``LifelongLearning.inference`` instead
(:mod:`sedna_sam.edge.sedna_inference`), which writes results and keeps samples through
the same :meth:`EdgeWorker.record`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sedna_sam import sedna_compat
from sedna_sam.edge.buffer import SampleBuffer, make_sample_id, sample_metadata
from sedna_sam.edge.metrics import EdgeMetrics
from sedna_sam.edge.model import LoadedModel, ModelWatcher
from sedna_sam.edge.sources import Failure, Frame, check_source, open_source
from sedna_sam.errors import BatchReport, SednaSamError
from sedna_sam.images import write_png

log = logging.getLogger(__name__)

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
            return sedna_compat.given_or_param(given.get(key), env_name, default, env)

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
    """The frame loop and its outputs. ``load_model=False``: the caller supplies each
    frame's model (the Sedna path, where the lib fetches and deploys the model)."""

    def __init__(
        self, settings: WorkerSettings, load_model: bool = True, metrics: EdgeMetrics | None = None
    ) -> None:
        if settings.max_fps is not None and settings.max_fps <= 0:
            raise SednaSamError(f"--max-fps must be > 0, got {settings.max_fps}")
        check_source(settings.source)
        self.settings = settings
        settings.result_dir.mkdir(parents=True, exist_ok=True)
        self.buffer = SampleBuffer(settings.unseen_dir, settings.buffer_max_bytes, settings.buffer_max_count)
        self.models = (
            ModelWatcher(
                settings.model, settings.device, settings.poll_s, settings.scorer, settings.threshold
            )
            if load_model
            else None
        )
        self.report = BatchReport("frames")
        self.metrics = metrics
        if metrics is not None and metrics.buffer is None:
            metrics.buffer = self.buffer

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

    def process(self, frame: Frame) -> FrameResult:
        """Segment, score and (if flagged) buffer one frame with the current model."""
        m = self.models.current
        t0 = time.perf_counter()
        logits = m.segformer.logits([frame.image])  # (1, C, h/4, w/4)
        if m.segformer.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        t1 = time.perf_counter()
        score = m.scorer.score(logits[0])
        t2 = time.perf_counter()
        ids = upsampled_ids(logits, frame.image.shape[:2])
        return self.record(
            frame,
            m,
            ids,
            score,
            m.scorer.flags(score),
            {"infer_ms": (t1 - t0) * 1e3, "score_ms": (t2 - t1) * 1e3},
        )

    def record(
        self,
        frame: Frame,
        m: LoadedModel,
        ids: np.ndarray,
        score: float,
        flagged: bool,
        timings_ms: dict[str, float],
        kept: bool | None = None,
    ) -> FrameResult:
        """Write a segmented frame's outputs and keep it when flagged (``kept`` given: the
        caller kept it already). ``timings_ms`` holds infer_ms and score_ms so far."""
        t2 = time.perf_counter()
        write_png(self.result_path(frame.name), ids.astype(np.uint16))
        if self.settings.overlay:
            blend = (0.5 * frame.image + 0.5 * m.colours[ids]).astype(np.uint8)
            write_png(self.overlay_path(frame.name), blend)
        t3 = time.perf_counter()
        if kept is None:
            kept = self.keep(frame, m, score) if flagged else False
        t4 = time.perf_counter()
        timings = {
            **timings_ms,
            "write_ms": (t3 - t2) * 1e3,
            "buffer_ms": (t4 - t3) * 1e3,
        }
        timings["total_ms"] = sum(timings.values())
        return FrameResult(frame.name, score, flagged, kept, timings)

    def keep(self, frame: Frame, m: LoadedModel, score: float) -> bool:
        """Put a flagged frame and its metadata into the buffer; False when it is full."""
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
        return self.buffer.add(ext, data, meta)

    def _plain_step(self, frame: Frame) -> FrameResult:
        if self.models.maybe_reload():
            self.report.count("model reloads")
        return self.process(frame)

    def run(
        self,
        stop: threading.Event | None = None,
        step: Callable[[Frame], FrameResult] | None = None,
        current: Callable[[], LoadedModel | None] | None = None,
    ) -> BatchReport:
        """Process frames until the source ends (or ``stop`` is set); returns the report.

        ``step`` segments one frame (default: the current model, reloaded when it changed);
        ``current`` gives the model in use (for the timing log and the metrics)."""
        stop = stop or threading.Event()
        step = step or self._plain_step
        current = current or (lambda: self.models.current)
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
                try:
                    r = step(item)
                except Exception as exc:  # one bad frame must not stop the stream
                    log.exception("%s: processing failed", item.name)
                    self.report.fail(item.name, f"{type(exc).__name__}: {exc}")
                    if self.metrics is not None:
                        self.metrics.failed()
                    continue
                self.report.ok()
                m = current()
                if self.metrics is not None and m is not None:
                    self.metrics.model(m.version, m.scorer.name, m.calibrated)
                    self.metrics.frame(r.timings_ms["total_ms"] / 1e3, m.scorer.name, r.flagged, r.kept)
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
                        "model_version": m.version if m is not None else None,
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


def upsampled_ids(logits, size: tuple[int, int]) -> np.ndarray:
    """(H, W) class ids from (1, C, h, w) logits upsampled bilinearly to ``size``
    (:func:`sedna_sam.segformer.upsampled_argmax`)."""
    from sedna_sam.segformer import upsampled_argmax

    return upsampled_argmax(logits, size).cpu().numpy()
