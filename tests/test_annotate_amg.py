"""Our mask generation against segment-anything's own ``SamAutomaticMaskGenerator``.

Exact mode (eager decoder, fp32): the records must equal the stock generator's, field for
field, in the same order and with the same Python types, on the same checkpoint file and
image, with crops and small-region removal on:

- on a SAM whose logits come from a known scene (tests/fixtures_scene_sam.py), with
  thresholds, NMS, crop-edge filtering and small-region removal all acting (asserted);
- on a random-weight tiny SAM (the real decoder weights path end to end).

Decoder pieces are checked bit for bit, RLEs against segment-anything's encoder, and the
other precisions/backends by matched-mask IoU against the exact mode.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from fixtures_scene_sam import scene_image

from sedna_sam.annotate import decoder as dec
from sedna_sam.annotate.amg import MaskGenerator
from sedna_sam.annotate.backends import make_backend
from sedna_sam.annotate.precision import precision
from sedna_sam.annotate.rle import box_mask_rles, crop_to_boxes

# Crops (layer 1, 4 crops), a short last batch (64 = 24 + 24 + 16), every filter on.
SCENE_PARAMS = dict(
    points_per_side=8,
    points_per_batch=24,
    pred_iou_thresh=0.5,
    stability_score_thresh=0.85,
    box_nms_thresh=0.7,
    crop_n_layers=1,
    crop_n_points_downscale_factor=2,
    min_mask_region_area=20,
)


def stock_records(sam, image, **params):
    from segment_anything import SamAutomaticMaskGenerator

    return SamAutomaticMaskGenerator(sam, output_mode="coco_rle", **params).generate(image)


def our_generator(sam, backend="eager", prec="fp32", encoder="fp32", **params) -> MaskGenerator:
    batch = params.get("points_per_batch", 64)
    return MaskGenerator(
        sam, make_backend(backend, sam, precision(prec), batch), precision(encoder), **params
    )


def assert_same_records(ours: list[dict], stock: list[dict]) -> None:
    """Equal values, types (float vs int boxes, str counts) and order: the same JSON text,
    record by record (JSON also compares NaN stability scores of empty masks as equal)."""
    assert len(ours) == len(stock)
    for i, (a, b) in enumerate(zip(ours, stock)):
        differ = [k for k in b if json.dumps(a.get(k)) != json.dumps(b[k])]
        assert not differ and set(a) == set(b), f"record {i} differs in {differ}"


pytestmark = pytest.mark.usefixtures("two_threads")


def test_exact_mode_equals_stock_on_a_structured_scene(scene_sam):
    image = scene_image(96, 192, seed=0)
    stock = stock_records(scene_sam, image, **SCENE_PARAMS)
    gen = our_generator(scene_sam, **SCENE_PARAMS)
    ours = gen.generate(image)
    assert_same_records(ours, stock)
    c = gen.counts
    # Every step removed something, so the comparison covers them all.
    assert c["candidates"] > c["iou"] > c["stability"] > c["edge"] > c["box_nms"] > c["crop_nms"] >= len(ours)
    assert c["small_changed"] > 0 and len(ours) >= 10
    assert len({tuple(r["crop_box"]) for r in ours}) >= 3, "masks from several crops"
    assert any(r["area"] < 100 for r in ours) and any(r["area"] > 2000 for r in ours)


def test_exact_mode_equals_stock_without_filters_and_crops(scene_sam):
    """Thresholds 0 (their ``> 0`` branches off), no crops, no small-region step, one batch."""
    params = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.8)
    image = scene_image(80, 120, seed=4)
    stock = stock_records(scene_sam, image, **params)
    assert len(stock) >= 5
    assert_same_records(our_generator(scene_sam, **params).generate(image), stock)


def test_exact_mode_equals_stock_with_random_weights(tiny_sam_ckpt, labels):
    from sedna_sam.models import load_sam
    from sedna_sam.synthetic import make_street_scene, render_scene

    sam = load_sam(tiny_sam_ckpt, device="cpu")
    image = render_scene(make_street_scene(64, 128, seed=2), labels, seed=2)
    params = dict(
        points_per_side=3,
        points_per_batch=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        min_mask_region_area=20,
    )
    stock = stock_records(sam, image, **params)
    assert len(stock) >= 10
    assert_same_records(our_generator(sam, **params).generate(image), stock)


def test_no_masks_gives_no_records_where_stock_crashes(scene_sam):
    """A crop with nothing left makes the stock generator index an empty 1-D tensor when
    every crop is empty; ours returns no records."""
    params = dict(SCENE_PARAMS, points_per_side=4, pred_iou_thresh=0.9999)
    assert our_generator(scene_sam, **params).generate(scene_image(64, 96, seed=1)) == []


def test_decoder_prefix_and_region_are_bitwise_the_stock_decoder(tiny_sam_ckpt):
    from sedna_sam.models import load_sam

    sam = load_sam(tiny_sam_ckpt, device="cpu")
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(1, 256, 64, 64, generator=gen)
    points = torch.rand(24, 2, generator=gen, dtype=torch.float64) * torch.tensor([1024.0, 512.0]).double()
    with torch.inference_mode():
        sparse = dec.point_sparse(sam, points.numpy())
        for b in (24, 7, 1):
            ref_masks, ref_iou = dec.stock_reference(sam, features, sparse[:b])
            prefix = dec.image_prefix(sam, features)
            iou, hyper, keys = dec.decode_tokens(sam, prefix, sparse[:b])
            assert torch.equal(iou, ref_iou[:, 1:])
            region = dec.embed_region((512, 1024))
            assert region == (33, 64)
            low = dec.decode_masks(sam, keys, hyper, region)
            assert torch.equal(low, ref_masks[:, 1:, : 4 * region[0], : 4 * region[1]])


@pytest.mark.parametrize("size", [(512, 1024), (1024, 683), (1024, 1024), (37, 1024)])
def test_region_covers_what_the_upsampling_reads(size):
    """Low-res rows past the region never reach the image: the valid-region upsampling
    equals ``Sam.postprocess_masks`` on random logits."""
    from segment_anything.modeling import Sam

    from sedna_sam.annotate.amg import upsample_valid

    rows, cols = dec.embed_region(size)
    low = torch.randn(3, 1, 256, 256, generator=torch.Generator().manual_seed(1))
    out_size = (size[0] // 2 + 1, size[1] // 2 + 1)

    class Frame:
        image_encoder = type("E", (), {"img_size": 1024})()

    ref = Sam.postprocess_masks(Frame(), low, size, out_size)[:, 0]
    got = upsample_valid(low[:, 0, : 4 * rows, : 4 * cols], size, out_size)
    assert torch.equal(got, ref)


def test_box_mask_rles_equal_segment_anythings_rles():
    from segment_anything.utils.amg import batched_mask_to_box, mask_to_rle_pytorch

    rng = np.random.default_rng(0)
    h, w = 37, 23
    masks = []
    for k in range(120):
        m = np.zeros((h, w), bool)
        kind = k % 6
        if kind == 0:
            m[:] = rng.random((h, w)) < 0.5
        elif kind == 1:
            y0, y1 = sorted(rng.integers(0, h, 2))
            x0, x1 = sorted(rng.integers(0, w, 2))
            m[y0 : y1 + 1, x0 : x1 + 1] = rng.random((y1 - y0 + 1, x1 - x0 + 1)) < 0.8
        elif kind == 2:
            m[:, 3:9] = True  # full-height columns: runs continue into the next column
        elif kind == 4:
            m[:] = True
        elif kind == 5:
            m[int(rng.integers(0, h)), int(rng.integers(0, w))] = True
            m[-1, -1] = True
        masks.append(m)  # kind 3: empty
    t = torch.as_tensor(np.stack(masks))
    boxes = batched_mask_to_box(t)
    # In place, and as a crop inside a larger image.
    assert box_mask_rles(crop_to_boxes(t, boxes, 0, 0, (h, w))) == mask_to_rle_pytorch(t)
    big = torch.zeros((len(masks), 80, 60), dtype=torch.bool)
    big[:, 10 : 10 + h, 20 : 20 + w] = t
    boxed = crop_to_boxes(t, boxes, 10, 20, (80, 60))
    assert box_mask_rles(boxed) == mask_to_rle_pytorch(big)
    assert [b.box() for b in boxed] == batched_mask_to_box(big).tolist()


def matched_ious(ours: list[dict], ref: list[dict]) -> np.ndarray:
    """For each reference mask, the best IoU with any of ours."""
    from pycocotools import mask as mask_utils

    def rles(records):
        return [dict(r["segmentation"], counts=r["segmentation"]["counts"].encode()) for r in records]

    if not ref:
        return np.ones(0)
    iou = (
        np.asarray(mask_utils.iou(rles(ref), rles(ours), [0] * len(ours)))
        if ours
        else np.zeros((len(ref), 1))
    )
    return iou.max(1)


# Open filters on a random-weight SAM: one record per (prompt, mask token), whatever the
# numbers, so the comparison sees every mask the decoder made.
OPEN_PARAMS = dict(
    points_per_side=4,
    points_per_batch=16,
    pred_iou_thresh=0.0,
    stability_score_thresh=0.0,
    box_nms_thresh=1.0,
)


@pytest.fixture(scope="module")
def exact_open(random_sam, street):
    return our_generator(random_sam, **OPEN_PARAMS).generate(street)


@pytest.mark.parametrize("prec,encoder", [("bf16", "fp32"), ("fp32", "bf16"), ("bf16", "bf16")])
def test_bf16_masks_match_the_exact_mode(random_sam, street, exact_open, prec, encoder):
    """bf16 autocast (CPU here, the same code on CUDA): same number of masks, and each exact
    mask has a bf16 one of IoU >= 0.98 at the 1st percentile (random weights give masks
    with long noisy outlines, the worst case for precision; see README)."""
    got = our_generator(random_sam, prec=prec, encoder=encoder, **OPEN_PARAMS).generate(street)
    assert len(got) == len(exact_open) == 48
    ious = matched_ious(got, exact_open)
    assert np.percentile(ious, 1) >= 0.98, np.sort(ious)[:5]
    assert np.median(ious) >= 0.99


def test_onnx_backend_matches_and_its_export_is_cached(random_sam, street, exact_open, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from sedna_sam.annotate import backends

    monkeypatch.setenv("SEDNA_SAM_MODEL_CACHE", str(tmp_path))
    first = make_backend("onnx", random_sam, precision("fp32"), 16)
    assert first.warmup_seconds > 0
    exported = sorted(p.name for p in (tmp_path / "sam-decoder").glob("*.onnx"))
    assert len(exported) == 2
    mtimes = [p.stat().st_mtime_ns for p in (tmp_path / "sam-decoder").glob("*.onnx")]
    again, masks, seconds = backends.export_onnx(random_sam, 16)
    assert (
        seconds == 0.0 and [p.stat().st_mtime_ns for p in (tmp_path / "sam-decoder").glob("*.onnx")] == mtimes
    )
    gen = MaskGenerator(random_sam, first, precision("fp32"), **OPEN_PARAMS)
    got = gen.generate(street)
    assert len(got) == len(exact_open)
    assert np.percentile(matched_ious(got, exact_open), 1) >= 0.999
    assert max(abs(a["predicted_iou"] - b["predicted_iou"]) for a, b in zip(got, exact_open)) < 1e-4


def test_compiled_backend_falls_back_to_eager_when_compilation_fails(
    random_sam, street, exact_open, broken_compile, caplog
):
    """What happens where inductor cannot build (no C++ compiler, unsupported op): one log
    line, then eager, with the exact mode's records; the metadata names the fallback."""
    from sedna_sam.annotate.modes import ResolvedMode

    backend = make_backend("compiled", random_sam, precision("fp32"), 16)
    with caplog.at_level(logging.WARNING):
        got = MaskGenerator(random_sam, backend, precision("fp32"), **OPEN_PARAMS).generate(street)
    assert backend.fallback and backend.effective == "eager" and backend.exact
    assert sum("torch.compile of the SAM decoder failed" in r.message for r in caplog.records) == 1
    assert_same_records(got, exact_open)
    meta = ResolvedMode("compiled", "fp32", "fp32", 16, 1).metadata(backend)
    assert meta["backend"] == "eager" and "compiled failed" in meta["fallback"] and meta["exact"]


def test_crops_batched_through_the_encoder_give_the_same_records(scene_sam):
    """The CUDA path (all crops in one encoder call) on CPU: the scene encoder is per image,
    so the records are the one-crop-at-a-time records."""
    image = scene_image(96, 192, seed=0)
    params = dict(SCENE_PARAMS, points_per_side=4)
    one = our_generator(scene_sam, **params).generate(image)
    together = MaskGenerator(
        scene_sam,
        make_backend("eager", scene_sam, precision("fp32"), 24),
        precision("fp32"),
        encoder_batch=5,
        **params,
    ).generate(image)
    assert len(one) >= 3 and len({tuple(r["crop_box"]) for r in one}) >= 2
    assert_same_records(together, one)


def test_batched_encoder_features_match_on_a_real_encoder(random_sam, street):
    gen = our_generator(random_sam, **OPEN_PARAMS)
    crops = [street, street[:64, :100], street[30:, 90:]]
    one = gen.encode(crops)
    gen.encoder_batch = 3
    together = gen.encode(crops)
    for (a, size_a), (b, size_b) in zip(one, together):
        assert size_a == size_b
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
