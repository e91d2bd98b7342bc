"""Semantic branch: per-pixel class ids of the labels config, from a registered backend.

A backend is registered in :data:`SEMANTIC_BACKENDS` (Sedna ClassFactory style) and made
with ``SEMANTIC_BACKENDS.create(name, model=..., labels=..., device=...)``. It has
``predict(image (H, W, 3) uint8) -> (H, W) int64`` ids of the labels config, 255 where the
model's class is not in the config. The model's own class ids are mapped to the config by
name (case-insensitive), so a Cityscapes model and the Cityscapes config line up whatever
the id order, and a model with other classes fails loudly instead of mislabelling.

- ``segformer``: Hugging Face ``SegformerForSemanticSegmentation`` via
  :func:`sedna_sam.segformer.load_segformer` (local directory or hub id); logits are
  upsampled to the image size before the argmax, as SSA does.
- ``mmseg``: an MMSegmentation config + checkpoint; only available when mmsegmentation and
  a full mmcv (with its compiled ops) import. Not the case on our development machines
  (docs/architecture.md section 6); the error says so.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping

import numpy as np

from sedna_sam.annotate.sam import autocast_context
from sedna_sam.errors import SednaSamError
from sedna_sam.labels import IGNORE_ID, LabelSet
from sedna_sam.registry import Registry
from sedna_sam.segformer import upsampled_argmax

log = logging.getLogger(__name__)

SEMANTIC_BACKENDS: Registry = Registry("semantic backend")


def id_mapping(model_id2label: Mapping[int, str], labels: LabelSet, source: str = "model") -> np.ndarray:
    """(max model id + 1,) int64 lookup: model class id -> labels-config id (255 if absent).

    Raises when no model class name is in the labels config (wrong model for the config).
    """
    by_name = {name.strip().lower(): i for i, name in labels.id2label.items()}
    size = max(model_id2label) + 1 if model_id2label else 0
    table = np.full(size, IGNORE_ID, dtype=np.int64)
    missing = []
    for mid, name in model_id2label.items():
        target = by_name.get(str(name).strip().lower())
        if target is None:
            missing.append(str(name))
        else:
            table[int(mid)] = target
    if model_id2label and len(missing) == len(model_id2label):
        raise SednaSamError(
            f"{source}: none of its {len(model_id2label)} class names is in the labels config "
            f"{labels.source} (model: {', '.join(list(model_id2label.values())[:5])}, ...; "
            f"config: {', '.join(labels.names[:5])}, ...); pass the matching --config-path/--dataset"
        )
    if missing:
        log.warning(
            "%s: %d classes not in the labels config become 255 (no class): %s",
            source,
            len(missing),
            ", ".join(missing[:10]),
        )
    return table


@SEMANTIC_BACKENDS.register("segformer")
class SegformerBackend:
    """Segformer from a ``save_pretrained`` directory or a hub id (see module docstring)."""

    def __init__(
        self, model, labels: LabelSet, device: str | None = None, autocast: str | None = None
    ) -> None:
        from sedna_sam.segformer import Segformer, load_segformer

        self.segformer = model if isinstance(model, Segformer) else load_segformer(model, device)
        self.labels = labels
        self.autocast = autocast
        self.table = id_mapping(self.segformer.id2label, labels, f"Segformer {self.segformer.source}")

    @property
    def name(self) -> str:
        return f"segformer:{self.segformer.source}"

    def predict(self, image: np.ndarray) -> np.ndarray:
        """(H, W) int64 labels-config ids for an (H, W, 3) uint8 RGB image."""
        import torch

        sf = self.segformer
        with torch.inference_mode(), autocast_context(sf.device, self.autocast):
            logits = sf.model(pixel_values=sf.preprocess([image])).logits
            ids = upsampled_argmax(logits, image.shape[:2])
        return self.table[ids.cpu().numpy()]


def _mmseg_missing() -> str | None:
    """Why the mmseg backend cannot run here, or None when it can."""
    for module in ("mmseg", "mmcv", "mmcv._ext"):
        try:
            importlib.import_module(module)
        except Exception as exc:  # mmseg asserts on mmcv versions; mmcv-lite lacks _ext
            return f"`import {module}` fails ({type(exc).__name__}: {exc})"
    return None


@SEMANTIC_BACKENDS.register("mmseg")
class MMSegBackend:
    """An MMSegmentation model: ``model`` = "CONFIG.py::CHECKPOINT.pth".

    Needs mmsegmentation and a full mmcv with compiled ops; without them, construction
    raises with the reason (on our machines: no mmcv build matches current torch).
    Class names come from the model's ``dataset_meta``.
    """

    def __init__(
        self, model: str, labels: LabelSet, device: str | None = None, autocast: str | None = None
    ) -> None:
        why = _mmseg_missing()
        if why:
            raise SednaSamError(
                f"semantic backend 'mmseg' is unavailable: {why}; use --semantic-backend segformer"
            )
        from mmseg.apis import init_model  # type: ignore[import-not-found]

        from sedna_sam.segformer import default_device

        config, _, checkpoint = str(model).partition("::")
        if not checkpoint:
            raise SednaSamError(f"mmseg model must be 'CONFIG.py::CHECKPOINT.pth', got {model!r}")
        self.model = init_model(config, checkpoint, device=device or default_device())
        classes = self.model.dataset_meta["classes"]
        self.labels = labels
        self.source = str(model)
        self.table = id_mapping(dict(enumerate(classes)), labels, f"mmseg {model}")

    @property
    def name(self) -> str:
        return f"mmseg:{self.source}"

    def predict(self, image: np.ndarray) -> np.ndarray:
        from mmseg.apis import inference_model  # type: ignore[import-not-found]

        # mmseg takes BGR arrays, as cv2 reads them.
        result = inference_model(self.model, np.ascontiguousarray(image[:, :, ::-1]))
        return self.table[result.pred_sem_seg.data[0].cpu().numpy().astype(np.int64)]


def make_semantic(name: str, model, labels: LabelSet, device: str | None = None, autocast: str | None = None):
    """``SEMANTIC_BACKENDS.create`` with the common arguments."""
    return SEMANTIC_BACKENDS.create(name, model=model, labels=labels, device=device, autocast=autocast)
