"""How SAM runs: modes resolved from flags and measurements, registries, the mode in every
SSA file, the semantic model overlapped with SAM (the CUDA path, run here on CPU)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sedna_sam.annotate import modes
from sedna_sam.annotate.modes import ResolvedMode, SamMode, prompts_per_image, resolve_mode
from sedna_sam.errors import SednaSamError


@pytest.fixture(scope="module")
def sam(tiny_sam_ckpt):
    from sedna_sam.models import load_sam

    return load_sam(tiny_sam_ckpt, device="cpu")


def test_prompts_per_image_counts_every_crop_layer():
    assert prompts_per_image(64, 1, 2) == 64 * 64 + 4 * 32 * 32  # SSA's defaults: 8192
    assert prompts_per_image(32, 0, 1) == 1024
    assert prompts_per_image(2, 0, 1) == 4


def test_flags_resolve_without_measuring(sam):
    mode = resolve_mode(sam, SamMode(backend="eager", precision="fp32"), 64, prompts=8192)
    assert mode == ResolvedMode("eager", "fp32", "fp32", 64, 1, "flags") and mode.exact
    # --autocast sets both precisions unless they are given.
    mode = resolve_mode(sam, SamMode(backend="compiled", encoder_precision="fp32"), 32, autocast="bf16")
    assert (mode.backend, mode.precision, mode.encoder_precision, mode.decoder_batch) == (
        "compiled",
        "bf16",
        "fp32",
        32,
    )
    assert not mode.exact


def test_unknown_names_and_unsupported_combinations_fail_with_the_choices(sam):
    with pytest.raises(
        SednaSamError,
        match="choose one of: compiled, compiled-factored, eager, factored, onnx, onnx-factored",
    ):
        resolve_mode(sam, SamMode(backend="tensorrt", precision="fp32"), 64)
    with pytest.raises(SednaSamError, match="fp16 is not available on cpu"):
        resolve_mode(sam, SamMode(backend="eager", precision="fp16"), 64)
    from sedna_sam.annotate.backends import make_backend
    from sedna_sam.annotate.precision import precision

    with pytest.raises(SednaSamError, match="onnx does not support bf16"):
        make_backend("onnx", sam, precision("bf16"), 8)


def test_auto_on_a_small_workload_is_eager_without_measuring(sam, monkeypatch):
    monkeypatch.setattr(modes, "measure_backend", lambda *a, **k: pytest.fail("measured"))
    mode = resolve_mode(sam, SamMode(), 64, prompts=4)
    assert (mode.backend, mode.precision, mode.chosen_by) == ("eager", "fp32", "small workload")


def test_auto_measures_once_per_machine_and_keeps_the_choice(sam, monkeypatch, tmp_path):
    monkeypatch.setenv("SEDNA_SAM_MODEL_CACHE", str(tmp_path))
    speed = {"eager": 3.0, "compiled": 1.5, "onnx": 2.0, "factored": 2.5, "compiled-factored": 2.2}
    speed["onnx-factored"] = 2.1
    calls = []

    def fake_measure(sam, name, prec, batch, repeats=3):
        calls.append((name, prec, batch))
        return speed[name]

    monkeypatch.setattr(modes, "measure_backend", fake_measure)
    mode = resolve_mode(sam, SamMode(backend="auto"), 64, prompts=8192)
    assert (mode.backend, mode.precision, mode.chosen_by) == ("compiled", "fp32", "measured")
    assert sorted(calls) == [(name, "fp32", 64) for name in sorted(speed)]
    kept = json.loads((tmp_path / "sam-modes.json").read_text())
    (entry,) = kept.values()
    assert entry["backend"] == "compiled" and entry["seconds_per_batch"]["onnx/fp32"] == 2.0
    calls.clear()
    again = resolve_mode(sam, SamMode(backend="auto"), 64, prompts=8192)
    assert (again.backend, again.chosen_by, calls) == ("compiled", "cached measurement", [])
    # Another batch size is another measurement; a backend that cannot run is skipped.
    speed["compiled"] = None
    other = resolve_mode(sam, SamMode(backend="auto"), 32, prompts=8192)
    assert other.backend == "onnx" and other.decoder_batch == 32


def test_auto_precision_may_choose_bf16(sam, monkeypatch, tmp_path):
    monkeypatch.setenv("SEDNA_SAM_MODEL_CACHE", str(tmp_path))
    monkeypatch.setattr(
        modes, "measure_backend", lambda sam, name, prec, batch, repeats=3: 1.0 if prec == "bf16" else 2.0
    )
    mode = resolve_mode(sam, SamMode(backend="eager", precision="auto"), 64, prompts=8192)
    assert (mode.backend, mode.precision) == ("eager", "bf16")


def test_measure_backend_times_a_real_batch(sam):
    seconds = modes.measure_backend(sam, "eager", "fp32", 2, repeats=1)
    assert 0 < seconds < 60


def test_every_ssa_file_names_the_mode_and_overlap_gives_the_same_document(
    tiny_annotate_options, labels, tmp_path
):
    from fixtures_sam import write_scene_images

    from sedna_sam.annotate.batch import annotate_images
    from sedna_sam.annotate.engine import Annotator
    from sedna_sam.images import read_image_rgb

    images = write_scene_images(tmp_path / "raw", 1, labels)
    annotate_images(images, tmp_path / "out", tiny_annotate_options, progress=False)
    doc = json.loads((tmp_path / "out" / "scene_0_semantic.json").read_text())
    assert doc["metadata"]["sam_mode"] == {
        "backend": "eager",
        "precision": "fp32",
        "encoder_precision": "fp32",
        "decoder_batch": 64,
        "encoder_batch": 1,
        "chosen_by": "small workload",
        "exact": True,
    }
    image = read_image_rgb(images[0])
    plain = Annotator.from_options(tiny_annotate_options).annotate(image)
    overlapped = Annotator.from_options(dataclasses.replace(tiny_annotate_options, overlap=True))
    assert overlapped.overlap
    result = overlapped.annotate(image)
    assert json.dumps(result.document) == json.dumps(plain.document)
    assert (result.class_map == plain.class_map).all()


def test_cli_flags_reach_the_options(tiny_sam_ckpt, tiny_segformer_dir, labels, tmp_path):
    import argparse

    from sedna_sam.commands import annotate as cmd

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cmd.register(sub)
    args = parser.parse_args(
        [
            "annotate",
            "--data-dir",
            str(tmp_path),
            "--out-dir",
            str(tmp_path / "o"),
            "--ckpt-path",
            str(tiny_sam_ckpt),
            "--semantic-model",
            str(tiny_segformer_dir),
            "--sam-backend",
            "onnx",
            "--sam-encoder-precision",
            "bf16",
            "--sam-decoder-batch",
            "32",
            "--overlap",
        ]
    )
    options = cmd.options_from_args(args, labels)
    assert options.sam_mode == SamMode(backend="onnx", encoder_precision="bf16", decoder_batch=32)
    assert options.overlap is True
    args = parser.parse_args(["annotate", "--ckpt-path", "x"])
    assert cmd.options_from_args(args, labels).sam_mode == SamMode(backend="auto")


def test_cli_backend_choices_are_the_registrys_and_help_needs_no_torch():
    import subprocess
    import sys

    from sedna_sam.annotate.backends import DECODER_BACKENDS
    from sedna_sam.commands.annotate import SAM_BACKEND_CHOICES

    assert list(SAM_BACKEND_CHOICES) == ["auto", *DECODER_BACKENDS.names()]
    code = "import sys; from sedna_sam.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
