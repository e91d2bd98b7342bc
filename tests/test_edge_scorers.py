"""Corner-case scorer math on crafted logits with known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sedna_sam.edge.calibrate import scorer_from_config, thresholds_for_rate
from sedna_sam.edge.scorers import SCORERS, EnergyScorer, all_scores
from sedna_sam.errors import SednaSamError

C = 19


def peaked(a: float, h: int = 4, w: int = 4) -> torch.Tensor:
    """Logits with class 3 at ``a`` and every other class at 0."""
    t = torch.zeros(C, h, w)
    t[3] = a
    return t


def test_registry_has_the_four_scorers():
    assert SCORERS.names() == ["energy", "entropy", "lowconf", "msp"]
    with pytest.raises(SednaSamError, match="unknown corner-case scorer 'nope'"):
        SCORERS.create("nope")


def test_uniform_logits_score_maximal_uncertainty():
    s = all_scores(torch.zeros(C, 5, 7))
    assert s["msp"] == pytest.approx(1 - 1 / C)
    assert s["entropy"] == pytest.approx(1.0)
    assert s["energy"] == pytest.approx(-math.log(C))
    assert s["lowconf"] == 1.0
    raw = SCORERS.create("entropy", normalize=False).score(torch.zeros(C, 2, 2))
    assert raw == pytest.approx(math.log(C))


def test_peaked_logits_known_values():
    a = 4.0
    p = math.exp(a) / (math.exp(a) + C - 1)
    q = 1 / (math.exp(a) + C - 1)
    entropy = -(p * math.log(p) + (C - 1) * q * math.log(q))
    s = all_scores(peaked(a))
    assert s["msp"] == pytest.approx(1 - p, rel=1e-5)
    assert s["entropy"] == pytest.approx(entropy / math.log(C), rel=1e-5)
    assert s["energy"] == pytest.approx(-math.log(math.exp(a) + C - 1), rel=1e-5)
    assert p > 0.5 and s["lowconf"] == 0.0


def test_every_scorer_ranks_uniform_above_peaked():
    for name in SCORERS.names():
        scorer = SCORERS.create(name)
        assert scorer.score(torch.zeros(C, 4, 4)) > scorer.score(peaked(10.0)), name


def test_mixed_frame_averages_over_pixels():
    t = peaked(10.0, 4, 4)
    t[:, :2, :] = 0.0  # top half uniform
    s = all_scores(t)
    p = math.exp(10) / (math.exp(10) + C - 1)
    assert s["lowconf"] == pytest.approx(0.5)
    assert s["msp"] == pytest.approx(0.5 * (1 - 1 / C) + 0.5 * (1 - p), rel=1e-5)


def test_energy_temperature_and_lowconf_confidence():
    t = peaked(4.0)
    assert EnergyScorer(temperature=2.0).score(t) == pytest.approx(
        -2 * math.log(math.exp(2.0) + C - 1), rel=1e-5
    )
    p = math.exp(4.0) / (math.exp(4.0) + C - 1)  # about 0.74
    assert SCORERS.create("lowconf", confidence=0.7).score(t) == 0.0
    assert SCORERS.create("lowconf", confidence=0.8).score(t) == 1.0
    assert 0.7 < p < 0.8
    with pytest.raises(ValueError):
        EnergyScorer(temperature=0)


def test_numpy_and_batched_inputs_match_torch():
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(C, 6, 6)).astype(np.float32)
    for name in SCORERS.names():
        scorer = SCORERS.create(name)
        a = scorer.score(arr)
        assert scorer.score(torch.from_numpy(arr)) == pytest.approx(a)
        assert scorer.score(torch.from_numpy(arr)[None]) == pytest.approx(a)
    with pytest.raises(ValueError, match="batch of 2"):
        SCORERS.create("msp").score(torch.zeros(2, C, 3, 3))
    with pytest.raises(ValueError, match=r"\(C, h, w\)"):
        SCORERS.create("msp").score(torch.zeros(C, 3))


def test_threshold_flags_and_config():
    scorer, calibrated = scorer_from_config({}, None, None)
    assert scorer.name == "msp" and not calibrated
    config = {"scorer": "energy", "scorers": {"energy": {"threshold": -3.5, "params": {"temperature": 2.0}}}}
    scorer, calibrated = scorer_from_config(config)
    assert calibrated and scorer.name == "energy" and scorer.threshold == -3.5 and scorer.temperature == 2.0
    assert scorer.flags(-3.5) and not scorer.flags(-3.6)
    scorer, _ = scorer_from_config(config, "msp", 0.25)
    assert scorer.name == "msp" and scorer.threshold == 0.25


def test_thresholds_for_rate_is_the_upper_quantile():
    scores = {"msp": list(np.linspace(0, 1, 101))}
    thr = thresholds_for_rate(scores, 0.05)["msp"]
    assert thr == pytest.approx(0.95)
    flagged = np.mean(np.asarray(scores["msp"]) >= thr)
    assert flagged == pytest.approx(6 / 101)  # 0.95 .. 1.00 inclusive
    with pytest.raises(SednaSamError):
        thresholds_for_rate(scores, 1.5)


def test_auroc_known_values():
    from sedna_sam.edge.scorers import auroc

    assert auroc([0.1, 0.2], [0.8, 0.9]) == 1.0
    assert auroc([0.8, 0.9], [0.1, 0.2]) == 0.0
    assert auroc([0.5, 0.5], [0.5]) == 0.5  # ties count half
    assert auroc([0.1, 0.4, 0.35, 0.8], [0.9, 0.3]) == pytest.approx(5 / 8)  # 0.9 beats 4 known, 0.3 beats 1
    rng = np.random.default_rng(1)
    known, unknown = rng.normal(0, 1, 300), rng.normal(1, 1, 200)
    pairs = (unknown[:, None] > known[None, :]).mean()
    assert auroc(known, unknown) == pytest.approx(pairs)


def mann_whitney_auroc(known, unknown) -> float:
    """The reference: every (unknown, known) pair compared, a win 1, a tie 0.5, divided by
    the number of pairs (the Mann-Whitney U statistic, written independently of ranks)."""
    total = 0.0
    for u in unknown:
        for k in known:
            total += 1.0 if u > k else 0.5 if u == k else 0.0
    return total / (len(known) * len(unknown))


@pytest.mark.parametrize("seed", range(8))
def test_auroc_equals_the_pairwise_count_on_random_and_tied_scores(seed):
    """auroc's rank formula (average ranks over ties) against the brute-force pair count:
    continuous scores, scores from a few levels (many ties within and across the groups),
    constant scores, and one-sample groups."""
    from sedna_sam.edge.scorers import auroc

    rng = np.random.default_rng(seed)
    n_known, n_unknown = int(rng.integers(1, 60)), int(rng.integers(1, 60))
    cases = [
        (rng.normal(0, 1, n_known), rng.normal(0.5, 1, n_unknown)),
        (rng.integers(0, 4, n_known).astype(float), rng.integers(1, 5, n_unknown).astype(float)),
        (np.round(rng.random(n_known), 1), np.round(rng.random(n_unknown), 1)),
        (np.full(n_known, 0.3), np.full(n_unknown, 0.3)),
        (rng.random(1), rng.random(n_unknown)),
    ]
    for known, unknown in cases:
        assert auroc(known, unknown) == pytest.approx(mann_whitney_auroc(known, unknown), abs=1e-12)
        assert auroc(list(known), list(unknown)) == pytest.approx(
            mann_whitney_auroc(known, unknown), abs=1e-12
        )


def test_auroc_refuses_an_empty_group():
    from sedna_sam.edge.scorers import auroc

    with pytest.raises(ValueError, match="at least one"):
        auroc([], [0.5])
    with pytest.raises(ValueError, match="at least one"):
        auroc([0.5], [])
