"""SSA voting against a plain reference, RLE parsing, labelers and semantic backends."""

from __future__ import annotations

import numpy as np
import pytest

from sedna_sam.annotate.labelers import LABELERS, SemanticEvidence, VotingLabeler, make_labeler, top_k_names
from sedna_sam.annotate.semantic import SEMANTIC_BACKENDS, _mmseg_missing, id_mapping
from sedna_sam.annotate.voting import MaskSet, class_counts_and_owner, rle_indices, ssa_vote
from sedna_sam.errors import SednaSamError
from sedna_sam.formats.ssa import encode_rle
from sedna_sam.labels import LabelSet
from sedna_sam.segformer import upsampled_argmax


def reference_ssa_vote(class_ids: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SSA's rule written the plain way: masks in the given (largest-first) order, each
    votes on the ORIGINAL semantic map with np.bincount, then overwrites the output."""
    out = class_ids.copy()
    votes = []
    for mask in masks:
        inside = class_ids[mask]
        if inside.size == 0:
            votes.append(-1)
            continue
        winner = int(np.bincount(inside).argmax())
        votes.append(winner)
        out[mask] = winner
    return np.array(votes, dtype=np.int64), out


def random_case(rng, h, w, n, num_classes):
    """Blob-like masks (random rectangles and random pixel noise) sorted largest first,
    plus a semantic map with patches so votes are not uniform noise."""
    masks = np.zeros((n, h, w), dtype=bool)
    for k in range(n):
        if rng.random() < 0.5:
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            masks[k, y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = True
        else:
            masks[k] = rng.random((h, w)) < rng.random()
    if n:
        masks[rng.random(n) < 0.1] = False  # some empty masks
        masks = masks[np.argsort(-masks.reshape(n, -1).sum(1), kind="stable")]
    coarse = rng.integers(0, num_classes, (max(1, h // 4), max(1, w // 4)))
    ids = np.kron(coarse, np.ones((4, 4), dtype=np.int64))[:h, :w]
    ids = np.pad(ids, ((0, h - ids.shape[0]), (0, w - ids.shape[1])), mode="edge")
    return masks, ids


@pytest.mark.parametrize("seed", range(6))
def test_vote_equals_reference_on_random_masks(seed):
    rng = np.random.default_rng(seed)
    for _ in range(15):
        h, w = rng.integers(1, 70, size=2)
        n = int(rng.integers(0, 25))
        masks, ids = random_case(rng, int(h), int(w), n, num_classes=int(rng.integers(1, 20)))
        want_votes, want_map = reference_ssa_vote(ids, masks)
        for mask_set in (
            MaskSet.from_dense(masks),
            MaskSet.from_rles([encode_rle(m) for m in masks], (h, w)),
        ):
            votes, final = ssa_vote(ids, mask_set)
            np.testing.assert_array_equal(votes, want_votes)
            np.testing.assert_array_equal(final, want_map)


def test_vote_on_a_cityscapes_sized_image_matches_reference():
    rng = np.random.default_rng(7)
    masks, ids = random_case(rng, 256, 512, 40, num_classes=19)
    rles = [encode_rle(m) for m in masks]
    want_votes, want_map = reference_ssa_vote(ids, masks)
    votes, final = ssa_vote(ids, MaskSet.from_rles(rles, (256, 512)))
    np.testing.assert_array_equal(votes, want_votes)
    np.testing.assert_array_equal(final, want_map)


def test_ties_go_to_the_smallest_class_id_and_smaller_masks_win_overlaps():
    ids = np.array([[3, 3, 1, 1]])
    big = np.array([[True, True, True, True]])
    small = np.array([[False, False, True, False]])
    votes, final = ssa_vote(ids, MaskSet.from_dense(np.stack([big, small])))
    assert votes.tolist() == [1, 1]  # 2 x class 1 vs 2 x class 3: argmax picks 1
    assert final.tolist() == [[1, 1, 1, 1]]
    ids = np.array([[5, 5, 2, 7]])
    votes, final = ssa_vote(ids, MaskSet.from_dense(np.stack([big, small])))
    assert votes.tolist() == [5, 2]
    assert final.tolist() == [[5, 5, 2, 5]]


def test_rle_indices_match_dense_masks_including_list_counts():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(3)
    shapes = [(1, 1), (7, 3), (40, 90), (300, 17)]
    for h, w in shapes:
        for fill in (0.0, 0.02, 0.5, 1.0):
            mask = rng.random((h, w)) < fill
            want = np.flatnonzero(mask.T)  # column-major, COCO's pixel order
            rle = encode_rle(mask)
            np.testing.assert_array_equal(rle_indices(rle), want)
            raw = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            # uncompressed list counts, as some SSA files carry
            runs = []
            flat = mask.T.ravel()
            value, count = False, 0
            for px in flat:
                if px == value:
                    count += 1
                else:
                    runs.append(count)
                    value, count = px, 1
            runs.append(count)
            assert raw["size"] == [h, w]
            np.testing.assert_array_equal(rle_indices({"size": [h, w], "counts": runs}), want)


def test_maskset_decode_all_round_trips():
    rng = np.random.default_rng(1)
    masks = rng.random((5, 13, 29)) < 0.3
    mask_set = MaskSet.from_rles([encode_rle(m) for m in masks], (13, 29))
    np.testing.assert_array_equal(mask_set.decode_all(), masks)
    assert len(mask_set) == 5


def test_mismatched_sizes_and_bad_ids_are_errors():
    masks = MaskSet.from_dense(np.ones((1, 4, 4), dtype=bool))
    with pytest.raises(ValueError, match="differ in size"):
        class_counts_and_owner(np.zeros((4, 5), dtype=np.int64), masks)
    with pytest.raises(ValueError, match="class ids"):
        class_counts_and_owner(np.full((4, 4), 300), masks)


# --- labelers -----------------------------------------------------------------------------


def test_voting_labeler_gives_class_and_proposals(labels):
    ids = np.zeros((4, 6), dtype=np.int64)
    ids[:, 3:] = 13  # car
    ids[0, 0] = 11  # person: a minority vote
    masks = np.zeros((2, 4, 6), dtype=bool)
    masks[0] = True
    masks[1, :, 4:] = True
    mask_set = MaskSet.from_dense(masks)
    counts, owner = class_counts_and_owner(ids, mask_set)
    result = VotingLabeler(labels)(
        np.zeros((4, 6, 3), np.uint8), mask_set, SemanticEvidence(ids, counts, owner)
    )
    assert result.class_ids.tolist() == [13, 13]
    assert result.proposals[0] == ["car", "road", "person"]
    assert result.proposals[1] == ["car"]


def test_top_k_names_skip_ids_outside_the_config():
    tiny = LabelSet({0: "road", 1: "car"}, {})
    counts = np.zeros((1, 256), dtype=np.int64)
    counts[0, 255] = 10
    counts[0, 1] = 3
    assert top_k_names(counts, tiny) == [["car"]]


def test_labeler_registry_names_and_unknown(labels):
    assert {"segformer", "vote"} <= set(LABELERS.names())
    assert isinstance(make_labeler("segformer", labels), VotingLabeler)
    with pytest.raises(SednaSamError, match="choose one of"):
        make_labeler("no-such-labeler", labels)


# --- semantic backends --------------------------------------------------------------------


def test_id_mapping_by_name_and_mismatch(labels):
    table = id_mapping({0: "Car", 1: "road", 2: "unicorn"}, labels)
    assert table.tolist() == [13, 0, 255]
    with pytest.raises(SednaSamError, match="none of its 2 class names"):
        id_mapping({0: "wall clock", 1: "sofa"}, labels)


def test_chunked_upsampled_argmax_equals_full_argmax():
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    logits = torch.randn(1, 150, 8, 12)
    logits[0, 40] = logits[0, 7]  # exact ties across chunks keep the smaller id
    full = F.interpolate(logits, size=(33, 47), mode="bilinear", align_corners=False)[0].argmax(0)
    chunked = upsampled_argmax(logits, (33, 47), chunk=32)
    assert torch.equal(full, chunked)


def test_segformer_backend_outputs_config_ids(tiny_segformer_dir, labels):
    backend = SEMANTIC_BACKENDS.create(
        "segformer", model=str(tiny_segformer_dir), labels=labels, device="cpu"
    )
    image = (np.random.default_rng(0).random((40, 72, 3)) * 255).astype(np.uint8)
    ids = backend.predict(image)
    assert ids.shape == (40, 72) and ids.dtype == np.int64
    assert set(np.unique(ids)) <= set(labels.ids)
    # Same numbers as the shared Segformer loader's own prediction (identity mapping here).
    np.testing.assert_array_equal(ids, backend.segformer.predict_ids(image))


def test_mmseg_backend_unavailable_says_why(labels):
    why = _mmseg_missing()
    if why is None:
        pytest.skip(
            "mmsegmentation + full mmcv import here: the backend would load; no tiny mmseg model to test with"
        )
    with pytest.raises(SednaSamError, match="unavailable.*import"):
        SEMANTIC_BACKENDS.create("mmseg", model="cfg.py::ckpt.pth", labels=labels)
