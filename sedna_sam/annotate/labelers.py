"""Mask labelers: give each SAM mask a class of the labels config.

A labeler is registered in :data:`LABELERS` under a name and made with
``LABELERS.create(name, labels=..., **options)``. It is called once per image::

    result = labeler(image, masks, evidence)

- ``image``: (H, W, 3) uint8 RGB;
- ``masks``: :class:`~sedna_sam.annotate.voting.MaskSet`, SAM's masks largest first
  (``masks.indices(i)`` pixel indices, ``masks.decode_all()`` an (N, H, W) bool stack);
- ``evidence``: :class:`SemanticEvidence`, the semantic branch's per-pixel class ids
  (labels-config ids, 255 where the model's class is not in the config) and a per-mask
  class histogram computed once per image (so labelers that combine votes with something
  else do not recount);

and returns :class:`MaskLabels`: one class id per mask (-1 only for empty masks) and the
``class_proposals`` written to the SSA record. The engine then paints the final map
(SSA's rule: smaller masks overwrite larger ones; pixels no mask covers keep the semantic
class), so every labeler gets the same map semantics.

``segformer`` (alias ``vote``) is SSA's closed-set labeler. Helper modules may register
more (``sedna_sam.annotate.openvocab`` registers CLIP-based ones); :func:`load_plugins`
imports the known ones so their names resolve.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sedna_sam.annotate.voting import MaskSet, top_class
from sedna_sam.labels import IGNORE_ID, LabelSet
from sedna_sam.registry import Registry

log = logging.getLogger(__name__)

NUM_BINS = 256  # class ids are 0..254, 255 = not in the labels config


@dataclass
class SemanticEvidence:
    """What the semantic branch says about one image.

    ``class_ids`` (H, W) int64 labels-config ids (255 = unknown to the config);
    ``counts`` (N, 256) int64 pixels of each id inside each mask (from the voting pass);
    ``owner`` (H, W) int32 index of the smallest mask covering each pixel (-1 none).
    """

    class_ids: np.ndarray
    counts: np.ndarray
    owner: np.ndarray


@dataclass
class MaskLabels:
    """A labeler's answer: ``class_ids`` (N,) int64 (-1 only for empty masks) and
    ``proposals`` (N lists of class names, best first) for SSA's ``class_proposals``."""

    class_ids: np.ndarray
    proposals: list[list[str]]


class Labeler(Protocol):
    labels: LabelSet

    def __call__(self, image: np.ndarray, masks: MaskSet, evidence: SemanticEvidence) -> MaskLabels: ...


LABELERS: Registry[Labeler] = Registry("mask labeler")

# Modules that register labelers when imported (optional: skipped when missing).
PLUGIN_MODULES = ("sedna_sam.annotate.openvocab",)


def load_plugins() -> None:
    """Import the modules in :data:`PLUGIN_MODULES` so their labelers are registered."""
    for name in PLUGIN_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            log.debug("labeler plugin %s not loaded: %s", name, exc)


def make_labeler(name: str, labels: LabelSet, **options) -> Labeler:
    """``LABELERS.create`` after loading plugins, with the labels config passed in."""
    if name not in LABELERS:
        load_plugins()
    return LABELERS.create(name, labels=labels, **options)


def top_k_names(counts: np.ndarray, labels: LabelSet, k: int = 3) -> list[list[str]]:
    """Per mask, up to ``k`` class names by vote count (ties: smaller id first), only
    classes with at least one vote and known to ``labels``."""
    out: list[list[str]] = []
    order = np.argsort(-counts, axis=1, kind="stable")[:, : k + 1]  # +1: 255 may be among them
    for row, cnt in zip(order, counts):
        names = [labels.id2label[int(c)] for c in row if cnt[c] > 0 and int(c) in labels.id2label]
        out.append(names[:k])
    return out


@LABELERS.register("segformer")
@LABELERS.register("vote")
class VotingLabeler:
    """SSA's closed-set rule: each mask takes the most frequent semantic class inside it
    (ties: smallest id). ``proposals`` lists the top ``num_proposals`` voted classes.

    A mask whose majority is 255 (model class missing from the labels config) keeps 255:
    the painted pixels are then "no class", as the semantic map said.
    """

    def __init__(self, labels: LabelSet, num_proposals: int = 3) -> None:
        self.labels = labels
        self.num_proposals = num_proposals

    def __call__(self, image: np.ndarray, masks: MaskSet, evidence: SemanticEvidence) -> MaskLabels:
        return MaskLabels(
            top_class(evidence.counts), top_k_names(evidence.counts, self.labels, self.num_proposals)
        )


def class_name(labels: LabelSet, class_id: int) -> str | None:
    """Name for an SSA record's ``class_name`` (None for 255/unknown and -1)."""
    if class_id < 0 or class_id == IGNORE_ID:
        return None
    return labels.id2label.get(int(class_id))
