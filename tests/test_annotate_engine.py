"""Pre-annotation engine on real (tiny) checkpoint files: SSA documents, batches, resume
after a killed run, bad images, sharded workers, CLI and demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures_sam import write_scene_images
from test_annotate_voting import reference_ssa_vote

from sedna_sam.annotate.batch import annotate_dataset, annotate_images
from sedna_sam.annotate.engine import Annotator
from sedna_sam.errors import SednaSamError
from sedna_sam.formats.ssa import decode_rle, read_ssa
from sedna_sam.synthetic import make_street_scene, render_scene

SAM_KEYS = {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"}


@pytest.fixture(scope="module")
def annotator(tiny_annotate_options):
    return Annotator.from_options(tiny_annotate_options)


def test_one_image_gives_an_ssa_document_following_ssas_rule(annotator, labels):
    image = render_scene(make_street_scene(64, 128, seed=5), labels, seed=5)
    result = annotator.annotate(image)
    doc = result.document
    records = doc["annotations"]
    assert len(records) >= 3, "the test options should give several masks"
    areas = [r["area"] for r in records]
    assert areas == sorted(areas, reverse=True)
    for r in records:
        assert SAM_KEYS <= set(r)
        assert r["class_name"] in labels.names
        assert r["class_proposals"][0] == r["class_name"]
        assert isinstance(r["segmentation"]["counts"], str)
    # SSA's rule, recomputed the plain way from the same semantic map and masks.
    semantic = annotator.semantic.predict(image)
    masks = np.stack([decode_rle(r["segmentation"]) for r in records])
    votes, final = reference_ssa_vote(semantic, masks)
    assert [labels.id2label[int(v)] for v in votes] == [r["class_name"] for r in records]
    np.testing.assert_array_equal(result.class_map, final)
    # The JSON form carries the same map.
    assert set(doc["semantic_mask"]) == {str(int(c)) for c in np.unique(final)}
    for key, rle in doc["semantic_mask"].items():
        np.testing.assert_array_equal(decode_rle(rle), final == int(key))
    assert set(result.timings) >= {"encoder", "decoder", "semantic", "voting"}


def test_autocast_bf16_runs_the_whole_image_path(tiny_annotate_options, labels):
    """bf16 autocast (on CPU here; the same code path as on CUDA) still gives a valid
    document: SAM's generator gets fp32 decoder outputs back."""
    import dataclasses

    options = dataclasses.replace(tiny_annotate_options, autocast="bf16")
    image = render_scene(make_street_scene(64, 128, seed=6), labels, seed=6)
    result = Annotator.from_options(options).annotate(image)
    assert len(result.document["annotations"]) >= 3
    assert set(np.unique(result.class_map)) <= set(labels.ids)


def test_batch_outputs_read_back_and_rerun_skips(tiny_annotate_options, labels, tmp_path):
    images = write_scene_images(tmp_path / "raw", 3, labels)
    out = tmp_path / "ssa"
    report = annotate_images(images, out, tiny_annotate_options, save_img=True, progress=False)
    assert (report.done, report.skipped, report.failed) == (3, 0, [])
    for img in images:
        ssa = read_ssa(out / f"{img.stem}_semantic.json")
        assert ssa.class_map.shape == (64, 128)
        assert set(np.unique(ssa.class_map)) <= set(labels.ids)
        overlay = out / f"{img.stem}_semantic.png"
        from sedna_sam.images import read_image_rgb

        assert read_image_rgb(overlay).shape == (64, 128, 3)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    report = annotate_images(images, out, tiny_annotate_options, save_img=True, progress=False)
    assert (report.done, report.skipped) == (0, 3)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # A damaged output (not written by us: ours are atomic) is redone.
    (out / "scene_1_semantic.json").write_text('{"annotations": [', encoding="utf-8")
    report = annotate_images(images, out, tiny_annotate_options, save_img=True, progress=False)
    assert (report.done, report.skipped) == (1, 2)
    read_ssa(out / "scene_1_semantic.json")


def write_bad_images(directory: Path, labels) -> None:
    """Good, grayscale, RGBA and 16-bit images (all usable) plus corrupt and empty files."""
    import cv2

    directory.mkdir(parents=True, exist_ok=True)
    rgb = render_scene(make_street_scene(64, 128, seed=9), labels, seed=9)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(directory / "good.png"), bgr)
    cv2.imwrite(str(directory / "gray.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(directory / "rgba.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(directory / "deep16.png"), bgr.astype(np.uint16) * 257)
    (directory / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 20)
    (directory / "empty.png").write_bytes(b"")


def test_bad_images_are_reported_and_the_batch_goes_on(tiny_annotate_options, labels, tmp_path):
    write_bad_images(tmp_path / "raw", labels)
    report = annotate_dataset(tmp_path / "raw", tmp_path / "out", tiny_annotate_options, progress=False)
    assert report.done == 4
    failed = dict(report.failed)
    assert {Path(p).name for p in failed} == {"corrupt.jpg", "empty.png"}
    assert report.exit_code == 1
    assert "empty.png: file is empty" in report.summary()
    assert "corrupt.jpg: not a readable image" in report.summary()
    for stem in ("good", "gray", "rgba", "deep16"):
        read_ssa(tmp_path / "out" / f"{stem}_semantic.json")
    assert not list((tmp_path / "out").glob("corrupt*")) and not list((tmp_path / "out").glob("empty*"))


def test_duplicate_stems_fail_one_of_them(tiny_annotate_options, labels, tmp_path):
    images = write_scene_images(tmp_path / "raw", 1, labels)
    twin = tmp_path / "raw" / "scene_0.jpg"
    twin.write_bytes(images[0].read_bytes())
    report = annotate_dataset(tmp_path / "raw", tmp_path / "out", tiny_annotate_options, progress=False)
    assert report.done == 1 and len(report.failed) == 1
    assert "same output name" in report.failed[0][1]


def _cli_args(data_dir: Path, out_dir: Path, ckpt: Path, segformer: Path, *extra: str) -> list[str]:
    # Seed spellings (underscores) on purpose.
    return [
        "annotate",
        "--data_dir",
        str(data_dir),
        "--out_dir",
        str(out_dir),
        "--ckpt_path",
        str(ckpt),
        "--semantic-model",
        str(segformer),
        "--points-per-side",
        "2",
        "--pred-iou-thresh",
        "0",
        "--stability-score-thresh",
        "0",
        "--crop-n-layers",
        "0",
        "--box-nms-thresh",
        "1.0",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-progress",
        *extra,
    ]


@pytest.mark.slow
def test_resume_after_a_killed_run_leaves_no_partial_or_duplicate_outputs(
    tiny_sam_ckpt, tiny_segformer_dir, tiny_annotate_options, labels, tmp_path
):
    images = write_scene_images(tmp_path / "raw", 6, labels)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "sedna_sam",
        *_cli_args(tmp_path / "raw", out, tiny_sam_ckpt, tiny_segformer_dir, "--save_img"),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*_semantic.json")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no output within 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # mid-batch, no chance to clean up
    finally:
        proc.wait(timeout=30)
    finished = sorted(p.name for p in out.glob("*_semantic.json"))
    assert 1 <= len(finished) < 6, "the kill should land mid-batch"
    for name in finished:
        read_ssa(out / name)  # every JSON that exists is whole
    # What a kill during a write leaves behind: a temp file next to the output.
    (out / ".scene_5_semantic.json.x1y2.tmp").write_text('{"annotations": [{"seg', encoding="utf-8")

    report = annotate_images(images, out, tiny_annotate_options, save_img=True, progress=False)
    assert report.skipped == len(finished) and report.done == 6 - len(finished) and not report.failed
    names = sorted(p.name for p in out.iterdir())
    expected = sorted(
        [f"scene_{i}_semantic.json" for i in range(6)] + [f"scene_{i}_semantic.png" for i in range(6)]
    )
    assert names == expected  # no temp files, nothing twice
    for i in range(6):
        read_ssa(out / f"scene_{i}_semantic.json")


@pytest.mark.slow
def test_world_size_two_gives_the_same_outputs_as_one(tiny_annotate_options, labels, tmp_path):
    images = write_scene_images(tmp_path / "raw", 4, labels)
    one = annotate_images(images, tmp_path / "one", tiny_annotate_options, world_size=1, progress=False)
    two = annotate_images(images, tmp_path / "two", tiny_annotate_options, world_size=2, progress=False)
    assert one.done == two.done == 4 and not two.failed
    for img in images:
        name = f"{img.stem}_semantic.json"
        a = json.loads((tmp_path / "one" / name).read_text())
        b = json.loads((tmp_path / "two" / name).read_text())
        assert a == b, name


def test_cli_annotate_with_seed_spellings_and_dataset_dir(
    tiny_sam_ckpt, tiny_segformer_dir, labels, tmp_path, caplog
):
    from sedna_sam.cli import main

    write_bad_images(tmp_path / "D" / "raw_data", labels)
    args = _cli_args(
        tmp_path / "D" / "raw_data",
        tmp_path / "D" / "ssa_output",
        tiny_sam_ckpt,
        tiny_segformer_dir,
        "--save_img",
    )
    assert main(args) == 1  # two bad files
    assert "4 images done, 0 skipped, 2 failed" in caplog.text
    assert (tmp_path / "D" / "ssa_output" / "good_semantic.png").is_file()
    # --dataset-dir shortcut: same layout, everything already done
    args = _cli_args(tmp_path / "x", tmp_path / "y", tiny_sam_ckpt, tiny_segformer_dir, "--save_img")[5:]
    caplog.clear()
    assert main(["annotate", "--dataset-dir", str(tmp_path / "D"), *args]) == 1
    assert "0 images done, 4 skipped, 2 failed" in caplog.text


def test_cli_missing_semantic_model_explains(tiny_sam_ckpt, labels, tmp_path, caplog):
    from sedna_sam.cli import main

    write_scene_images(tmp_path / "raw", 1, labels)
    base = ["annotate", "--data-dir", str(tmp_path / "raw"), "--out-dir", str(tmp_path / "out")]
    assert main([*base, "--ckpt-path", str(tiny_sam_ckpt)]) == 2
    assert "--semantic-model is required" in caplog.text and "huggingface-cli download" in caplog.text


def test_demo_with_tiny_random_models_runs_the_chain(labels, tmp_path, capsys):
    from sedna_sam.cli import main

    write_scene_images(tmp_path / "images", 2, labels)
    work = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--out",
            str(work),
            "--images",
            str(tmp_path / "images"),
            "--tiny-random-models",
            "--points-per-side",
            "2",
            "--threads",
            "1",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "outputs are meaningless" in out
    for stem in ("scene_0", "scene_1"):
        read_ssa(work / "ssa_output" / f"{stem}_semantic.json")
        assert (work / "ls_data" / f"{stem}_semantic_poly_ls.json").is_file()
        assert (work / "train_ids" / f"{stem}_TrainIds.png").is_file()


def test_demo_without_models_stops_with_instructions(tmp_path, caplog):
    from sedna_sam.cli import main

    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    assert "sedna-sam models download vit_b --dir models" in caplog.text
    assert "--tiny-random-models" in caplog.text
    assert not (tmp_path / "demo").exists()


def test_labeler_options_parse_numbers_and_reject_garbage():
    from sedna_sam.commands.annotate import _key_values

    assert _key_values(["min_share=0.5", "k=3", "clip_model=models/clip"]) == {
        "min_share": 0.5,
        "k": 3,
        "clip_model": "models/clip",
    }
    with pytest.raises(SednaSamError, match="expected KEY=VALUE"):
        _key_values(["oops"])
