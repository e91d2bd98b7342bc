"""Lifelong learning on two synthetic domains: does retraining learn the new domain, and
does replay keep the old one?

Domain A: generated street scenes (sedna_sam.synthetic). Domain B: the same classes
under fog and a colour tint, half of them in a park layout A never has. The samples go
through the same Sedna txt indexes the cloud service appends to.

1. A tiny random-weight Segformer is trained on A (round A).
2. From the round-A model, two retrainings on B: ours (each batch half B, half A
   replayed) and the baseline, plain fine-tuning on B alone (replay ratio 0), same steps.
3. mIoU on held-out A and B test scenes for every model; backward transfer
   BWT = mIoU_A(after B) - mIoU_A(after A); new-domain gain = mIoU_B(after B) - mIoU_B(after A);
   the deploy gate's decision (default policy: B must rise, A may drop <= 0.02); seconds.

    .venv/bin/python bench/lifelong.py                    # about 5 minutes on 2 CPU cores
    .venv/bin/python bench/lifelong.py --steps-a 100 --steps-b 60 --size 64x128   # quick

Prints a table and writes JSON (default bench/results/lifelong.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from tempfile import TemporaryDirectory

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sedna_sam.labels import cityscapes  # noqa: E402
from sedna_sam.lifelong import data as ds  # noqa: E402
from sedna_sam.lifelong.evaluate import evaluate_model  # noqa: E402
from sedna_sam.lifelong.gate import GatePolicy, decide  # noqa: E402
from sedna_sam.lifelong.train import TrainConfig, train_segformer  # noqa: E402
from sedna_sam.segformer import build_tiny_segformer  # noqa: E402
from tests.fixtures_lifelong import render_domain  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="128x256", help="HxW of the scenes")
    ap.add_argument("--train", type=int, default=48, help="training scenes per domain")
    ap.add_argument("--test", type=int, default=16, help="test scenes per domain")
    ap.add_argument("--steps-a", type=int, default=800)
    ap.add_argument("--steps-b", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on shared cores)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "lifelong.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    labels = cityscapes()
    policy = GatePolicy()
    with TemporaryDirectory(prefix="bench-lifelong-") as tmp:
        root = Path(tmp)
        index = {}
        for name, domain, first, n in (
            ("a_train", "A", 0, args.train),
            ("a_test", "A", 10_000, args.test),
            ("b_train", "B", 20_000, args.train),
            ("b_test", "B", 30_000, args.test),
        ):
            pairs = render_domain(root, domain, range(first, first + n), labels, size=(h, w))
            ds.append_index_lines(root / f"{name}.txt", pairs)  # what the cloud service does per sample
            index[name] = ds.read_index(root / f"{name}.txt")
        tests = {"A": index["a_test"], "B": index["b_test"]}
        base = build_tiny_segformer(root / "base", labels, input_size=(h, w))

        def cfg(steps: int, replay_ratio: float) -> TrainConfig:
            return TrainConfig(steps=steps, batch_size=args.batch_size, lr=args.lr, replay_ratio=replay_ratio)

        rounds = {}
        t = train_segformer(base, index["a_train"], [], root / "A", cfg(args.steps_a, 0.0), args.device)
        rounds["after A"] = t
        for name, ratio in (("after B, replay 0.5 (ours)", 0.5), ("after B, no replay (baseline)", 0.0)):
            rounds[name] = train_segformer(
                t.model_dir,
                index["b_train"],
                index["a_train"],
                root / name.split(",")[1].strip(),
                cfg(args.steps_b, ratio),
                args.device,
            )

        models = {"random init": base, **{k: r.model_dir for k, r in rounds.items()}}
        miou = {}
        for name, model in models.items():
            m = evaluate_model(model, tests, args.device, progress=False)
            miou[name] = {d: m[d].miou for d in ("A", "B")}

    before = miou["after A"]
    rows = []
    for name in models:
        row = {"model": name, "mIoU_A": miou[name]["A"], "mIoU_B": miou[name]["B"]}
        if name in rounds:
            row["train_seconds"] = rounds[name].seconds
            row["steps"] = rounds[name].steps
        if name.startswith("after B"):
            d = decide(before["B"], miou[name]["B"], before["A"], miou[name]["A"], policy)
            row.update(
                new_domain_gain=d.new_gain,
                backward_transfer=d.backward_transfer,
                gate="accept" if d.accept else "reject",
            )
        rows.append(row)

    print(
        f"\nTwo-domain lifelong learning, tiny Segformer, {h}x{w}, {args.train} train / {args.test} test scenes per domain"
    )
    print(
        f"{'model':32s} {'mIoU A':>7s} {'mIoU B':>7s} {'B gain':>7s} {'BWT (A)':>8s} {'gate':>7s} {'train s':>8s}"
    )
    for r in rows:

        def fmt(k: str, spec: str, r: dict = r) -> str:
            return format(r[k], spec) if k in r else "-"

        print(
            f"{r['model']:32s} {r['mIoU_A']:7.3f} {r['mIoU_B']:7.3f} {fmt('new_domain_gain', '+7.3f'):>7s} "
            f"{fmt('backward_transfer', '+8.3f'):>8s} {r.get('gate', '-'):>7s} {fmt('train_seconds', '8.1f'):>8s}"
        )
    out = {
        "rows": rows,
        "config": {**vars(args), "policy": asdict(policy)},
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
        },
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
