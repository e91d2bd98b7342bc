"""The ``compiled`` decoder backend for real: torch.compile with inductor on this CPU (needs
a C++ compiler; gcc here). Compilation happens once per shape (warm-up, timed), and its
records match the exact mode's."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from test_annotate_amg import OPEN_PARAMS, matched_ious, our_generator

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (shutil.which("g++") or shutil.which("c++")), reason="no C++ compiler for inductor"
    ),
]


def test_compiled_fp32_matches_the_exact_mode(tiny_sam_ckpt, labels, tmp_path, monkeypatch):
    from sedna_sam.models import load_sam
    from sedna_sam.synthetic import make_street_scene, render_scene

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch.set_num_threads(2)
    sam = load_sam(tiny_sam_ckpt, device="cpu")
    image = render_scene(make_street_scene(96, 192, seed=3), labels, seed=3)
    params = dict(OPEN_PARAMS, points_per_side=2, points_per_batch=4)
    exact = our_generator(sam, **params).generate(image)
    gen = our_generator(sam, backend="compiled", **params)
    warm = gen.warmup(image.shape[:2])
    assert gen.backend.fallback is None, gen.backend.fallback
    assert warm > 0 and gen.backend.warmup_seconds > 0
    got = gen.generate(image)
    compiled_once = gen.backend.warmup_seconds
    gen.generate(image)
    assert gen.backend.warmup_seconds == compiled_once  # no recompilation for the next image
    assert len(got) == len(exact) == 12
    assert np.percentile(matched_ious(got, exact), 1) >= 0.999
    assert max(abs(a["predicted_iou"] - b["predicted_iou"]) for a, b in zip(got, exact)) < 1e-4
