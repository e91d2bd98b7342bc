"""Open-vocabulary labels for SAM masks: CLIP image-text similarity over any label names.

Each mask takes the label name whose CLIP text embedding is closest to its crop
(:mod:`sedna_sam.annotate.clip`). The label names come from the labels config, so adding a
class to the config is all it takes to get it pre-annotated: nothing is retrained.

Two labelers are registered in :data:`sedna_sam.annotate.labelers.LABELERS`:

- ``clip``: every mask labelled by CLIP alone.
- ``segformer+clip``: SSA's closed-set vote first; CLIP decides only where the closed set
  is unsure (low vote share inside the mask) and for label names the closed-set model does
  not know (a mask CLIP confidently calls "scooter" becomes a scooter even where Segformer
  voted "motorcycle").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sedna_sam.annotate.clip import DEFAULT_CLIP_MODEL, DEFAULT_TEMPLATES, Clip, load_clip, mask_crops
from sedna_sam.annotate.labelers import LABELERS, MaskLabels, SemanticEvidence, top_k_names
from sedna_sam.annotate.voting import MaskSet, top_class
from sedna_sam.errors import SednaSamError
from sedna_sam.labels import LabelSet

log = logging.getLogger(__name__)


def combine_closed_open(
    closed_names: Sequence[str | None],
    closed_share: np.ndarray,
    open_probs: np.ndarray,
    names: Sequence[str],
    closed_known: set[str],
    min_share: float = 0.6,
    min_open_prob: float = 0.5,
) -> tuple[list[str], list[str]]:
    """Decide each mask's label from the closed-set vote and CLIP's probabilities.

    ``closed_names`` (N,) the voted closed-set class name (None where it has none),
    ``closed_share`` (N,) its vote share, ``open_probs`` (N, K) CLIP probabilities over
    ``names``; ``closed_known`` the names the closed-set model can predict.
    Returns (label name per mask, which branch decided: "closed" or "open").

    Rules: a closed-set vote with share >= ``min_share`` for a class in ``names`` stands,
    unless CLIP gives a class the closed set does not know a probability >= ``min_open_prob``
    (a new class wins where CLIP is confident). Elsewhere (closed set unsure or its class
    not in the label list) CLIP's top label is taken.
    """
    labels, branch = [], []
    name_set = set(names)
    for i, closed in enumerate(closed_names):
        k = int(open_probs[i].argmax())
        open_name, open_p = names[k], float(open_probs[i, k])
        new_class = open_name not in closed_known and open_p >= min_open_prob
        sure = closed is not None and closed in name_set and closed_share[i] >= min_share
        if sure and not new_class:
            labels.append(closed)  # type: ignore[arg-type]
            branch.append("closed")
        else:
            labels.append(open_name)
            branch.append("open")
    return labels, branch


# --- labelers (registered in LABELERS; protocol in sedna_sam.annotate.labelers) ------------


def _as_clip(clip: Clip | str | Path | None, device: str | None) -> Clip:
    if clip is None:
        clip = os.environ.get("SEDNA_SAM_CLIP_MODEL") or DEFAULT_CLIP_MODEL
    return clip if isinstance(clip, Clip) else load_clip(clip, device)


def _top_names(probs: np.ndarray, names: Sequence[str], k: int) -> list[list[str]]:
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[names[j] for j in row] for row in order]


@LABELERS.register("clip")
class ClipLabeler:
    """Labels every mask with the label name CLIP finds closest to its crop.

    The names are the labels config's (``labels.names``), read when the labeler is made: a
    class added to the config is a new prompt, no retraining. ``clip_model`` is a
    ``save_pretrained`` directory or a hub id; without it, $SEDNA_SAM_CLIP_MODEL or
    :data:`DEFAULT_CLIP_MODEL`.
    ``class_proposals`` are CLIP's top ``num_proposals`` names.
    """

    def __init__(
        self,
        labels: LabelSet,
        clip_model: Clip | str | Path | None = None,
        device: str | None = None,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        context: float = 0.1,
        num_proposals: int = 3,
    ) -> None:
        self.labels = labels
        self.clip = _as_clip(clip_model, device)
        self.templates = tuple(templates)
        self.context = context
        self.num_proposals = num_proposals

    def probabilities(self, image: np.ndarray, masks: MaskSet | np.ndarray) -> np.ndarray:
        """(N, K) CLIP probabilities over ``labels.names`` for N masks."""
        if len(masks) == 0:
            return np.zeros((0, len(self.labels)))
        crops = mask_crops(image, masks, self.clip.image_size, self.context)
        return self.clip.class_probabilities(crops, self.labels.names, self.templates)

    def __call__(self, image: np.ndarray, masks: MaskSet, evidence: SemanticEvidence) -> MaskLabels:
        probs = self.probabilities(image, masks)
        ids = (
            np.array(self.labels.ids, dtype=np.int64)[probs.argmax(1)]
            if len(masks)
            else np.zeros(0, np.int64)
        )
        ids[evidence.counts.sum(1) == 0] = -1  # empty masks own no pixel
        return MaskLabels(ids, _top_names(probs, self.labels.names, self.num_proposals))


@LABELERS.register("segformer+clip")
class SegformerClipLabeler:
    """Closed-set vote first (SSA's rule on the semantic branch's classes); CLIP decides
    only where the vote is unsure (share < ``min_share``) or between label names the
    closed-set model does not know (see :func:`combine_closed_open`).

    Which names the closed set knows: ``closed_classes`` if given (a list or a comma-separated
    string), else the ``id2label`` of
    ``semantic_model`` (the Segformer directory or hub id the engine uses), else all label
    names (then CLIP only settles unsure masks; a warning says so). CLIP runs only on the
    masks that need it. ``last_branches`` holds "closed"/"open" per mask after each call.
    """

    def __init__(
        self,
        labels: LabelSet,
        clip_model: Clip | str | Path | None = None,
        semantic_model: str | Path | None = None,
        closed_classes: Sequence[str] | str | None = None,
        device: str | None = None,
        min_share: float = 0.6,
        min_open_prob: float = 0.5,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        num_proposals: int = 3,
    ) -> None:
        self.labels = labels
        self.open = ClipLabeler(labels, clip_model, device, templates, num_proposals=num_proposals)
        if isinstance(closed_classes, str):  # --labeler-option closed_classes=road,car,...
            closed_classes = [c for c in closed_classes.split(",") if c.strip()]
        if closed_classes is None and semantic_model is not None:
            closed_classes = _model_class_names(semantic_model)
        if closed_classes is None:
            log.warning("segformer+clip: closed-set classes unknown; CLIP will only settle unsure masks")
            closed_classes = labels.names
        wanted = {n.strip().lower() for n in closed_classes}
        self.known = {n for n in labels.names if n.strip().lower() in wanted}
        self.min_share = min_share
        self.min_open_prob = min_open_prob
        self.num_proposals = num_proposals
        self.last_branches: list[str] = []

    def __call__(self, image: np.ndarray, masks: MaskSet, evidence: SemanticEvidence) -> MaskLabels:
        counts = evidence.counts
        top = top_class(counts)
        total = counts.sum(1)
        share = np.where(
            total > 0, counts[np.arange(len(top)), np.maximum(top, 0)] / np.maximum(total, 1), 0.0
        )
        closed = [self.labels.id2label.get(int(t)) if t >= 0 else None for t in top]
        names = self.labels.names
        new_classes = bool(set(names) - self.known)
        need = [
            i
            for i, c in enumerate(closed)
            if total[i] > 0 and (new_classes or c not in self.known or share[i] < self.min_share)
        ]
        probs = np.zeros((len(top), len(names)))
        if need:
            probs[need] = self.open.probabilities(image, _subset(masks, need))
        # Masks CLIP did not look at keep the closed vote (their rows are all zero).
        chosen, branches = combine_closed_open(
            closed, share, probs, names, self.known, self.min_share, self.min_open_prob
        )
        label2id = self.labels.label2id
        ids = np.array([label2id[c] for c in chosen], dtype=np.int64)
        ids[total == 0] = -1
        closed_props = top_k_names(counts, self.labels, self.num_proposals)
        open_props = _top_names(probs, names, self.num_proposals)
        proposals = [open_props[i] if b == "open" else closed_props[i] for i, b in enumerate(branches)]
        self.last_branches = branches
        return MaskLabels(ids, proposals)


def _subset(masks: MaskSet, keep: Sequence[int]) -> MaskSet:
    if masks.rles is not None:
        return MaskSet.from_rles([masks.rles[i] for i in keep], masks.shape)
    return MaskSet.from_dense(masks.dense[list(keep)])  # type: ignore[index]


def _model_class_names(spec: str | Path) -> list[str]:
    """Class names of a Hugging Face model (its config's id2label), without loading weights."""
    from transformers import AutoConfig

    local = Path(str(spec)).expanduser()
    try:
        config = AutoConfig.from_pretrained(
            str(local) if local.exists() else str(spec),
            local_files_only=local.exists() or os.environ.get("HF_HUB_OFFLINE") == "1",
        )
    except (OSError, ValueError) as exc:
        raise SednaSamError(f"cannot read the classes of semantic model {spec!r}: {exc}") from None
    return [str(n) for n in config.id2label.values()]
