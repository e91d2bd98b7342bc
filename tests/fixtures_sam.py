"""SAM fixtures: a real tiny SAM checkpoint file (random weights, small image encoder) made
once per session and loaded through :func:`sedna_sam.models.load_sam`, like downloaded
weights; fast annotation options and small synthetic images for the annotate tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_sam_ckpt(tmp_path_factory) -> Path:
    from sedna_sam.models import build_tiny_sam

    return build_tiny_sam(tmp_path_factory.mktemp("sam") / "sam_tiny.pth")


@pytest.fixture(scope="session")
def random_sam(tiny_sam_ckpt):
    """The tiny random-weight SAM, loaded once (CPU)."""
    from sedna_sam.models import load_sam

    return load_sam(tiny_sam_ckpt, device="cpu")


@pytest.fixture(scope="session")
def street(labels):
    """A 96x192 synthetic street scene (RGB uint8)."""
    from sedna_sam.synthetic import make_street_scene, render_scene

    return render_scene(make_street_scene(96, 192, seed=3), labels, seed=3)


@pytest.fixture
def two_threads():
    """torch on 2 threads for the test (the CPU count CI and the benches assume)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def broken_compile(monkeypatch):
    """``torch.compile`` as where inductor cannot build (no C++ compiler, an unsupported op):
    the compiled function raises on its first call."""
    import torch

    def compile_that_fails(fn, **kwargs):
        def run(*args):
            raise RuntimeError("InductorError: CppCompileError: no working C++ compiler")

        return run

    monkeypatch.setattr(torch, "compile", compile_that_fails)


@pytest.fixture(scope="session")
def tiny_annotate_options(tiny_sam_ckpt, tiny_segformer_dir, labels):
    """AnnotateOptions for 64x128 images in about a second each on one CPU thread.

    A random-weight SAM scores its masks low and they overlap, so the filters are opened
    (thresholds 0, box NMS 1.0): 2x2 prompts then give about a dozen masks of varied sizes.
    """
    from sedna_sam.annotate.engine import AnnotateOptions
    from sedna_sam.annotate.sam import sam_params

    params = sam_params(
        "cityscapes",
        points_per_side=2,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        crop_n_layers=0,
        min_mask_region_area=20,
        box_nms_thresh=1.0,
    )
    return AnnotateOptions(
        str(tiny_sam_ckpt), str(tiny_segformer_dir), labels, sam=params, device="cpu", num_threads=1
    )


def write_scene_images(
    directory: Path, count: int, labels, h: int = 64, w: int = 128, start: int = 0
) -> list[Path]:
    """``count`` synthetic street scenes as PNGs named scene_<i>.png."""
    from sedna_sam.images import write_png
    from sedna_sam.synthetic import make_street_scene, render_scene

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        image = render_scene(make_street_scene(h, w, seed=i), labels, seed=i)
        paths.append(write_png(directory / f"scene_{i}.png", np.ascontiguousarray(image)))
    return paths
