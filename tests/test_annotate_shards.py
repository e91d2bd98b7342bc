"""Dataset-wide pre-annotation as an Indexed Job's shards: the real CLI in separate
processes with ``JOB_COMPLETION_INDEX`` set as Kubernetes sets it, tiny random-weight
checkpoints, real files; outputs to a directory and to an S3 server (moto over HTTP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_sam import write_scene_images

from sedna_sam.annotate import shards
from sedna_sam.errors import SednaSamError
from sedna_sam.formats.ssa import read_ssa


def cli_args(data: str, out: str, ckpt: Path, segformer: Path, *extra: str) -> list[str]:
    return [
        "annotate", "--data-dir", data, "--out-dir", out, "--ckpt-path", str(ckpt),
        "--semantic-model", str(segformer), "--points-per-side", "2", "--pred-iou-thresh", "0",
        "--stability-score-thresh", "0", "--crop-n-layers", "0", "--box-nms-thresh", "1.0",
        "--device", "cpu", "--threads", "1", "--no-progress", *extra,
    ]  # fmt: skip


def run_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sedna_sam", *args],
        env={**os.environ, "LOG_LEVEL": "INFO", **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def outputs(directory: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(directory.glob("*_semantic.json"))}


def test_assignment_is_stable_and_spread():
    names = [f"frame_{i:06d}.png" for i in range(4000)]
    assignment = {n: shards.shard_of(n, 4) for n in names}
    # A fixed value: the hash is SHA-256, the same in every process and Python version.
    assert (
        shards.shard_of("frame_000000.png", 4)
        == int.from_bytes(__import__("hashlib").sha256(b"frame_000000.png").digest()[:8], "big") % 4
    )
    sizes = [sum(1 for s in assignment.values() if s == k) for k in range(4)]
    assert min(sizes) > 900 and max(sizes) < 1100, sizes
    # More images later: the earlier ones keep their shard.
    more = names + [f"new_{i}.png" for i in range(100)]
    assert all(shards.shard_of(n, 4) == assignment[n] for n in more[:4000])


def test_shard_from_flags_and_the_indexed_jobs_env():
    assert shards.shard_from(None, None, {}) is None
    assert shards.shard_from(1, 4, {}) == shards.Shard(1, 4)
    env = {shards.INDEX_ENV: "3", shards.COUNT_ENV: "8"}
    assert shards.shard_from(None, None, env) == shards.Shard(3, 8)
    assert shards.shard_from(0, None, env) == shards.Shard(0, 8)  # the flag wins
    with pytest.raises(SednaSamError, match="--shard-count"):
        shards.shard_from(None, None, {shards.INDEX_ENV: "2"})
    with pytest.raises(SednaSamError, match="0 <= index < count"):
        shards.shard_from(4, 4, {})
    with pytest.raises(SednaSamError, match="not an integer"):
        shards.shard_from(None, None, {shards.INDEX_ENV: "x", shards.COUNT_ENV: "2"})


@pytest.mark.slow
def test_four_shards_as_an_indexed_job_equal_one_run_and_only_new_images_are_done_later(
    tiny_sam_ckpt, tiny_segformer_dir, labels, tmp_path
):
    raw = tmp_path / "raw"
    write_scene_images(raw, 6, labels)
    one, four = tmp_path / "one", tmp_path / "four"

    single = run_cli(cli_args(str(raw), str(one), tiny_sam_ckpt, tiny_segformer_dir))
    assert single.returncode == 0, single.stderr
    # Four pods of an Indexed Job: JOB_COMPLETION_INDEX from Kubernetes, the count from the manifest.
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sedna_sam",
                *cli_args(str(raw), str(four), tiny_sam_ckpt, tiny_segformer_dir),
            ],
            env={**os.environ, shards.INDEX_ENV: str(i), shards.COUNT_ENV: "4"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    for proc in procs:
        assert proc.wait(600) == 0, proc.stderr.read()
    assert outputs(one) == outputs(four) and len(outputs(one)) == 6
    reports = {p.name: json.loads(p.read_text()) for p in (four / ".shards").glob("shard-*.json")}
    assert sorted(reports) == [f"shard-{i:05d}-of-00004.json" for i in range(4)]
    assert sum(r["done"] for r in reports.values()) == 6
    for r in reports.values():  # each shard did exactly the images its hash gives it
        owned = [p.name for p in raw.iterdir() if shards.shard_of(p.name, 4) == r["shard"]]
        assert r["owned"] == r["done"] == len(owned) and r["failed"] == {}

    # Images added later (one of them broken): a rerun of every shard does only those.
    for path in write_scene_images(tmp_path / "later", 2, labels, start=100):
        path.rename(raw / path.name.replace("scene_", "later_"))
    (raw / "broken.png").write_bytes(b"not a png")
    before = {p.name: p.stat().st_mtime_ns for p in four.glob("*_semantic.json")}
    for i in range(4):
        run_cli(cli_args(str(raw), str(four), tiny_sam_ckpt, tiny_segformer_dir, "--shard-index", str(i)),
                {shards.COUNT_ENV: "4"})  # fmt: skip
    after = {p.name: p.stat().st_mtime_ns for p in four.glob("*_semantic.json")}
    assert {k: after[k] for k in before} == before  # finished outputs untouched
    assert sorted(set(after) - set(before)) == ["later_100_semantic.json", "later_101_semantic.json"]
    reports = {
        json.loads(p.read_text())["shard"]: json.loads(p.read_text())
        for p in (four / ".shards").glob("shard-*")
    }
    assert sum(r["done"] for r in reports.values()) == 2 and sum(r["skipped"] for r in reports.values()) == 6
    broken_shard = shards.shard_of("broken.png", 4)
    assert list(reports[broken_shard]["failed"]) == ["broken.png"]

    # The merge: done, failed (with its shard's message), missing (a shard that never ran).
    (raw / "orphan.png").write_bytes((raw / "later_100.png").read_bytes())
    merged = run_cli(["annotate", "--merge-report", "--data-dir", str(raw), "--out-dir", str(four),
                      "--shard-count", "4"])  # fmt: skip
    assert merged.returncode == 1, merged.stderr
    assert "10 images over 4 shards: 8 done, 1 failed, 1 missing; 4 of 4 shards reported" in merged.stdout
    assert f"FAILED broken.png: shard {broken_shard}:" in merged.stdout
    assert f"MISSING orphan.png (shard {shards.shard_of('orphan.png', 4)})" in merged.stdout
    body = json.loads((four / ".shards" / "merged-of-00004.json").read_text())
    assert body["done"] == 8 and list(body["missing"]) == ["orphan.png"]


def test_outputs_to_s3_and_input_from_s3_resume_there(
    tiny_sam_ckpt, tiny_segformer_dir, labels, tmp_path, local_s3
):
    """An Indexed Job's pods on a bucket: images read from s3://, results uploaded as each
    is done (JSON last), a rerun skips what the bucket has, the merge reads the bucket."""
    from sedna_sam.cli import main
    from sedna_sam.storage import url_filesystem

    raw = tmp_path / "raw"
    images = write_scene_images(raw, 3, labels)
    fs, _ = url_filesystem("s3://edge-store/data")
    for img in images:
        fs.put_file(str(img), f"edge-store/data/raw_data/{img.name}")
    data_url, out_url = "s3://edge-store/data/raw_data", "s3://edge-store/data/ssa_output"
    for i in range(2):
        assert main(cli_args(data_url, out_url, tiny_sam_ckpt, tiny_segformer_dir, "--shard-index", str(i),
                             "--shard-count", "2", "--staging-dir", str(tmp_path))) == 0  # fmt: skip
    listed = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("edge-store/data/ssa_output"))
    assert listed == [".shards"] + [f"{img.stem}_semantic.json" for img in images]
    local = tmp_path / "check"
    local.mkdir()
    for img in images:
        fs.get_file(f"edge-store/data/ssa_output/{img.stem}_semantic.json", str(local / "x.json"))
        assert read_ssa(local / "x.json").class_map.shape == (64, 128)
    assert not [p for p in tmp_path.glob("sedna-sam-shard-*")]  # staging cleaned up
    # A rerun finds everything done in the bucket; the merge agrees.
    assert main(cli_args(data_url, out_url, tiny_sam_ckpt, tiny_segformer_dir, "--shard-index", "0",
                         "--shard-count", "2")) == 0  # fmt: skip
    report = json.loads(fs.cat_file("edge-store/data/ssa_output/.shards/shard-00000-of-00002.json"))
    assert report["done"] == 0 and report["skipped"] == report["owned"]
    merged = shards.merge_reports(data_url, out_url, 2)
    assert (len(merged.done), merged.failed, merged.missing, merged.exit_code) == (3, {}, {}, 0)


def test_a_symlink_loop_among_the_images_is_reported_not_skipped(
    tiny_sam_ckpt, tiny_segformer_dir, labels, tmp_path, caplog
):
    from sedna_sam.cli import main

    raw = tmp_path / "raw"
    write_scene_images(raw, 1, labels)
    (raw / "loop.png").symlink_to("loop.png")
    (raw / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert main(cli_args(str(raw), str(tmp_path / "out"), tiny_sam_ckpt, tiny_segformer_dir)) == 1
    assert "1 images done, 0 skipped, 2 failed" in caplog.text
    assert f"FAILED {raw}/loop.png: not a readable file" in caplog.text
    assert f"FAILED {raw}/gone.jpg: not a readable file" in caplog.text
