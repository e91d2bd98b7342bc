"""Edge worker costs and corner-case detection quality, measured in one run.

1. Cost: Segformer forward time per frame, and each scorer's time as a percent of it
   (goal <= 3 %), for (a) the tiny model trained below at its input size and (b) the
   Segformer-B0 architecture (random weights: timing does not depend on them) on a
   512x1024 frame, the size a real edge node runs. Baseline = the forward pass itself.
2. Quality: a tiny Segformer trained for a few minutes on CPU on generated street scenes
   (sedna_sam.synthetic), then scored on held-out known scenes and on unknown ones it
   never saw: pasted objects with new colours/textures (1 or 3), fog (0.3 or 0.7), both.
   AUROC of every scorer
   (our own rank-statistic function), plus the flag rate on known / unknown frames at a
   threshold calibrated for 5 % on separate known frames. Baseline = a random score
   (AUROC about 0.5) drawn in the same run.

    .venv/bin/python bench/edge.py                       # about 5 minutes on 2 CPU cores
    .venv/bin/python bench/edge.py --train-seconds 60    # quicker, weaker model

Prints a table and writes JSON (default bench/results/edge.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sedna_sam.edge.calibrate import thresholds_for_rate  # noqa: E402
from sedna_sam.edge.scorers import SCORERS, auroc  # noqa: E402
from sedna_sam.labels import cityscapes  # noqa: E402
from sedna_sam.synthetic import add_unknown_objects, make_street_scene, render_scene  # noqa: E402

H, W = 128, 256  # training / evaluation frame size of the tiny model


def scenes(seeds, labels, fog=0.0):
    """(images (N, H, W, 3) uint8, label maps (N, H, W) uint8) for these seeds."""
    maps = [make_street_scene(H, W, seed=s) for s in seeds]
    imgs = [render_scene(m, labels, seed=s, fog=fog) for s, m in zip(seeds, maps)]
    return np.stack(imgs), np.stack(maps)


def train_tiny(labels, seconds: float, seed: int = 0):
    """A tiny Segformer trained on generated street scenes for ``seconds`` of wall time."""
    import torch

    from sedna_sam.segformer import Segformer, tiny_segformer

    torch.manual_seed(seed)
    model = tiny_segformer(labels, seed=seed, hidden_sizes=(16, 32, 64, 128))
    imgs, maps = scenes(range(1000, 1160), labels)
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    x_all = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - mean) / std
    y_all = torch.from_numpy(maps.astype(np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    model.train()
    rng = np.random.default_rng(seed)
    steps, t0, losses = 0, time.perf_counter(), []
    while time.perf_counter() - t0 < seconds:
        idx = rng.choice(len(x_all), 8, replace=False)
        x, y = x_all[idx], y_all[idx]
        if rng.random() < 0.5:  # horizontal flip
            x, y = x.flip(-1), y.flip(-1)
        loss = model(pixel_values=x, labels=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        steps += 1
    model.eval()
    seg = Segformer(model, "cpu", None, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bench")
    return seg, {
        "steps": steps,
        "seconds": time.perf_counter() - t0,
        "final_loss": statistics.mean(losses[-20:]),
    }


def pixel_accuracy(seg, imgs, maps) -> float:
    correct = [(seg.predict_ids(i) == m).mean() for i, m in zip(imgs, maps)]
    return float(np.mean(correct))


def frame_scores(seg, imgs) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in SCORERS.names()}
    scorers = {name: SCORERS.create(name) for name in SCORERS.names()}
    for img in imgs:
        logits = seg.logits([img])[0]
        for name, s in scorers.items():
            out[name].append(s.score(logits))
    return out


def time_costs(seg, image, repeats: int) -> dict:
    """Median forward time and each scorer's median time on its logits (ms, % of forward)."""
    seg.logits([image])  # warm-up
    fwd = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        logits = seg.logits([image])
        fwd.append(time.perf_counter() - t0)
    forward_ms = statistics.median(fwd) * 1e3
    row = {
        "frame": f"{image.shape[0]}x{image.shape[1]}",
        "logits": "x".join(map(str, logits.shape[1:])),
        "forward_ms": forward_ms,
    }
    for name in SCORERS.names():
        scorer = SCORERS.create(name)
        scorer.score(logits[0])
        ts = []
        for _ in range(max(repeats, 20)):
            t0 = time.perf_counter()
            scorer.score(logits[0])
            ts.append(time.perf_counter() - t0)
        ms = statistics.median(ts) * 1e3
        row[name] = {"ms": ms, "percent_of_forward": 100 * ms / forward_ms}
    return row


def b0(labels):
    """Segformer-B0's architecture (mit-b0 encoder, 256-d decoder), random weights."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from sedna_sam.segformer import Segformer

    torch.manual_seed(0)
    config = SegformerConfig(num_labels=len(labels), decoder_hidden_size=256)  # defaults = mit-b0
    model = SegformerForSemanticSegmentation(config).eval()
    return Segformer(
        model, "cpu", None, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "segformer-b0 (random)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-seconds", type=float, default=180.0)
    ap.add_argument("--frames", type=int, default=40, help="frames per evaluation set")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats (B0 forward is ~2 s on 2 cores)")
    ap.add_argument("--skip-b0", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "edge.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    labels = cityscapes()
    t_start = time.perf_counter()
    print(f"training a tiny Segformer for {args.train_seconds:.0f} s on generated scenes ...", flush=True)
    seg, train_info = train_tiny(labels, args.train_seconds)
    n = args.frames
    calib_imgs, _ = scenes(range(5000, 5000 + n), labels)
    known_imgs, known_maps = scenes(range(6000, 6000 + n), labels)
    unknown_sets = {
        "1 object": np.stack(
            [
                add_unknown_objects(i, seed=k, count=1)
                for k, i in enumerate(scenes(range(6500, 6500 + n), labels)[0])
            ]
        ),
        "light fog 0.3": scenes(range(7500, 7500 + n), labels, fog=0.3)[0],
        "objects": np.stack(
            [
                add_unknown_objects(i, seed=k, count=3)
                for k, i in enumerate(scenes(range(7000, 7000 + n), labels)[0])
            ]
        ),
        "fog 0.7": scenes(range(8000, 8000 + n), labels, fog=0.7)[0],
        "objects+fog 0.7": np.stack(
            [
                add_unknown_objects(i, seed=k, count=3)
                for k, i in enumerate(scenes(range(9000, 9000 + n), labels, fog=0.7)[0])
            ]
        ),
    }
    train_info["pixel_accuracy_known"] = pixel_accuracy(seg, known_imgs[:10], known_maps[:10])
    print(
        f"trained: {train_info['steps']} steps, loss {train_info['final_loss']:.3f}, "
        f"pixel accuracy on held-out known scenes {train_info['pixel_accuracy_known']:.3f}",
        flush=True,
    )

    calib = frame_scores(seg, calib_imgs)
    thresholds = thresholds_for_rate(calib, 0.05)
    known = frame_scores(seg, known_imgs)
    rng = np.random.default_rng(0)
    quality: dict[str, dict] = {}
    for kind, imgs in unknown_sets.items():
        unk = frame_scores(seg, imgs)
        row = {}
        for name in SCORERS.names():
            thr = thresholds[name]
            row[name] = {
                "auroc": auroc(known[name], unk[name]),
                "flag_rate_known": float(np.mean(np.asarray(known[name]) >= thr)),
                "flag_rate_unknown": float(np.mean(np.asarray(unk[name]) >= thr)),
            }
        row["random (baseline)"] = {"auroc": auroc(rng.random(n), rng.random(n))}
        quality[kind] = row

    costs = {"tiny (trained)": time_costs(seg, known_imgs[0], max(args.repeats, 20))}
    if not args.skip_b0:
        big = render_scene(make_street_scene(512, 1024, seed=1), labels, seed=1)
        costs["segformer-b0 arch"] = time_costs(b0(labels), big, args.repeats)

    # --- table ---
    names = SCORERS.names()
    print("\nScorer overhead (median ms; % of the Segformer forward pass on the same frame)")
    print(f"{'model':22s} {'frame':>9s} {'forward ms':>11s} " + " ".join(f"{n:>16s}" for n in names))
    for model, row in costs.items():
        cells = " ".join(f"{row[n]['ms']:7.2f} ({row[n]['percent_of_forward']:5.2f}%)" for n in names)
        print(f"{model:22s} {row['frame']:>9s} {row['forward_ms']:11.1f} {cells}")
    print(
        f"\nDetection quality: AUROC known vs unknown ({n} + {n} frames); flag rates at the 5 % threshold "
        f"calibrated on {n} other known frames"
    )
    print(f"{'unknown kind':16s} " + " ".join(f"{n:>22s}" for n in names) + f" {'random':>8s}")
    for kind, row in quality.items():
        cells = " ".join(
            f"{row[n]['auroc']:.3f} ({row[n]['flag_rate_known']:.0%}/{row[n]['flag_rate_unknown']:.0%})".rjust(
                22
            )
            for n in names
        )
        print(f"{kind:16s} {cells} {row['random (baseline)']['auroc']:8.3f}")
    print("  cells: AUROC (flagged known / flagged unknown)")

    result = {
        "bench": "edge",
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "train": train_info,
        "frame_size": [H, W],
        "frames_per_set": n,
        "thresholds_5pct": thresholds,
        "costs": costs,
        "quality": quality,
        "wall_seconds": time.perf_counter() - t_start,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out} ({result['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
