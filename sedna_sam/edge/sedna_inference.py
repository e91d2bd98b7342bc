"""Edge inference under kubeedge/sedna's lib: each frame through ``LifelongLearning.inference``.

What the lib does per frame, and where we plug in:

1. On the first frame (and when the deployed index changes) it copies MODEL_URLS
   (``<outputDir>/deploy/index.pkl``) to ``<edge_output_url>/index.pkl`` and downloads the
   models the index names (from the KB server) next to it.
2. Our unseen-sample recognition plug-in (``sedna_sam`` = the model's calibrated scorer,
   or ``sedna_sam_<scorer>``) splits the frames into seen and unseen with the corner-case
   score. It asks :class:`EdgeEstimator` for the frame's logits, which are computed once:
   the prediction that follows reuses them.
3. Seen frames are predicted through the lib's seen-task learning (our task allocation:
   the one model), unseen frames through its unseen-task processing (the same estimator).
4. Unseen frames go to our post-process, which keeps them in the sample buffer with the
   same metadata as the plain worker; the shipper uploads them to the cloud store.

Then :meth:`sedna_sam.edge.worker.EdgeWorker.record` writes the TrainIds result. The
lib's helper threads are not daemons: the command ends the process explicitly
(:func:`sedna_sam.sedna_job.runtime.hard_exit`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from sedna_sam.edge.metrics import EdgeMetrics
from sedna_sam.edge.model import LoadedModel, load_model, resolve_model_dir
from sedna_sam.edge.scorers import Scorer
from sedna_sam.edge.sources import Frame
from sedna_sam.edge.worker import EdgeWorker, FrameResult, WorkerSettings, upsampled_ids
from sedna_sam.errors import BatchReport, SednaSamError

log = logging.getLogger(__name__)


class EdgeEstimator:
    """The estimator Sedna's lib calls at the edge (``load``, ``predict``), plus what our
    recognition plug-in needs (``frame_logits``, ``scorer``, ``ensure_model``).

    The lib calls ``load`` before every prediction; a model file already loaded (same
    path, size and mtime) is not loaded again, a changed one is (hot reload).
    """

    def __init__(
        self, device: str | None = None, scorer_name: str | None = None, threshold: float | None = None
    ):
        self.device = device
        self.scorer_name = scorer_name
        self.threshold = threshold
        self.current: LoadedModel | None = None
        self.reloads = 0
        self._key: tuple | None = None
        self._frames: dict[str, np.ndarray] = {}  # frame key -> image offered by the frame loop
        self._logits: tuple[str, Any] | None = None  # (frame key, logits) of the last frame
        self._scorers: dict[tuple, Scorer] = {}
        self.scores: dict[str, float] = {}  # frame key -> score given by the plug-in

    # --- model -----------------------------------------------------------------------

    def load(self, model_url: str = "", **kwargs: Any) -> None:
        path = Path(model_url)
        try:
            st = path.stat()
        except OSError:
            raise SednaSamError(f"{model_url}: the deployed model file is missing") from None
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key == self._key:
            return
        previous = self.current
        self.current = load_model(
            resolve_model_dir(str(path)), self.device, self.scorer_name, self.threshold, previous
        )
        self._key, self._logits, self._scorers = key, None, {}
        if previous is not None:
            self.reloads += 1
            log.info("hot reload: model version %s -> %s", previous.version, self.current.version)

    def ensure_model(self, task_index: str | None) -> LoadedModel:
        """The current model; before the first prediction, the one the edge index names
        (the plug-in runs before the lib loads a model for prediction)."""
        if self.current is None:
            from sedna_sam.sedna_job.kb import model_urls_from_index

            if not task_index:
                raise SednaSamError("no knowledge-base index to take the deployed model from")
            urls = [u for u in model_urls_from_index(task_index) if Path(u).is_file()]
            if not urls:
                raise SednaSamError(f"{task_index}: the deployed model was not downloaded to the edge")
            self.load(urls[0])
        assert self.current is not None
        return self.current

    def scorer(self, name: str | None, threshold: float | None, params: dict) -> Scorer:
        """The scorer to flag frames with: ``name`` None = the model's own (calibrated)."""
        from sedna_sam.edge.calibrate import read_edge_config, scorer_from_config

        m = self.ensure_model(None)
        if name is None and threshold is None and not params:
            return m.scorer
        key = (name, threshold, tuple(sorted(params.items())))
        if key not in self._scorers:
            self._scorers[key] = scorer_from_config(
                read_edge_config(m.model_dir), name or m.scorer.name, threshold
            )[0]
        return self._scorers[key]

    # --- frames ----------------------------------------------------------------------

    def offer_frame(self, key: str, image: np.ndarray) -> None:
        """The frame loop hands over the decoded frame, so nothing is read twice."""
        self._frames = {key: image}

    @staticmethod
    def frame_key(x: Any) -> str:
        if isinstance(x, (tuple, list, np.ndarray)):
            return str(x[0])
        return str(x)

    def frame_image(self, x: Any) -> np.ndarray:
        key = self.frame_key(x)
        if key in self._frames:
            return self._frames[key]
        from sedna_sam.images import read_image_rgb

        return read_image_rgb(key)

    def frame_logits(self, x: Any):
        """(1, C, h, w) logits of a frame, computed once per frame."""
        key = self.frame_key(x)
        if self._logits is None or self._logits[0] != key:
            m = self.ensure_model(None)
            self._logits = (key, m.segformer.logits([self.frame_image(x)]))
        return self._logits[1]

    def predict(self, data: Any, **kwargs: Any) -> list[np.ndarray]:
        """(H, W) class ids per frame (a data source, an array of ``(path,)`` rows, or a list)."""
        items = data.x if hasattr(data, "x") else data
        return [upsampled_ids(self.frame_logits(x), self.frame_image(x).shape[:2]) for x in items]

    def train(self, *args: Any, **kwargs: Any):
        raise SednaSamError("the edge estimator only predicts: training is `sedna-sam train`")

    evaluate = save = train


def run_with_sedna_lib(
    settings: WorkerSettings, stop: threading.Event | None = None, metrics: EdgeMetrics | None = None
) -> BatchReport:
    """Frames through ``LifelongLearning.inference`` (see the module doc)."""
    from sedna.datasources import BaseDataSource  # type: ignore[import-not-found]

    from sedna_sam.sedna_job import runtime
    from sedna_sam.sedna_job.plugins import CALIBRATED_RECOGNITION, utd_alias

    runtime.prepare_env("inference")
    worker = EdgeWorker(settings, load_model=False, metrics=metrics)
    estimator = EdgeEstimator(settings.device, settings.scorer, settings.threshold)
    method = utd_alias(settings.scorer) if settings.scorer else CALIBRATED_RECOGNITION
    recognition = {
        "method": method,
        "param": {"threshold": settings.threshold} if settings.threshold is not None else {},
    }
    ll = runtime.lifelong_learning(estimator, unseen_estimator=estimator, recognition=recognition)
    kept: dict[str, bool] = {}
    frames: dict[str, Frame] = {}

    def keep_unseen(sample: Any, _edge_dir: str) -> None:
        """The lib's unseen-sample post-process: into our buffer, with our metadata."""
        key = estimator.frame_key(sample)
        assert estimator.current is not None
        kept[key] = worker.keep(frames[key], estimator.current, estimator.scores.get(key, float("nan")))

    def step(frame: Frame) -> FrameResult:
        key = str(frame.path) if frame.path else frame.name
        frames.clear()
        frames[key] = frame
        kept.clear()
        estimator.offer_frame(key, frame.image)
        data = BaseDataSource(data_type="test")
        data.x = [(key,)]
        t0 = time.perf_counter()
        result, is_unseen, _tasks = ll.inference(data, unseen_sample_postprocess=keep_unseen)
        t1 = time.perf_counter()
        ids = np.asarray(result[0])
        flagged = bool(is_unseen) if not isinstance(is_unseen, dict) else bool(is_unseen.get(key))
        assert estimator.current is not None
        return worker.record(
            frame,
            estimator.current,
            ids,
            estimator.scores.get(key, float("nan")),
            flagged,
            {"infer_ms": (t1 - t0) * 1e3, "score_ms": 0.0},
            kept=kept.get(key, False) if flagged else False,
        )

    try:
        report = worker.run(stop, step=step, current=lambda: estimator.current)
    finally:
        observer = getattr(ll.edge_knowledge_management, "unseen_sample_observer", None)
        if observer is not None:
            observer.stop()
    if estimator.reloads:
        report.count("model reloads", estimator.reloads)
    log.info("edge inference through Sedna's lib ended (pid %d)", os.getpid())
    return report
