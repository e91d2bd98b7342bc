"""IoU math on crafted maps against a hand computation, and the deploy gate's decisions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sedna_sam.lifelong.evaluate import EvalMetrics, confusion_matrix, iou_per_class, mean_iou
from sedna_sam.lifelong.gate import GatePolicy, decide, write_decision


def test_confusion_and_iou_match_a_hand_computation():
    # 3 classes; class 2 never appears; 255 pixels are ignored whatever is predicted there.
    target = np.array(
        [
            [0, 0, 0, 1],
            [0, 0, 1, 1],
            [255, 255, 1, 1],
        ],
        np.uint16,
    )
    pred = np.array(
        [
            [0, 0, 1, 1],
            [0, 2, 1, 1],
            [2, 2, 0, 1],
        ]
    )
    cm = confusion_matrix(pred, target, 3)
    # rows = truth: class 0 has 5 px -> 3 right, 1 as class 1, 1 as class 2;
    # class 1 has 5 px -> 4 right, 1 as class 0.
    assert cm.tolist() == [[3, 1, 1], [1, 4, 0], [0, 0, 0]]
    # IoU0 = 3 / (5 + 4 - 3) = 3/6; IoU1 = 4 / (5 + 5 - 4) = 4/6; IoU2 = 0 / (0 + 1 - 0) = 0
    np.testing.assert_allclose(iou_per_class(cm), [0.5, 4 / 6, 0.0])
    assert mean_iou(cm) == pytest.approx((0.5 + 4 / 6 + 0.0) / 3)


def test_classes_absent_from_both_maps_are_left_out_of_the_mean():
    target = np.array([[0, 0], [1, 1]])
    pred = np.array([[0, 0], [1, 0]])
    cm = confusion_matrix(pred, target, 19)
    iou = iou_per_class(cm)
    assert iou[0] == pytest.approx(2 / 3) and iou[1] == pytest.approx(1 / 2)
    assert np.isnan(iou[2:]).all()
    assert mean_iou(cm) == pytest.approx((2 / 3 + 1 / 2) / 2)
    m = EvalMetrics(cm, [str(i) for i in range(19)], samples=1)
    js = m.to_json()
    assert js["per_class_iou"]["2"] is None and js["mIoU"] == pytest.approx(7 / 12, abs=1e-6)
    assert js["pixel_accuracy"] == pytest.approx(3 / 4)
    json.dumps(js)  # no NaN in the JSON


def test_confusion_accumulates_over_images_and_rejects_bad_input():
    a = confusion_matrix(np.array([[1]]), np.array([[1]]), 2)
    b = confusion_matrix(np.array([[0]]), np.array([[1]]), 2)
    assert (a + b).tolist() == [[0, 0], [1, 1]]
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([[5]]), np.array([[0]]), 2)
    assert confusion_matrix(np.array([[0]]), np.array([[255]]), 2).sum() == 0


@pytest.mark.parametrize(
    ("numbers", "policy", "accept", "why"),
    [
        ((0.30, 0.40, 0.60, 0.59), GatePolicy(max_old_drop=0.02), True, "within"),
        ((0.30, 0.40, 0.60, 0.55), GatePolicy(max_old_drop=0.02), False, "fell by 0.0500"),
        ((0.30, 0.30, 0.60, 0.65), GatePolicy(), False, "not more than"),
        ((0.30, 0.31, 0.60, 0.60), GatePolicy(min_new_gain=0.05), False, "not more than"),
        ((0.30, 0.40, None, None), GatePolicy(), False, "backward transfer unknown"),
        ((0.30, 0.40, None, None), GatePolicy(require_old=False), True, "not checked"),
        ((None, 0.40, 0.6, 0.6), GatePolicy(), False, "not measured for both"),
        ((0.30, float("nan"), 0.6, 0.6), GatePolicy(), False, "not measured for both"),
    ],
)
def test_gate_decisions(numbers, policy, accept, why):
    d = decide(*numbers, policy)
    assert d.accept is accept
    assert any(why in r for r in d.reasons), d.reasons


def test_gate_reports_gain_and_backward_transfer(tmp_path):
    d = decide(0.2, 0.5, 0.7, 0.69, GatePolicy(max_old_drop=0.05))
    assert d.new_gain == pytest.approx(0.3) and d.backward_transfer == pytest.approx(-0.01)
    path = write_decision(tmp_path / "gate.json", d, candidate="m2")
    js = json.loads(path.read_text())
    assert js["decision"] == "accept" and js["candidate"] == "m2" and js["policy"]["max_old_drop"] == 0.05


def test_one_iou_definition_for_label_maps_and_confusion_matrices():
    """geometry.mean_iou (the converters' check) and evaluation's confusion-matrix mIoU are
    the same number on the same maps, and both say NaN when there is nothing to score."""
    from sedna_sam.geometry import mean_iou as maps_miou

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, (40, 60))
    truth[:5] = 255
    pred = np.where(rng.random((40, 60)) < 0.8, truth % 255, rng.integers(0, 5, (40, 60)))
    pred[truth == 255] = 3
    assert maps_miou(pred, truth) == pytest.approx(mean_iou(confusion_matrix(pred, truth, 5)))
    assert maps_miou(truth, truth) == 1.0
    empty = np.full((4, 4), 255)
    assert np.isnan(maps_miou(empty, empty)) and np.isnan(mean_iou(np.zeros((5, 5), np.int64)))
