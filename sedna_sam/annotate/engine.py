"""Pre-annotation of one image: SAM + semantic model + labeler -> SSA document.

:meth:`Annotator.annotate` (what the cloud service calls per sample, and what
:mod:`sedna_sam.annotate.batch` calls per file of a folder):

1. SAM automatic masks (:class:`~sedna_sam.annotate.sam.MaskBranch`), largest first;
2. the semantic model once (:mod:`~sedna_sam.annotate.semantic`) -> per-pixel config ids;
3. one pass over the masks' RLE pixels -> per-mask class histograms + owner map
   (:func:`~sedna_sam.annotate.voting.class_counts_and_owner`);
4. the labeler (:data:`~sedna_sam.annotate.labelers.LABELERS`, SSA's vote by default)
   gives each mask a class and its ``class_proposals``;
5. the final map: smaller masks over larger ones, uncovered pixels keep the semantic class;
6. SSA's JSON (:func:`sedna_sam.formats.ssa.ssa_document`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sedna_sam.annotate.labelers import MaskLabels, SemanticEvidence, class_name, make_labeler
from sedna_sam.annotate.modes import SamMode
from sedna_sam.annotate.sam import MaskBranch, SamParams
from sedna_sam.annotate.voting import MaskSet, class_counts_and_owner, paint
from sedna_sam.errors import InputError
from sedna_sam.labels import LabelSet

log = logging.getLogger(__name__)


@dataclass
class AnnotateOptions:
    """Everything needed to build an :class:`Annotator` (picklable: sent to workers).

    ``semantic_model``: directory or hub id (segformer) or "CONFIG::CKPT" (mmseg).
    ``device`` None = CUDA when present; ``num_threads`` CPU threads per process (None:
    all cores split over the workers). ``sam_mode``: how SAM runs (decoder backend,
    precisions, batches; default the exact mode). ``overlap`` runs the semantic model in a
    thread while SAM runs (None: on CUDA only, where it uses its own stream).
    """

    ckpt_path: str
    semantic_model: str
    labels: LabelSet
    model_type: str | None = None
    semantic_backend: str = "segformer"
    labeler: str = "segformer"
    labeler_options: dict[str, Any] = field(default_factory=dict)
    sam: SamParams = field(default_factory=SamParams)
    autocast: str | None = None
    device: str | None = None
    num_threads: int | None = None
    sam_mode: SamMode = field(default_factory=SamMode)
    overlap: bool | None = None


@dataclass
class PreAnnotation:
    """One image's result: ``document`` (SSA JSON object), ``class_map`` (H, W) uint16
    config ids (255 none), ``owner`` (H, W) int32 mask index per pixel (-1 none),
    ``timings`` seconds per stage (encoder, decoder, semantic, voting)."""

    document: dict[str, Any]
    class_map: np.ndarray
    owner: np.ndarray
    timings: dict[str, float]


class Annotator:
    """SAM + semantic backend + labeler, loaded once, applied to many images."""

    def __init__(
        self, mask_branch: MaskBranch, semantic, labeler, labels: LabelSet, overlap: bool | None = None
    ) -> None:
        self.mask_branch = mask_branch
        self.semantic = semantic
        self.labeler = labeler
        self.labels = labels
        self.overlap = mask_branch.device.startswith("cuda") if overlap is None else overlap

    @classmethod
    def from_options(cls, options: AnnotateOptions, device: str | None = None) -> Annotator:
        from sedna_sam.annotate.semantic import make_semantic
        from sedna_sam.models import load_sam

        device = device or options.device
        sam = load_sam(options.ckpt_path, options.model_type, device)
        device = str(next(sam.parameters()).device)
        semantic = make_semantic(
            options.semantic_backend, options.semantic_model, options.labels, device, options.autocast
        )
        labeler = make_labeler(options.labeler, options.labels, **options.labeler_options)
        mask_branch = MaskBranch(sam, options.sam, options.autocast, options.sam_mode)
        return cls(mask_branch, semantic, labeler, options.labels, options.overlap)

    def annotate(self, image: np.ndarray) -> PreAnnotation:
        """Pre-annotate one (H, W, 3) uint8 RGB image."""
        from sedna_sam.formats.ssa import ssa_document

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        records, semantic_ids, timings = self._sam_and_semantic(image)

        start = time.perf_counter()
        masks = MaskSet.from_rles([r["segmentation"] for r in records], image.shape[:2])
        counts, owner = class_counts_and_owner(semantic_ids, masks)
        result: MaskLabels = self.labeler(image, masks, SemanticEvidence(semantic_ids, counts, owner))
        class_map = paint(semantic_ids, owner, result.class_ids).astype(np.uint16)
        for record, cid, proposals in zip(records, result.class_ids, result.proposals):
            record["class_name"] = class_name(self.labels, int(cid))
            record["class_proposals"] = list(proposals)
        timings["voting"] = time.perf_counter() - start

        start = time.perf_counter()
        document = ssa_document(class_map, records, metadata={"sam_mode": self.mask_branch.metadata})
        timings["rle"] = time.perf_counter() - start
        return PreAnnotation(document, class_map, owner, timings)

    def _sam_and_semantic(
        self, image: np.ndarray
    ) -> tuple[list[dict[str, Any]], np.ndarray, dict[str, float]]:
        """SAM's records and the semantic ids; with ``overlap`` the semantic model runs in a
        thread (on its own CUDA stream on a GPU) while SAM runs."""
        from concurrent.futures import ThreadPoolExecutor

        def semantic() -> tuple[np.ndarray, float]:
            start = time.perf_counter()
            with _side_stream(self.mask_branch.device):
                return self.semantic.predict(image), time.perf_counter() - start

        if not self.overlap:
            records = self.mask_branch.generate(image)
            semantic_ids, seconds = semantic()
        else:
            with ThreadPoolExecutor(1, thread_name_prefix="semantic") as pool:
                future = pool.submit(semantic)
                records = self.mask_branch.generate(image)
                semantic_ids, seconds = future.result()
        timings = dict(self.mask_branch.last_timings)
        timings["semantic"] = seconds
        return records, semantic_ids, timings


def _side_stream(device: str):
    """A CUDA stream of its own on ``device`` (work there overlaps the default stream's,
    synchronised before the results are used); a no-op on CPU."""
    import contextlib

    if not str(device).startswith("cuda"):
        return contextlib.nullcontext()
    import torch

    @contextlib.contextmanager
    def run():
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            yield
        stream.synchronize()

    return run()
