"""The deployed model at the edge: where a spec points, its version, hot reload.

:class:`ModelWatcher` holds the current model and reloads it between frames when its
files change (a failed load keeps the old model running); :func:`load_model` loads one
with its corner-case scorer and calibrated threshold.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sedna_sam.edge.calibrate import EDGE_CONFIG_NAME, read_edge_config, scorer_from_config
from sedna_sam.edge.scorers import Scorer
from sedna_sam.errors import SednaSamError
from sedna_sam.labels import labels_for_model

log = logging.getLogger(__name__)

MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "preprocessor_config.json",
    EDGE_CONFIG_NAME,
)


def resolve_model_dir(spec: str) -> Path:
    """Local Segformer directory for any model spec (:func:`sedna_sam.model_files.resolve_model`:
    a directory, a file in one, an archive, ``file://``/``s3://`` URLs, a Sedna KB index
    such as ``deploy/index.pkl``; a ``;``-separated MODEL_URLS takes its first entry)."""
    from sedna_sam.model_files import resolve_model

    resolved = resolve_model(spec)
    if not resolved.local:
        raise SednaSamError(f"{spec}: model directory does not exist (a hub id is not deployable here)")
    return resolved.path


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


def load_model(
    model_dir: Path,
    device: str | None = None,
    scorer_name: str | None = None,
    threshold: float | None = None,
    previous: LoadedModel | None = None,
) -> LoadedModel:
    """Load a deployed model directory with its scorer (calibrated threshold when the
    model has one; else the previous model's, when it had one for the same scorer)."""
    from sedna_sam.segformer import load_segformer

    fingerprint = model_fingerprint(model_dir)
    segformer = load_segformer(model_dir, device)
    scorer, calibrated = scorer_from_config(read_edge_config(model_dir), scorer_name, threshold)
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
        return load_model(
            resolve_model_dir(self.spec),
            self.device,
            self.scorer_name,
            self.threshold,
            getattr(self, "current", None),
        )

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
