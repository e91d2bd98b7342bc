"""Corner-case scorers: one frame's class logits -> one number, higher = more unusual.

Each scorer is a class in :data:`SCORERS`, chosen by name in config. Scores are
computed on the logits the model produces (N=1, at 1/4 of the input size for
Segformer), so they cost a few softmaxes, not a second forward pass. A scorer has a
``threshold``: a frame with ``score >= threshold`` is a corner case (set by
``sedna-sam edge calibrate`` from known data; the class default is only a starting
point).
"""

from __future__ import annotations

import math

import numpy as np

from sedna_sam.registry import Registry


def _as_tensor(logits):
    """(C, h, w) float32 torch tensor from a torch tensor or numpy array ((1, C, h, w) too)."""
    import torch

    t = logits if isinstance(logits, torch.Tensor) else torch.from_numpy(np.asarray(logits))
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise ValueError(f"a scorer takes one frame's logits, got a batch of {t.shape[0]}")
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"logits must be (C, h, w), got shape {tuple(t.shape)}")
    return t.float()


class Scorer:
    """Base: ``score(logits (C, h, w)) -> float``; ``flags(score)`` applies the threshold."""

    name = ""
    default_threshold = 0.5

    def __init__(self, threshold: float | None = None) -> None:
        self.threshold = float(self.default_threshold if threshold is None else threshold)

    def score(self, logits) -> float:
        raise NotImplementedError

    def __call__(self, logits) -> float:
        return self.score(logits)

    def flags(self, score: float) -> bool:
        return score >= self.threshold

    def params(self) -> dict:
        """Settings other than the threshold (recorded beside the threshold in config)."""
        return {}

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.params().items())
        return f"{type(self).__name__}(threshold={self.threshold:.6g}{extra})"


SCORERS: Registry[Scorer] = Registry("corner-case scorer")


@SCORERS.register("msp")
class MaxSoftmaxScorer(Scorer):
    """1 - mean over pixels of the max softmax probability (MSP).

    Uniform logits over C classes give 1 - 1/C; one dominant class gives about 0.
    """

    name = "msp"
    default_threshold = 0.3

    def score(self, logits) -> float:
        p = _as_tensor(logits).softmax(0)
        return float(1.0 - p.amax(0).mean())


@SCORERS.register("entropy")
class EntropyScorer(Scorer):
    """Mean pixel entropy of the softmax, divided by log(C) so it lies in [0, 1]
    (``normalize=False`` keeps nats). Uniform logits give 1."""

    name = "entropy"
    default_threshold = 0.4

    def __init__(self, threshold: float | None = None, normalize: bool = True) -> None:
        super().__init__(threshold)
        self.normalize = bool(normalize)

    def score(self, logits) -> float:
        t = _as_tensor(logits)
        logp = t.log_softmax(0)
        ent = -(logp.exp() * logp).sum(0).mean()
        c = t.shape[0]
        return float(ent / math.log(c)) if self.normalize and c > 1 else float(ent)

    def params(self) -> dict:
        return {"normalize": self.normalize}


@SCORERS.register("energy")
class EnergyScorer(Scorer):
    """Mean pixel free energy ``-T * logsumexp(logits / T)`` (Liu et al. 2020).

    Low energy = confident; all-zero logits over C classes give ``-T * log(C)``.
    Unbounded, so its threshold must come from calibration.
    """

    name = "energy"
    default_threshold = -5.0

    def __init__(self, threshold: float | None = None, temperature: float = 1.0) -> None:
        super().__init__(threshold)
        if temperature <= 0:
            raise ValueError(f"energy temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def score(self, logits) -> float:
        t = _as_tensor(logits) / self.temperature
        return float((-self.temperature * t.logsumexp(0)).mean())

    def params(self) -> dict:
        return {"temperature": self.temperature}


@SCORERS.register("lowconf")
class LowConfidenceFractionScorer(Scorer):
    """Fraction of pixels whose max softmax probability is below ``confidence``
    (default 0.5): how much of the frame the model is unsure about."""

    name = "lowconf"
    default_threshold = 0.2

    def __init__(self, threshold: float | None = None, confidence: float = 0.5) -> None:
        super().__init__(threshold)
        if not 0.0 < confidence <= 1.0:
            raise ValueError(f"lowconf confidence must be in (0, 1], got {confidence}")
        self.confidence = float(confidence)

    def score(self, logits) -> float:
        p = _as_tensor(logits).softmax(0)
        return float((p.amax(0) < self.confidence).float().mean())

    def params(self) -> dict:
        return {"confidence": self.confidence}


def all_scores(logits) -> dict[str, float]:
    """Every registered scorer's score (default settings) for one frame's logits."""
    return {name: SCORERS.create(name).score(logits) for name in SCORERS.names()}


def auroc(known: list[float] | np.ndarray, unknown: list[float] | np.ndarray) -> float:
    """Area under the ROC curve of a score separating ``unknown`` (positives) from
    ``known`` frames: the probability that a random unknown frame scores higher than a
    random known one, ties counting half (Mann-Whitney U / (n_known * n_unknown))."""
    neg = np.asarray(known, np.float64).ravel()
    pos = np.asarray(unknown, np.float64).ravel()
    if neg.size == 0 or pos.size == 0:
        raise ValueError("auroc needs at least one known and one unknown score")
    both = np.concatenate([neg, pos])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(both.size, np.float64)
    sorted_vals = both[order]
    # average ranks over ties (1-based)
    start = 0
    while start < both.size:
        end = start
        while end + 1 < both.size and sorted_vals[end + 1] == sorted_vals[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    u = ranks[neg.size :].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (neg.size * pos.size))
