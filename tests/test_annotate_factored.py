"""The factored decoder (sedna_sam/annotate/factored.py): the stock decoder's function with
the image-side projections moved onto the prompt tokens. Same numbers up to float rounding,
checked piece by piece against segment-anything's own decoder call, then as records of
every backend that runs it against the exact mode's."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from test_annotate_amg import OPEN_PARAMS, SCENE_PARAMS, matched_ious, our_generator

from sedna_sam.annotate import decoder as dec
from sedna_sam.annotate import factored as fac
from sedna_sam.annotate.amg import MaskGenerator
from sedna_sam.annotate.backends import make_backend
from sedna_sam.annotate.precision import precision

pytestmark = pytest.mark.usefixtures("two_threads")


@pytest.fixture(scope="module")
def exact_open(random_sam, street):
    return our_generator(random_sam, **OPEN_PARAMS).generate(street)


def assert_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Equal up to fp32 rounding of sums in another order: relative to the tensor's scale."""
    assert got.shape == want.shape, what
    scale = float(want.abs().max())
    err = float((got - want).abs().max())
    assert err <= 1e-4 * scale + 1e-6, f"{what}: max error {err:.3g} at scale {scale:.3g}"


@pytest.mark.parametrize("batch", [24, 7, 1])
def test_factored_decoder_equals_the_stock_decoder_up_to_rounding(random_sam, batch):
    """IoU scores, mask tokens, image tokens and low-res logits of every mask token, against
    ``MaskDecoder.predict_masks`` itself (which copies the embedding per prompt)."""
    sam = random_sam
    gen = torch.Generator().manual_seed(batch)
    features = torch.randn(1, 256, 64, 64, generator=gen)
    points = torch.rand(batch, 2, generator=gen, dtype=torch.float64) * torch.tensor([1024.0, 512.0]).double()
    with torch.inference_mode():
        sparse = dec.point_sparse(sam, points.numpy())
        ref_masks, ref_iou = dec.stock_reference(sam, features, sparse)
        prefix = dec.image_prefix(sam, features)
        iou, hyper, keys = fac.decode_tokens(sam, prefix, sparse, multimask=False)
        assert_close(iou, ref_iou, "iou")
        for region in [(33, 64), (64, 64), (3, 64)]:
            low = fac.decode_masks(sam, keys, hyper, region)
            assert_close(low, ref_masks[:, :, : 4 * region[0], : 4 * region[1]], f"masks {region}")
        # and against our exact path's pieces, which equal the stock ones bit for bit
        _, hyper_exact, keys_exact = dec.decode_tokens(sam, prefix, sparse, multimask=False)
        assert_close(hyper, hyper_exact, "hyper_in")
        assert_close(keys, keys_exact, "keys")


def test_factored_masks_are_the_stock_upscaling_on_any_input(random_sam):
    """The channels-last upscaling alone, on random image tokens and hypernetwork outputs
    of SAM's magnitude: the stock decoder's ConvTranspose/LayerNorm2d/GELU numbers."""
    gen = torch.Generator().manual_seed(5)
    keys = torch.randn(4, 4096, 256, generator=gen)
    hyper = torch.randn(4, 3, 32, generator=gen) * 30
    with torch.inference_mode():
        for region in [(33, 64), (41, 64), (64, 17)]:
            want = dec.decode_masks(random_sam, keys, hyper, region)
            assert_close(fac.decode_masks(random_sam, keys, hyper, region), want, f"region {region}")


def test_factored_records_match_the_exact_mode(random_sam, street, exact_open):
    gen = our_generator(random_sam, backend="factored", **OPEN_PARAMS)
    assert not gen.backend.exact and gen.backend.effective == "factored"
    got = gen.generate(street)
    assert len(got) == len(exact_open) == 48
    assert np.percentile(matched_ious(got, exact_open), 1) >= 0.999
    assert max(abs(a["predicted_iou"] - b["predicted_iou"]) for a, b in zip(got, exact_open)) < 1e-4


def test_factored_on_a_structured_scene_keeps_the_same_masks(scene_sam):
    """Thresholds, both NMS steps, crops and small regions acting: as many records as the
    exact mode, masks matched at IoU >= 0.999. (This SAM's scores hash the transformer's
    output bits, so rounding may reorder records of equal masks: order is not compared.)"""
    from fixtures_scene_sam import scene_image

    image = scene_image(96, 128, seed=0)
    exact = our_generator(scene_sam, **SCENE_PARAMS).generate(image)
    got = our_generator(scene_sam, backend="factored", **SCENE_PARAMS).generate(image)
    assert len(exact) > 3 and len(got) == len(exact)
    assert np.percentile(matched_ious(got, exact), 1) >= 0.999


def test_onnx_factored_matches_and_is_exported_apart_from_the_stock_graph(
    random_sam, street, exact_open, tmp_path, monkeypatch
):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("SEDNA_SAM_MODEL_CACHE", str(tmp_path))
    backend = make_backend("onnx-factored", random_sam, precision("fp32"), 16)
    names = sorted(p.name for p in (tmp_path / "sam-decoder").glob("*.onnx"))
    assert len(names) == 2 and all("-factored-" in n for n in names), names
    got = MaskGenerator(random_sam, backend, precision("fp32"), **OPEN_PARAMS).generate(street)
    assert len(got) == len(exact_open)
    assert np.percentile(matched_ious(got, exact_open), 1) >= 0.999


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="no C++ compiler for inductor")
def test_compiled_factored_matches_the_exact_mode(random_sam, street, exact_open, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    gen = our_generator(random_sam, backend="compiled-factored", **OPEN_PARAMS)
    gen.warmup(street.shape[:2])
    assert gen.backend.fallback is None, gen.backend.fallback
    got = gen.generate(street)
    assert len(got) == len(exact_open)
    assert np.percentile(matched_ious(got, exact_open), 1) >= 0.999


def test_compiled_factored_falls_back_to_the_factored_eager_decoder(
    random_sam, street, exact_open, broken_compile, caplog
):
    backend = make_backend("compiled-factored", random_sam, precision("fp32"), 16)
    with caplog.at_level(logging.WARNING):
        got = MaskGenerator(random_sam, backend, precision("fp32"), **OPEN_PARAMS).generate(street)
    assert backend.fallback and backend.effective == "factored" and not backend.exact
    assert len(got) == len(exact_open)
    assert np.percentile(matched_ious(got, exact_open), 1) >= 0.999
