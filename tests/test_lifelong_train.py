"""Training with replay, resuming a killed run, the two-domain sequence, the workers' env."""

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

from sedna_sam.lifelong import data as ds
from sedna_sam.lifelong.estimator import SegformerEstimator
from sedna_sam.lifelong.eval_worker import EvalOptions, run_eval_worker
from sedna_sam.lifelong.evaluate import evaluate_model
from sedna_sam.lifelong.gate import GatePolicy, decide
from sedna_sam.lifelong.train import CHECKPOINT_NAME, TrainConfig, train_segformer
from sedna_sam.lifelong.train_worker import TrainOptions, plan_training

# Small but real: enough steps at a high learning rate for a tiny model to learn the
# scenes' big regions in well under a minute on two shared cores.
LR = 1e-3


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: on two cores shared with other jobs, two threads spin-wait on
    each other and a step takes ~40x longer (1.6 s instead of 0.04 s here)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _weights(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_stopped_run_resumes_to_the_same_weights(two_domains, tmp_path):
    new = ds.read_index(two_domains.b_train)
    replay = ds.read_index(two_domains.a_train)
    config = TrainConfig(steps=6, batch_size=2, lr=LR, checkpoint_every=2)
    straight = train_segformer(
        two_domains.base_model, new, replay, tmp_path / "straight", config, "cpu", progress=False
    )

    out = tmp_path / "resumed"
    part = train_segformer(
        two_domains.base_model, new, replay, out, config, "cpu", progress=False, stop_after=3
    )
    assert part.steps == 3 and (out / "checkpoints" / CHECKPOINT_NAME).is_file()
    assert not (out / "model").exists(), "a stopped run must not publish a model"
    resumed = train_segformer(two_domains.base_model, new, replay, out, config, "cpu", progress=False)
    assert resumed.resumed_from == 3 and resumed.steps == 6
    assert len(resumed.losses) == 6
    np.testing.assert_allclose(resumed.losses[:3], part.losses, rtol=1e-6)
    a, b = _weights(straight.model_dir), _weights(resumed.model_dir)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert not (out / "checkpoints" / CHECKPOINT_NAME).exists()  # finished rounds leave no checkpoint
    # a rerun of a finished round does nothing
    again = train_segformer(two_domains.base_model, new, replay, out, config, "cpu", progress=False)
    assert again.seconds == 0.0 and again.model_dir == resumed.model_dir
    # the knowledge index lists what this model learned from: next round's replay pool
    knowledge = ds.read_index(out / "knowledge_index.txt")
    assert {s.image for s in knowledge} == {s.image for s in new + replay}


def test_checkpoint_of_another_run_is_not_resumed(two_domains, tmp_path, caplog):
    new = ds.read_index(two_domains.b_train)
    config = TrainConfig(steps=4, batch_size=2, lr=LR, checkpoint_every=1)
    train_segformer(two_domains.base_model, new, [], tmp_path, config, "cpu", progress=False, stop_after=2)
    other = TrainConfig(steps=4, batch_size=2, lr=LR / 2, checkpoint_every=1)
    result = train_segformer(two_domains.base_model, new, [], tmp_path, other, "cpu", progress=False)
    assert result.resumed_from == 0
    assert "different run" in caplog.text


@pytest.mark.slow
def test_killed_train_worker_resumes_from_its_checkpoint(two_domains, tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "TRAIN_DATASET_URL": str(two_domains.b_train),
        "OUTPUT_URL": str(out),
        "BASE_MODEL_URL": str(two_domains.base_model),
        "TRAIN_STEPS": "30",
        "OMP_NUM_THREADS": "1",
        "BATCH_SIZE": "2",
        "LEARNING_RATE": str(LR),
    }
    cmd = [
        sys.executable,
        "-m",
        "sedna_sam",
        "train",
        "--device",
        "cpu",
        "--checkpoint-every",
        "2",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpt = out / "checkpoints" / CHECKPOINT_NAME
    deadline = time.monotonic() + 180
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the worker was killed before its first checkpoint"
    import torch

    killed_at = torch.load(ckpt, weights_only=False)["step"]
    assert 0 < killed_at < 30
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"at step {killed_at}/30" in done.stderr
    report = json.loads((out / "train_report.json").read_text())
    assert report["resumed_from"] == killed_at and report["steps"] == 30
    assert (out / "model" / "config.json").is_file()


@pytest.fixture(scope="module")
def sequence(two_domains, tmp_path_factory):
    """Train on A, then retrain on B with and without replay of A."""
    root = tmp_path_factory.mktemp("sequence")
    a_train, b_train = ds.read_index(two_domains.a_train), ds.read_index(two_domains.b_train)
    cfg_a = TrainConfig(steps=150, batch_size=4, lr=LR)
    model_a = train_segformer(
        two_domains.base_model, a_train, [], root / "A", cfg_a, "cpu", progress=False
    ).model_dir
    cfg_b = TrainConfig(steps=100, batch_size=4, lr=LR, replay_ratio=0.5)
    replayed = train_segformer(
        model_a, b_train, a_train, root / "B-replay", cfg_b, "cpu", progress=False
    ).model_dir
    cfg_b0 = TrainConfig(steps=100, batch_size=4, lr=LR, replay_ratio=0.0)
    plain = train_segformer(
        model_a, b_train, a_train, root / "B-plain", cfg_b0, "cpu", progress=False
    ).model_dir
    return {"A": model_a, "B-replay": replayed, "B-plain": plain}


@pytest.mark.slow
def test_new_domain_miou_rises_after_retraining(two_domains, sequence):
    tests = {"A": ds.read_index(two_domains.a_test), "B": ds.read_index(two_domains.b_test)}
    before = evaluate_model(sequence["A"], tests, "cpu", progress=False)
    base = evaluate_model(two_domains.base_model, tests, "cpu", progress=False)
    assert before["A"].miou > base["A"].miou + 0.05, "training on A did not learn A"
    results = {}
    for name in ("B-replay", "B-plain"):
        after = evaluate_model(sequence[name], tests, "cpu", progress=False)
        print(
            f"{name}: B mIoU {before['B'].miou:.3f} -> {after['B'].miou:.3f}, "
            f"A mIoU {before['A'].miou:.3f} -> {after['A'].miou:.3f}"
        )
        assert after["B"].miou > before["B"].miou + 0.02, f"{name}: new-domain mIoU did not rise"
        results[name] = after
    # replay keeps the old domain: it forgets clearly less than training on B alone
    assert results["B-replay"]["A"].miou > results["B-plain"]["A"].miou + 0.03


@pytest.mark.slow
def test_eval_worker_and_gate_from_env(two_domains, sequence, tmp_path):
    out = tmp_path / "eval"
    env = {
        "MODEL_URLS": f"{sequence['A']};{sequence['B-replay']}",
        "TEST_DATASET_URL": str(two_domains.b_test),
        "OLD_TEST_DATASET_URL": str(two_domains.a_test),
        "OUTPUT_URL": str(out),
        "GATE_MAX_OLD_DROP": "0.5",
    }
    deploy = tmp_path / "deploy" / "model"
    result = run_eval_worker(
        EvalOptions(gate=True, device="cpu", deploy_dir=str(deploy), progress=False), env
    )
    metrics = json.loads((out / "metrics.json").read_text())["models"]
    a, b = metrics[str(sequence["A"])], metrics[str(sequence["B-replay"])]
    expected = decide(
        a["new"]["mIoU"], b["new"]["mIoU"], a["old"]["mIoU"], b["old"]["mIoU"], GatePolicy(max_old_drop=0.5)
    )
    gate = json.loads((out / "gate.json").read_text())
    assert gate["accept"] is expected.accept is result.decision.accept
    assert gate["candidate"] == str(sequence["B-replay"]) and gate["baseline"] == str(sequence["A"])
    assert (deploy / "config.json").is_file() is expected.accept
    assert gate["published_to"] == (str(deploy) if expected.accept else None)
    # a strict policy on the same numbers: the CLI's exit status says reject (3)
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "sedna_sam",
            "gate",
            "--model",
            str(sequence["A"]),
            "--model",
            str(sequence["B-replay"]),
            "--test-index",
            str(two_domains.b_test),
            "--output",
            str(tmp_path / "strict"),
            "--device",
            "cpu",
            "--min-new-gain",
            "0.99",
            "--allow-missing-old",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert cli.returncode == 3, cli.stdout + cli.stderr
    assert "REJECT" in cli.stdout


def test_train_plan_from_sedna_env(two_domains, tmp_path):
    """Replay = the previous round's knowledge (+ explicit indexes); the Dataset's other
    lines only on request, minus this round and the test split (Sedna's eval split would
    otherwise leak into training)."""
    a_train, b_train, b_test = (
        ds.read_index(p) for p in (two_domains.a_train, two_domains.b_train, two_domains.b_test)
    )
    original = two_domains.root / "original.txt"
    ds.append_index_lines(original, [(s.image, s.label) for s in a_train[:4] + b_train + b_test])
    prev = tmp_path / "round1"
    (prev / "model").mkdir(parents=True)
    (prev / "model" / "config.json").write_text("{}")
    ds.write_index(prev / "knowledge_index.txt", a_train[4:8])
    env = {
        "TRAIN_DATASET_URL": str(two_domains.b_train),
        "TEST_DATASET_URL": str(two_domains.b_test),
        "ORIGINAL_DATASET_URL": str(original),
        "CLOUD_KB_INDEX": str(prev / "index.pkl"),
        "HAS_COMPLETED_INITIAL_TRAINING": "true",
        "OUTPUT_URL": str(tmp_path / "round2"),
        "TRAIN_STEPS": "7",
        "REPLAY_RATIO": "0.25",
    }
    plan = plan_training(TrainOptions(), env)
    assert [s.image for s in plan.new] == [s.image for s in b_train]
    assert {s.image for s in plan.replay} == {s.image for s in a_train[4:8]}
    assert plan.base_model == str(prev / "model")
    assert (plan.config.steps, plan.config.replay_ratio) == (7, 0.25)
    assert plan.work_dir == tmp_path / "round2" and plan.initial_done
    # the Dataset's other lines on request, never this round's or the test split's
    plan = plan_training(TrainOptions(replay_original=True), env)
    assert {s.image for s in plan.replay} == {s.image for s in a_train[:8]}
    # flags override env; CLOUD_KB_INDEX as Sedna gives it: a host path under DATA_PATH_PREFIX
    prefixed = {**env, "CLOUD_KB_INDEX": "/round1/index.pkl", "DATA_PATH_PREFIX": str(tmp_path)}
    plan = plan_training(TrainOptions(steps=3, base_model="x"), prefixed)
    assert plan.config.steps == 3 and plan.base_model == "x"
    assert {s.image for s in plan.replay} == {s.image for s in a_train[4:8]}
    from sedna_sam.errors import SednaSamError

    with pytest.raises(SednaSamError, match="TRAIN_DATASET_URL"):
        plan_training(TrainOptions(), {"OUTPUT_URL": "x"})


def test_estimator_interface(two_domains, tmp_path):
    est = SegformerEstimator(str(two_domains.base_model), device="cpu", progress=False)
    est.load(str(two_domains.base_model))
    (sample,) = ds.read_index(two_domains.a_test)[:1]
    from sedna_sam.images import read_image_rgb

    image = read_image_rgb(sample.image)
    preds = est.predict([image, str(sample.image)])
    assert preds[0].shape == image.shape[:2] and (preds[0] == preds[1]).all()
    metrics = est.evaluate(two_domains.a_test)
    assert 0.0 <= metrics["mIoU"] <= 1.0 and metrics["samples"] == 6
    saved = est.save(str(tmp_path / "saved.model"))  # one file: what Sedna's KB stores
    assert Path(saved).is_file()
    est2 = SegformerEstimator(saved, device="cpu", progress=False)
    assert (est2.predict([image])[0] == preds[0]).all()


def test_bad_samples_are_left_out_by_name(two_domains, tmp_path):
    good = ds.read_index(two_domains.b_train)[:3]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    missing_label = ds.LabelledSample(good[0].image, tmp_path / "nope_TrainIds.png", 9)
    new = [*good, ds.LabelledSample(corrupt, good[0].label, 7), missing_label]
    config = TrainConfig(steps=2, batch_size=2, lr=LR)
    result = train_segformer(two_domains.base_model, new, [], tmp_path / "out", config, "cpu", progress=False)
    assert result.new_samples == 3 and (result.model_dir / "config.json").is_file()
    why = dict(result.failed)
    assert "not a readable image" in why[str(corrupt)]
    assert "nope_TrainIds.png: label file not found (index line 9)" in why[str(good[0].image)]
    report = json.loads((tmp_path / "out" / "train_report.json").read_text())
    assert len(report["failed"]) == 2
