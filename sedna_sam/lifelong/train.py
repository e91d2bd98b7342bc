"""Fine-tune a Segformer on new samples with replay of earlier ones.

Each step's batch mixes new-domain samples with samples replayed from earlier knowledge
(``replay_ratio`` of the batch), so the model learns the new domain without forgetting
the old one. Plain PyTorch: AdamW, polynomial learning-rate decay, cross-entropy with
255 = ignore on logits upsampled to the label size.

A killed training resumes: every ``checkpoint_every`` steps the model, optimizer and step
are saved atomically to ``<work_dir>/checkpoint.pt``; a rerun with the same samples and
settings continues from there. Batches, flips and dropout masks are drawn from RNGs
seeded by (seed, step), so a resumed run computes what the killed one would have.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sedna_sam.errors import BatchReport, InputError, SednaSamError
from sedna_sam.lifelong.data import LabelledSample, load_sample, write_index
from sedna_sam.storage import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_DIR_NAME = "model"
REPLAY_INDEX_NAME = "knowledge_index.txt"
REPORT_NAME = "train_report.json"


@dataclass
class TrainConfig:
    """Training settings (all have sensible defaults for a small fine-tuning round)."""

    steps: int = 2000
    batch_size: int = 8
    lr: float = 6e-5
    weight_decay: float = 0.01
    replay_ratio: float = 0.5  # share of each batch drawn from replayed (old) samples; 0 = no replay
    input_size: tuple[int, int] | None = None  # (h, w) to train at; None: the model's own input size
    hflip: bool = True
    seed: int = 0
    checkpoint_every: int = 100
    cache_images: bool = True  # keep decoded samples in memory (small rounds); off for big datasets

    def fingerprint_fields(self) -> dict:
        d = asdict(self)
        d.pop("checkpoint_every")  # may change between a run and its resume
        d.pop("cache_images")
        return d


@dataclass
class TrainResult:
    model_dir: Path
    steps: int
    resumed_from: int
    seconds: float
    final_loss: float
    new_samples: int
    replay_samples: int
    losses: list[float] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (sample, why) left out

    def to_json(self) -> dict:
        d = asdict(self)
        d["model_dir"] = str(self.model_dir)
        d.pop("losses")
        return d


# ----------------------------------------------------------------------------- batches


class SampleCache:
    """Decoded (image, label) pairs, read once when ``keep`` (bad files fail by name)."""

    def __init__(self, num_classes: int, keep: bool):
        self.num_classes = num_classes
        self.keep = keep
        self._cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def get(self, sample: LabelledSample) -> tuple[np.ndarray, np.ndarray]:
        key = (str(sample.image), str(sample.label))
        hit = self._cache.get(key)
        if hit is None:
            hit = load_sample(sample, self.num_classes)
            if self.keep:
                self._cache[key] = hit
        return hit


def draw_batch(
    step: int, new: Sequence[LabelledSample], replay: Sequence[LabelledSample], config: TrainConfig
) -> tuple[list[LabelledSample], list[bool]]:
    """The samples of one step and, for each, whether to flip it; a pure function of
    (seed, step), which is what makes resuming exact."""
    rng = np.random.default_rng([config.seed, step])
    n_replay = int(round(config.batch_size * config.replay_ratio)) if replay else 0
    n_new = config.batch_size - n_replay if new else 0
    if not new:  # initial training on the replay pool alone
        n_replay = config.batch_size
    picks = [new[i] for i in rng.integers(0, len(new), n_new)] if n_new else []
    picks += [replay[i] for i in rng.integers(0, len(replay), n_replay)] if n_replay else []
    flips = (rng.random(len(picks)) < 0.5) & config.hflip
    return picks, [bool(f) for f in flips]


def batch_tensors(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], flips: Sequence[bool], size, mean, std, device
):
    """(pixels (N, 3, h, w) float normalized, labels (N, h, w) int64) at ``size`` = (h, w):
    images resized bilinearly, labels by nearest neighbour (ids are not blended)."""
    import torch
    import torch.nn.functional as F

    xs, ys = [], []
    for (img, lab), flip in zip(pairs, flips):
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float()[None] / 255.0
        y = torch.from_numpy(np.ascontiguousarray(lab))[None, None].float()
        if tuple(x.shape[2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=size, mode="nearest")
        if flip:
            x, y = x.flip(-1), y.flip(-1)
        xs.append(x[0])
        ys.append(y[0, 0].long())
    x = torch.stack(xs).to(device)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (x - m) / s, torch.stack(ys).to(device)


def segmentation_loss(logits, labels):
    """Cross-entropy of (N, C, h', w') logits against (N, h, w) ids, 255 ignored; logits
    are upsampled to the label size (Segformer predicts at 1/4 resolution)."""
    import torch.nn.functional as F

    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(up, labels, ignore_index=255)


# ----------------------------------------------------------------------------- checkpoints


def usable_samples(
    samples: Sequence[LabelledSample], cache: SampleCache, report: BatchReport, progress: bool
) -> list[LabelledSample]:
    """The samples that load (each read once; kept in ``cache`` when it keeps); the others
    are reported by name and left out, so one bad file does not stop a training round."""
    from tqdm import tqdm

    good = []
    for s in tqdm(samples, desc="check samples", unit="img", disable=not progress or len(samples) < 50):
        try:
            cache.get(s)
        except InputError as exc:
            report.fail(str(s.image), str(exc))
            continue
        report.ok()
        good.append(s)
    return good


def run_fingerprint(
    base_model: str, new: Sequence[LabelledSample], replay: Sequence[LabelledSample], config: TrainConfig
) -> str:
    """Identity of a training run: a checkpoint is resumed only by the same run."""
    h = hashlib.sha256()
    h.update(json.dumps({"base": base_model, "config": config.fingerprint_fields()}, sort_keys=True).encode())
    for tag, group in (("new", new), ("replay", replay)):
        for s in group:
            h.update(f"{tag}|{s.image}|{s.label}\n".encode())
    return h.hexdigest()[:16]


def save_checkpoint(path: Path, model, optimizer, step: int, fingerprint: str, losses: list[float]) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "fingerprint": fingerprint,
            "losses": losses,
        },
        buf,
    )
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, fingerprint: str, device: str) -> dict | None:
    """The checkpoint at ``path`` when it belongs to this run, else None (with a log line)."""
    import torch

    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001 -- an unreadable checkpoint means start over, loudly
        log.warning("%s: unreadable checkpoint (%s); starting from the base model", path, exc)
        return None
    if state.get("fingerprint") != fingerprint:
        log.warning(
            "%s: checkpoint is from a different run (other samples or settings); starting from the base model",
            path,
        )
        return None
    return state


def publish_model_dir(src: Path, dst: Path) -> Path:
    """Move a fully written model directory into place at ``dst`` (rename; an old one is
    moved aside first and removed after), so readers never see half a model."""
    dst = Path(dst)
    old = dst.with_name(f".{dst.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    return dst


# ----------------------------------------------------------------------------- training


def train_segformer(
    base_model: str | Path,
    new_samples: Sequence[LabelledSample],
    replay_samples: Sequence[LabelledSample],
    output_dir: str | Path,
    config: TrainConfig | None = None,
    device: str | None = None,
    work_dir: str | Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Fine-tune ``base_model`` (a Segformer directory or hub id) and save the result.

    Writes ``<output_dir>/model`` (loadable by :func:`sedna_sam.segformer.load_segformer`),
    ``<output_dir>/knowledge_index.txt`` (every sample this model has learned from: the
    next round's replay pool) and ``<output_dir>/train_report.json``. Checkpoints go to
    ``work_dir`` (default ``<output_dir>/checkpoints``). ``stop_after``: stop (as if
    killed) after that many steps, leaving only the checkpoint (tests and benches).
    """
    import torch
    from tqdm import tqdm

    from sedna_sam.segformer import load_segformer, save_segformer

    config = config or TrainConfig()
    if not new_samples and not replay_samples:
        raise InputError("no training samples: the train index and the replay indexes are all empty")
    if config.steps < 1 or config.batch_size < 1:
        raise SednaSamError(f"steps and batch size must be >= 1 (got {config.steps}, {config.batch_size})")
    output_dir = Path(output_dir)
    work_dir = Path(work_dir) if work_dir else output_dir / "checkpoints"
    seg = load_segformer(base_model, device)
    model, device = seg.model, seg.device
    size = tuple(config.input_size or seg.input_size or (512, 512))
    num_classes = seg.num_labels
    cache = SampleCache(num_classes, config.cache_images)
    report = BatchReport("samples")
    new_samples = usable_samples(new_samples, cache, report, progress)
    replay_samples = usable_samples(replay_samples, cache, report, progress)
    if not new_samples and not replay_samples:
        raise InputError("no readable training samples:\n" + report.summary())

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    fingerprint = run_fingerprint(str(base_model), new_samples, replay_samples, config)
    ckpt_path = work_dir / CHECKPOINT_NAME
    finished = _finished_round(output_dir, fingerprint)
    if finished is not None:
        log.info("%s: this round is already trained (same samples and settings); nothing to do", output_dir)
        return finished
    start, losses = 0, []
    state = load_checkpoint(ckpt_path, fingerprint, device)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, losses = int(state["step"]), list(state["losses"])
        log.info("resuming training from %s at step %d/%d", ckpt_path, start, config.steps)
    log.info(
        "training %s on %d new + %d replay samples: %d steps, batch %d (replay %.0f%%), HxW %dx%d, %s",
        base_model,
        len(new_samples),
        len(replay_samples),
        config.steps,
        config.batch_size,
        100 * config.replay_ratio if replay_samples else 0,
        size[0],
        size[1],
        device,
    )

    model.train()
    t0 = time.perf_counter()
    end = config.steps if stop_after is None else min(config.steps, start + stop_after)
    bar = tqdm(total=config.steps, initial=start, desc="train", unit="step", disable=not progress)
    step = start
    try:
        for step in range(start, end):
            picks, flips = draw_batch(step, new_samples, replay_samples, config)
            torch.manual_seed(config.seed * 1_000_003 + step)  # dropout: also a function of (seed, step)
            x, y = batch_tensors([cache.get(s) for s in picks], flips, size, seg.mean, seg.std, device)
            lr = config.lr * (1 - step / config.steps) ** 0.9  # polynomial decay, a function of step only
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = segmentation_loss(model(pixel_values=x).logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.1e}")
            done = step + 1
            if done % config.checkpoint_every == 0 or done == end:
                save_checkpoint(ckpt_path, model, optimizer, done, fingerprint, losses)
        step = end
    finally:
        bar.close()
    seconds = time.perf_counter() - t0

    def result_at(model_dir: Path, steps: int) -> TrainResult:
        return TrainResult(
            model_dir,
            steps,
            start,
            seconds,
            _tail_loss(losses),
            len(new_samples),
            len(replay_samples),
            losses,
            report.failed,
        )

    if end < config.steps:
        log.info("stopped at step %d/%d (checkpoint %s)", end, config.steps, ckpt_path)
        return result_at(output_dir / MODEL_DIR_NAME, end)

    model.eval()
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=output_dir, prefix=".model-"))
    save_segformer(model, tmp, seg.input_size)
    model_dir = publish_model_dir(tmp, output_dir / MODEL_DIR_NAME)
    knowledge = {(s.image, s.label): s for s in [*replay_samples, *new_samples]}
    write_index(output_dir / REPLAY_INDEX_NAME, [LabelledSample(i, lab) for i, lab in knowledge])
    result = result_at(model_dir, config.steps)
    atomic_write_json(
        output_dir / REPORT_NAME,
        {
            **result.to_json(),
            "base_model": str(base_model),
            "fingerprint": fingerprint,
            "config": asdict(config),
        },
        indent=2,
    )
    ckpt_path.unlink(missing_ok=True)  # finished: a rerun must not "resume" a completed round
    log.info("trained model saved to %s (%.1f s, final loss %.3f)", model_dir, seconds, result.final_loss)
    return result


def _finished_round(output_dir: Path, fingerprint: str) -> TrainResult | None:
    report_path = output_dir / REPORT_NAME
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        return None
    model_dir = output_dir / MODEL_DIR_NAME
    if report.get("fingerprint") != fingerprint or not (model_dir / "config.json").is_file():
        return None
    return TrainResult(
        model_dir,
        int(report["steps"]),
        int(report["steps"]),
        0.0,
        float(report["final_loss"]),
        int(report["new_samples"]),
        int(report["replay_samples"]),
    )


def _tail_loss(losses: Sequence[float], n: int = 20) -> float:
    return float(np.mean(losses[-n:])) if losses else float("nan")
