"""The deploy gate: a retrained model replaces the deployed one only if it learned the
new domain without forgetting the old one.

Accept when (a) new-domain mIoU rises by at least ``min_new_gain`` over the deployed
(baseline) model and (b) old-domain mIoU falls by at most ``max_old_drop`` -- the
backward transfer ``BWT = mIoU_old(candidate) - mIoU_old(baseline)`` must be
``>= -max_old_drop``. Pure function over metric numbers; the decision JSON says why.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sedna_sam.storage import atomic_write_json


@dataclass(frozen=True)
class GatePolicy:
    min_new_gain: float = 0.0  # new-domain mIoU must rise by more than this (absolute, 0..1)
    max_old_drop: float = 0.02  # old-domain mIoU may fall by at most this (absolute, 0..1)
    require_old: bool = True  # no old-domain numbers: reject (backward transfer unknown)


@dataclass
class GateDecision:
    accept: bool
    reasons: list[str]
    new_gain: float | None
    backward_transfer: float | None
    policy: GatePolicy
    numbers: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d["decision"] = "accept" if self.accept else "reject"
        return d


def _ok(x: float | None) -> bool:
    return x is not None and not math.isnan(x)


def decide(
    baseline_new: float | None,
    candidate_new: float | None,
    baseline_old: float | None,
    candidate_old: float | None,
    policy: GatePolicy | None = None,
) -> GateDecision:
    """Gate decision from four mIoUs (0..1; None/NaN = not measured)."""
    policy = policy or GatePolicy()
    reasons: list[str] = []
    accept = True
    numbers = {
        "baseline_new_mIoU": baseline_new,
        "candidate_new_mIoU": candidate_new,
        "baseline_old_mIoU": baseline_old,
        "candidate_old_mIoU": candidate_old,
    }
    gain = candidate_new - baseline_new if _ok(candidate_new) and _ok(baseline_new) else None
    if gain is None:
        accept = False
        reasons.append("new-domain mIoU not measured for both models")
    elif gain > policy.min_new_gain:
        reasons.append(f"new-domain mIoU rose by {gain:+.4f} (needs > {policy.min_new_gain:+.4f})")
    else:
        accept = False
        reasons.append(f"new-domain mIoU changed by {gain:+.4f}, not more than {policy.min_new_gain:+.4f}")
    bwt = candidate_old - baseline_old if _ok(candidate_old) and _ok(baseline_old) else None
    if bwt is None:
        if policy.require_old:
            accept = False
            reasons.append("old-domain mIoU not measured: backward transfer unknown (policy requires it)")
        else:
            reasons.append("old-domain mIoU not measured; not checked (require_old=False)")
    elif bwt >= -policy.max_old_drop:
        reasons.append(f"backward transfer {bwt:+.4f} within the allowed drop {policy.max_old_drop:.4f}")
    else:
        accept = False
        reasons.append(f"old-domain mIoU fell by {-bwt:.4f}, more than the allowed {policy.max_old_drop:.4f}")
    return GateDecision(accept, reasons, gain, bwt, policy, numbers)


def write_decision(path: str | Path, decision: GateDecision, **extra) -> Path:
    """Atomically write the decision JSON (plus ``extra`` fields, e.g. model paths)."""
    return atomic_write_json(path, {**decision.to_json(), **extra}, indent=2)
