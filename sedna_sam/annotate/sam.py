"""Mask branch: segment-anything's ``SamAutomaticMaskGenerator`` with SSA's settings.

SSA's parameters (DESIGN.md section 3) are the defaults per dataset; every one can be
overridden. Records come back in SSA's order (area descending) with ``segmentation`` as a
COCO RLE whose ``counts`` is a str.

Cost model: the image encoder runs once per image *per crop*: with ``crop_n_layers=1``
(SSA's choice) that is the full image plus 4 overlapping crops, 5 encoder passes; the
mask decoder runs once per batch of ``points_per_batch`` point prompts per crop. Both
are timed separately (``last_timings``) for logs and the bench.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamParams:
    """``SamAutomaticMaskGenerator`` arguments (SSA's defaults for Cityscapes)."""

    points_per_side: int = 64
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.86
    stability_score_thresh: float = 0.92
    crop_n_layers: int = 1
    crop_n_points_downscale_factor: int = 2
    min_mask_region_area: int = 100
    box_nms_thresh: float = 0.7  # SAM's default, kept by SSA


# SSA's per-dataset settings (foggy driving: denser points for low-contrast scenes).
DATASET_SAM_PARAMS: dict[str, SamParams] = {
    "cityscapes": SamParams(),
    "ade20k": SamParams(),
    "foggy_driving": SamParams(points_per_side=128),
}


def sam_params(dataset: str | None = None, **overrides: Any) -> SamParams:
    """SSA's parameters for ``dataset`` (Cityscapes' for unknown names) with ``overrides``
    (None values ignored)."""
    base = DATASET_SAM_PARAMS.get(dataset or "cityscapes", SamParams())
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def autocast_context(device: str, dtype: str | None):
    """``torch.autocast`` for "bf16"/"fp16" on CUDA, and for "bf16" on CPU (CPU autocast
    has no fp16; there it is a no-op with a warning). None: a no-op."""
    import torch

    if not dtype:
        return contextlib.nullcontext()
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    if kind == "cpu" and dtype != "bf16":
        log.warning("autocast %s is CUDA-only; running in fp32 on %s", dtype, device)
        return contextlib.nullcontext()
    return torch.autocast(kind, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype])


class MaskBranch:
    """SAM's automatic masks for one image at a time.

    ``sam``: a loaded SAM (:func:`sedna_sam.models.load_sam`); ``params``: :class:`SamParams`;
    ``autocast``: None, "bf16" or "fp16": image encoder and mask decoder run under
    ``torch.autocast`` (CUDA; bf16 also on CPU), the decoder's outputs are cast back to fp32.
    """

    def __init__(self, sam, params: SamParams | None = None, autocast: str | None = None) -> None:
        from segment_anything import SamAutomaticMaskGenerator

        self.sam = sam
        self.params = params or SamParams()
        self.autocast = autocast
        self.device = str(next(sam.parameters()).device)
        self.generator = SamAutomaticMaskGenerator(sam, output_mode="coco_rle", **asdict(self.params))
        self._encoder_seconds = 0.0
        set_image = self.generator.predictor.set_image

        def timed_set_image(*args, **kwargs):
            start = time.perf_counter()
            out = set_image(*args, **kwargs)
            self._sync()
            self._encoder_seconds += time.perf_counter() - start
            return out

        self.generator.predictor.set_image = timed_set_image  # type: ignore[method-assign]
        if autocast:
            self._autocast_decoder()
        self.last_timings: dict[str, float] = {}

    def _autocast_decoder(self) -> None:
        """Cast the decoder's outputs back to fp32 under autocast: the generator turns them
        into numpy arrays (no bf16 there: "unsupported ScalarType BFloat16") and runs
        torchvision's NMS on them."""
        predictor = self.generator.predictor
        predict_torch = predictor.predict_torch

        def fp32_predict_torch(*args, **kwargs):
            return tuple(t.float() for t in predict_torch(*args, **kwargs))

        predictor.predict_torch = fp32_predict_torch  # type: ignore[method-assign]

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """SAM records for an (H, W, 3) uint8 RGB image, area descending (stable).

        ``last_timings`` then holds ``encoder`` (seconds in image-encoder passes) and
        ``decoder`` (the rest: prompt batches, filtering, NMS, RLE).
        """
        import torch

        self._encoder_seconds = 0.0
        start = time.perf_counter()
        with torch.inference_mode(), autocast_context(self.device, self.autocast):
            records = self.generator.generate(np.ascontiguousarray(image))
        self._sync()
        total = time.perf_counter() - start
        self.last_timings = {"encoder": self._encoder_seconds, "decoder": total - self._encoder_seconds}
        records.sort(key=lambda r: r["area"], reverse=True)
        return records
