"""The edge worker end to end with a real saved tiny Segformer: results, scores, flagged
samples with metadata, reruns, bad frames, video, frame-rate cap, hot reload, calibration, CLI."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from sedna_sam.edge.buffer import SampleBuffer
from sedna_sam.edge.calibrate import calibrate, read_edge_config
from sedna_sam.edge.model import model_version, resolve_model_dir
from sedna_sam.edge.scorers import SCORERS
from sedna_sam.edge.worker import EdgeWorker, WorkerSettings
from sedna_sam.errors import SednaSamError
from sedna_sam.images import read_image_rgb, read_label_png
from sedna_sam.segformer import load_segformer, save_segformer, tiny_segformer


@pytest.fixture
def model_dir(tmp_path, tiny_segformer_dir) -> Path:
    """A private copy (calibration and hot reload write into the model directory)."""
    return Path(shutil.copytree(tiny_segformer_dir, tmp_path / "model"))


def settings(tmp_path, model_dir, source, **kw) -> WorkerSettings:
    return WorkerSettings(
        model=str(model_dir),
        source=str(source),
        result_dir=tmp_path / "results",
        unseen_dir=tmp_path / "unseen",
        node="edge-node-1",
        device="cpu",
        **kw,
    )


def msp_scores(model_dir, paths) -> dict[str, float]:
    model = load_segformer(model_dir, "cpu")
    msp = SCORERS.create("msp")
    return {p.stem: msp.score(model.logits([read_image_rgb(p)])[0]) for p in paths}


def test_worker_end_to_end_on_a_directory(tmp_path, model_dir, edge_frames):
    frames = edge_frames(tmp_path / "frames", 4, unknown_from=2)
    scores = msp_scores(model_dir, frames)
    ordered = sorted(scores.values())
    assert len(set(ordered)) == 4
    threshold = (ordered[1] + ordered[2]) / 2  # the two highest-scoring frames are corner cases
    s = settings(
        tmp_path,
        model_dir,
        tmp_path / "frames",
        threshold=threshold,
        overlay=True,
        timing_log=tmp_path / "t.jsonl",
    )
    report = EdgeWorker(s).run()
    assert report.done == 4 and report.exit_code == 0 and report.notes["flagged"] == 2

    model = load_segformer(model_dir, "cpu")
    for p in frames:
        ids = read_label_png(tmp_path / "results" / f"{p.stem}_TrainIds.png")
        assert ids.dtype == np.uint16 and ids.shape == (64, 128)
        assert (ids == model.predict_ids(read_image_rgb(p))).mean() > 0.99  # same model, same maths
        assert read_image_rgb(tmp_path / "results" / f"{p.stem}_overlay.png").shape == (64, 128, 3)

    samples = SampleBuffer(tmp_path / "unseen").samples()
    expected = {stem for stem, v in scores.items() if v >= threshold}
    assert {s.meta["source"].rsplit("/", 1)[1][:-4] for s in samples} == expected
    version = model_version(model_dir)
    for sample in samples:
        meta = sample.meta
        original = Path(meta["source"]).read_bytes()
        assert sample.image_path.read_bytes() == original  # the frame exactly as captured
        assert meta["sha256"] == hashlib.sha256(original).hexdigest() and meta["size"] == len(original)
        assert meta["score"] == pytest.approx(scores[Path(meta["source"]).stem], rel=1e-5)
        assert (meta["scorer"], meta["threshold"], meta["node"]) == ("msp", threshold, "edge-node-1")
        assert meta["model_version"] == version and meta["frame_time"].endswith("+00:00")
    timing = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(timing) == 4 and all(t["infer_ms"] > 0 and t["score_ms"] >= 0 for t in timing)

    # a rerun skips frames whose results exist; a new bad file fails alone
    (tmp_path / "frames" / "broken.png").write_bytes(b"not a png")
    edge_frames(tmp_path / "frames", 1, seed0=50)
    report = EdgeWorker(s).run()
    assert report.done == 1 and len(report.failed) == 1 and "broken.png" in report.failed[0][0]
    assert report.exit_code == 1


def test_frame_rate_cap_and_video_source(tmp_path, model_dir, edge_frames):
    import cv2

    frames = edge_frames(tmp_path / "frames", 5)
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 64))
    for p in frames:
        writer.write(read_image_rgb(p)[:, :, ::-1].copy())
    writer.release()
    s = settings(tmp_path, model_dir, video, threshold=0.0, every=2, max_fps=20)
    t0 = time.monotonic()
    report = EdgeWorker(s).run()
    elapsed = time.monotonic() - t0
    assert report.done == 3  # frames 0, 2, 4
    assert elapsed >= 2 / 20  # three frames at most 20 per second
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [
        f"clip_f{i:06d}_TrainIds.png" for i in (0, 2, 4)
    ]
    assert all(s.image_path.suffix == ".png" for s in SampleBuffer(tmp_path / "unseen").samples())


def test_hot_reload_picks_up_a_new_model_and_survives_a_broken_one(tmp_path, model_dir, edge_frames, labels):
    edge_frames(tmp_path / "frames", 1)
    worker = EdgeWorker(settings(tmp_path, model_dir, tmp_path / "frames", threshold=0.0, poll_s=0.0))
    worker.run()
    v1 = model_version(model_dir)
    assert worker.models.current.version == v1

    save_segformer(tiny_segformer(labels, seed=7), model_dir, (128, 256))  # the trainer deploys a new model
    v2 = model_version(model_dir)
    assert v2 != v1
    edge_frames(tmp_path / "frames", 1, seed0=10)
    report = worker.run()
    assert worker.models.reloads == 1 and report.notes["model reloads"] == 1
    versions = {s.meta["model_version"] for s in SampleBuffer(tmp_path / "unseen").samples()}
    assert versions == {v1, v2}

    (model_dir / "config.json").write_text("{ half-copied")
    edge_frames(tmp_path / "frames", 1, seed0=20)
    report = worker.run()
    assert report.done == 1 and worker.models.current.version == v2  # old model kept serving


def test_calibrate_sets_thresholds_the_worker_uses(tmp_path, model_dir, edge_frames):
    frames = edge_frames(tmp_path / "known", 8)
    config, report = calibrate(
        model_dir, tmp_path / "known", target_rate=0.25, scorer="entropy", device="cpu"
    )
    assert report.done == 8
    on_disk = read_edge_config(model_dir)
    assert on_disk == json.loads(json.dumps(config)) and on_disk["scorer"] == "entropy"
    assert set(on_disk["scorers"]) == set(SCORERS.names())
    msp = np.array(list(msp_scores(model_dir, frames).values()))
    assert on_disk["scorers"]["msp"]["threshold"] == pytest.approx(np.quantile(msp, 0.75), rel=1e-6)
    assert on_disk["scorers"]["msp"]["flag_rate_on_known"] == pytest.approx(
        (msp >= np.quantile(msp, 0.75)).mean()
    )
    worker = EdgeWorker(settings(tmp_path, model_dir, tmp_path / "known"))
    current = worker.models.current
    assert current.calibrated and current.scorer.name == "entropy"
    assert current.scorer.threshold == on_disk["scorers"]["entropy"]["threshold"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SednaSamError, match="no images"):
        calibrate(model_dir, tmp_path / "empty")


def test_model_spec_forms(tmp_path, model_dir):
    from sedna_sam.model_files import is_model_archive, pack_model

    assert resolve_model_dir(str(model_dir)) == model_dir
    assert resolve_model_dir(f"file://{model_dir}/config.json") == model_dir
    assert resolve_model_dir(f"{model_dir};/elsewhere") == model_dir
    # one file: unpacked once into the cache, same content -> same directory
    archive = pack_model(model_dir, tmp_path / "deploy" / "seg.model", {"note.txt": b"hello"})
    assert is_model_archive(archive) and not is_model_archive(model_dir / "config.json")
    unpacked = resolve_model_dir(str(archive))
    assert unpacked != model_dir and model_version(unpacked) == model_version(model_dir)
    assert resolve_model_dir(f"file://{archive}") == unpacked
    with pytest.raises(SednaSamError, match="no config.json"):
        resolve_model_dir(str(tmp_path))
    with pytest.raises(SednaSamError, match="model not found"):
        resolve_model_dir(str(tmp_path / "missing"))
    (tmp_path / "deploy" / "index.pkl").write_bytes(b"\x80\x04N.")  # a pickle, but of None
    with pytest.raises(SednaSamError, match="index"):
        resolve_model_dir(str(tmp_path / "deploy" / "index.pkl"))
    (tmp_path / "junk.bin").write_bytes(b"junk")
    with pytest.raises(SednaSamError, match="neither a model directory"):
        resolve_model_dir(str(tmp_path / "junk.bin"))


def edge_cli(argv: list[str]) -> int:
    from sedna_sam.commands import edge

    parser = argparse.ArgumentParser(prog="sedna-sam")
    edge.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_run_from_sedna_env_then_ship(tmp_path, model_dir, edge_frames, monkeypatch, capsys):
    edge_frames(tmp_path / "frames", 3)
    store = tmp_path / "store"
    store.mkdir()  # a store root is never created by the shipper (a volume that did not mount)
    monkeypatch.setenv("MODEL_URLS", str(model_dir))
    monkeypatch.setenv("INFERENCE_RESULT_DIR", str(tmp_path / "res"))
    monkeypatch.setenv("unseen_save_url", str(tmp_path / "unseen"))
    monkeypatch.setenv("NODE_NAME", "edge-7")
    assert (
        edge_cli(["edge", "run", "--source", str(tmp_path / "frames"), "--threshold", "0", "--device", "cpu"])
        == 0
    )
    assert len(list((tmp_path / "res").glob("*_TrainIds.png"))) == 3
    assert len(SampleBuffer(tmp_path / "unseen").samples()) == 3
    assert "3 frames done" in capsys.readouterr().out

    monkeypatch.setenv("SEDNA_SAM_STORE", f"file://{store}")
    assert edge_cli(["edge", "ship"]) == 0
    assert len(list((store / "flagged" / "edge-7").glob("*.json"))) == 3
    assert SampleBuffer(tmp_path / "unseen").samples() == []

    # run with the shipper thread: frames flagged and shipped in one command
    edge_frames(tmp_path / "frames", 2, seed0=30)
    assert (
        edge_cli(["edge", "run", "--source", str(tmp_path / "frames"), "--threshold", "0", "--device", "cpu"])
        == 0
    )
    assert len(list((store / "flagged" / "edge-7").glob("*.json"))) == 5

    assert edge_cli(["edge", "calibrate", "--data", str(tmp_path / "frames"), "--target-rate", "0.2"]) == 0
    assert "msp" in read_edge_config(model_dir)["scorers"]


def test_watch_mode_processes_files_that_arrive_later(tmp_path, model_dir, edge_frames):
    import threading

    edge_frames(tmp_path / "frames", 1)
    worker = EdgeWorker(settings(tmp_path, model_dir, tmp_path / "frames", threshold=0.0, watch=True))
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, kwargs={"stop": stop})
    thread.start()
    try:
        edge_frames(tmp_path / "frames", 2, seed0=40)  # a camera drops new files in
        deadline = time.time() + 30
        while len(list((tmp_path / "results").glob("*_TrainIds.png"))) < 3 and time.time() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert len(list((tmp_path / "results").glob("*_TrainIds.png"))) == 3
    assert len(SampleBuffer(tmp_path / "unseen").samples()) == 3


def test_cli_ship_gives_up_on_an_unreachable_store(tmp_path, edge_sample, capsys):
    buf = SampleBuffer(tmp_path / "unseen")
    edge_sample(buf, "a", 0.5)
    (tmp_path / "not-a-dir").write_text("x")
    argv = [
        "edge",
        "ship",
        "--unseen-dir",
        str(tmp_path / "unseen"),
        "--store",
        str(tmp_path / "not-a-dir" / "store"),
    ]
    assert edge_cli([*argv, "--node", "n", "--backoff", "0.05", "--give-up-after", "0.3"]) == 1
    assert "1 left in the buffer" in capsys.readouterr().out and len(buf.samples()) == 1


def test_redeployed_model_without_config_keeps_the_calibrated_threshold(
    tmp_path, model_dir, edge_frames, labels
):
    edge_frames(tmp_path / "known", 4)
    calibrate(model_dir, tmp_path / "known", target_rate=0.25, device="cpu")
    calibrated = read_edge_config(model_dir)["scorers"]["msp"]["threshold"]
    worker = EdgeWorker(settings(tmp_path, model_dir, tmp_path / "known", poll_s=0.0))
    assert worker.models.current.scorer.threshold == calibrated
    new_dir = tmp_path / "new-model"
    save_segformer(tiny_segformer(labels, seed=3), new_dir, (128, 256))
    shutil.rmtree(model_dir)
    shutil.move(new_dir, model_dir)  # replaced as a whole, no sedna_sam_edge.json
    assert worker.models.maybe_reload()
    current = worker.models.current
    assert current.version == model_version(model_dir) and current.scorer.threshold == calibrated
    assert current.inherited and not current.calibrated


def test_model_spec_in_s3(tmp_path, model_dir, local_s3, monkeypatch):
    """MODEL_URLS in S3 (Sedna with an S3 outputDir): fetched once into the model cache with
    the S3_ENDPOINT_URL and keys Sedna gives the pod, then unpacked like a local archive."""
    import boto3

    from sedna_sam.model_files import pack_model

    monkeypatch.setenv("SEDNA_SAM_MODEL_CACHE", str(tmp_path / "cache"))
    archive = pack_model(model_dir, tmp_path / "seg.model")
    local_s3.create_bucket("models")
    s3 = boto3.client(
        "s3",
        endpoint_url=local_s3.endpoint,
        aws_access_key_id="test-key",
        aws_secret_access_key="test-secret",
    )
    s3.upload_file(str(archive), "models", "lifelong/train/1/seen_task/seg.model")
    unpacked = resolve_model_dir("s3://models/lifelong/train/1/seen_task/seg.model")
    assert model_version(unpacked) == model_version(model_dir)
    assert (tmp_path / "cache").is_dir() and unpacked.is_relative_to(tmp_path / "cache")
    with pytest.raises(SednaSamError, match="cannot fetch"):
        resolve_model_dir("s3://models/lifelong/missing.model")
