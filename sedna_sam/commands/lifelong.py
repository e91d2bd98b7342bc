"""``sedna-sam train | eval | gate``: the Sedna train and eval workers.

Each flag overrides the Sedna env name shown in its help; with no flags the commands
read exactly what Sedna's global manager gives the worker pods.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sedna_sam.lifelong.eval_worker import EvalOptions
    from sedna_sam.lifelong.train_worker import TrainOptions

log = logging.getLogger(__name__)

TRAIN_EPILOG = """\
Sedna env read (flags override): TRAIN_DATASET_URL (this round's samples), ORIGINAL_DATASET_URL
(the Dataset index; relative paths resolve against its directory), CLOUD_KB_INDEX (previous
round: its model is the base and what it learned is replayed), HAS_COMPLETED_INITIAL_TRAINING,
OUTPUT_URL. Ours: BASE_MODEL_URL, REPLAY_DATASET_URL, TRAIN_STEPS, BATCH_SIZE, LEARNING_RATE,
REPLAY_RATIO.
Writes OUTPUT_URL/model (Segformer directory), OUTPUT_URL/knowledge_index.txt (next round's
replay pool), OUTPUT_URL/train_report.json. A killed run resumes from
OUTPUT_URL/checkpoints/checkpoint.pt when rerun with the same inputs; a finished round is skipped.
Under a Sedna LifelongLearningJob with kubeedge/sedna's lib installed the round runs through the
lib's LifelongLearning: the model is also saved as one archive in Sedna's knowledge base
(OUTPUT_URL/index.pkl, uploaded to KB_SERVER) and reported to the local controller.
"""

EVAL_EPILOG = """\
Sedna env read (flags override): MODEL_URLS (';'-separated models: directories, archives, or
under Sedna the train round's index.pkl), TEST_DATASET_URL (new-domain test index; repeated
lines counted once), ORIGINAL_DATASET_URL, OUTPUT_URL. Ours: OLD_TEST_DATASET_URL (old-domain
test index), BASELINE_MODEL_URL (deployed model), GATE_MIN_NEW_GAIN, GATE_MAX_OLD_DROP,
DEPLOY_MODEL_DIR.
Writes OUTPUT_URL/metrics.json (per-class IoU, mIoU, confusion per model and domain) and, with
--gate, OUTPUT_URL/gate.json. Under a Sedna LifelongLearningJob (with kubeedge/sedna's lib) the
decision goes into the report to Sedna's local controller (an accepted model is deployed, a
rejected one is not) and the baseline is the job's last accepted model.
Exit status: 0 when the evaluation ran, whatever the decision (Sedna restarts failed pods);
`sedna-sam gate` exits 3 on reject, for scripts.
"""

EXIT_REJECTED = 3


def _height_width(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 512x1024, got {text!r}") from None
    return h, w


def train_options(args: argparse.Namespace) -> TrainOptions:
    from sedna_sam.lifelong.train_worker import TrainOptions

    return TrainOptions(
        train_index=args.train_index,
        output=args.output,
        original_index=args.original_index,
        kb_index=args.kb_index,
        base_model=args.base_model,
        replay_index=args.replay_index,
        replay_original=args.replay_original,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        replay_ratio=args.replay_ratio,
        input_size=args.input_size,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        no_sedna=args.no_sedna,
        progress=not args.no_progress,
    )


def eval_options(args: argparse.Namespace, gate: bool) -> EvalOptions:
    from sedna_sam.lifelong.eval_worker import EvalOptions

    return EvalOptions(
        models=args.models,
        baseline=args.baseline,
        test_index=args.test_index,
        old_test_index=args.old_test_index,
        output=args.output,
        original_index=args.original_index,
        min_new_gain=args.min_new_gain,
        max_old_drop=args.max_old_drop,
        allow_missing_old=args.allow_missing_old,
        deploy_dir=args.deploy_dir,
        gate=gate,
        device=args.device,
        no_sedna=args.no_sedna,
        progress=not args.no_progress,
    )


def _train(args: argparse.Namespace) -> int:
    from sedna_sam.lifelong.train_worker import run_train_worker

    report = run_train_worker(train_options(args))
    print(json.dumps(report, indent=2, default=str))
    if report.get("failed"):
        log.error(
            "%d sample(s) left out of training (named above); the model was trained on the rest",
            len(report["failed"]),
        )
        return 1
    return 0


def _evaluate(args: argparse.Namespace, gate: bool, exit_on_reject: int) -> int:
    from sedna_sam.lifelong.eval_worker import run_eval_worker

    result = run_eval_worker(eval_options(args, gate))
    print(f"{'model':60s} {'domain':6s} {'mIoU':>7s} {'images':>6s}")
    for url, per in result.metrics.items():
        for domain, m in per.items():
            print(f"{url[-60:]:60s} {domain:6s} {m.miou:7.4f} {m.samples:6d}")
    failed = sum(m.failed for per in result.metrics.values() for m in per.values())
    if failed:
        log.error("%d test sample(s) could not be read (named above)", failed)
    if result.decision is not None:
        d = result.decision
        print(("ACCEPT: " if d.accept else "REJECT: ") + "; ".join(d.reasons))
        return 0 if d.accept else exit_on_reject
    return 1 if failed else 0


def _eval(args: argparse.Namespace) -> int:
    return _evaluate(args, args.gate, exit_on_reject=0)


def _gate(args: argparse.Namespace) -> int:
    return _evaluate(args, True, exit_on_reject=EXIT_REJECTED)


def _report(args: argparse.Namespace) -> int:
    from sedna_sam.lifelong.curve import read_job, write_lifelong_page

    page = write_lifelong_page(args.output_dir, args.out)
    rounds = read_job(args.output_dir)
    print(f"{'round':>5s} {'status':10s} {'new mIoU':>9s} {'old mIoU':>9s} {'BWT':>8s}")
    for r in rounds:
        row = [r.new_miou, r.old_miou, r.backward_transfer]
        print(f"{r.number:5d} {r.status:10s} " + " ".join("" if v is None else f"{v:9.4f}" for v in row))
    print(f"written to {page}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", help="output directory [$OUTPUT_URL]")
    p.add_argument("--original-index", help="the Dataset's txt index [$ORIGINAL_DATASET_URL]")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")


def _no_sedna(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-sedna", action="store_true", help="do not use kubeedge/sedna's lib even when it is installed"
    )


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    _no_sedna(p)
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        default=None,
        help="model directory to evaluate; repeat for several; the last is the gate's candidate [$MODEL_URLS]",
    )
    p.add_argument("--baseline", help="deployed model the candidate is compared with [$BASELINE_MODEL_URL]")
    p.add_argument("--test-index", help="new-domain test index [$TEST_DATASET_URL]")
    p.add_argument("--old-test-index", help="old-domain test index [$OLD_TEST_DATASET_URL]")
    p.add_argument(
        "--min-new-gain",
        type=float,
        default=None,
        help="gate: new-domain mIoU must rise by more than this (0..1, default 0) [$GATE_MIN_NEW_GAIN]",
    )
    p.add_argument(
        "--max-old-drop",
        type=float,
        default=None,
        help="gate: old-domain mIoU may fall by at most this (0..1, default 0.02) [$GATE_MAX_OLD_DROP]",
    )
    p.add_argument(
        "--allow-missing-old",
        action="store_true",
        help="gate: decide on the new domain alone when there is no old-domain test set",
    )
    p.add_argument("--deploy-dir", help="gate: copy an accepted model here atomically [$DEPLOY_MODEL_DIR]")


def register(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "train",
        help="Sedna train worker: fine-tune Segformer on new samples with replay",
        description="Fine-tune the current Segformer on this round's samples, replaying earlier "
        "samples in every batch so old knowledge is kept.",
        epilog=TRAIN_EPILOG,
        formatter_class=fmt,
    )
    _common(p)
    p.add_argument("--train-index", help="txt index of this round's samples [$TRAIN_DATASET_URL]")
    p.add_argument(
        "--replay-index",
        action="append",
        default=None,
        help="extra index of earlier samples to replay; repeatable [$REPLAY_DATASET_URL]",
    )
    p.add_argument(
        "--replay-original",
        action="store_true",
        help="also replay the Dataset index's other lines (only when it holds no evaluation samples: "
        "Sedna puts a share of every round into its evaluation split and does not tell the train worker)",
    )
    p.add_argument("--kb-index", help="previous round's knowledge index or output dir [$CLOUD_KB_INDEX]")
    p.add_argument("--base-model", help="Segformer directory or hub id to start from [$BASE_MODEL_URL]")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 2000) [$TRAIN_STEPS]")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default 8) [$BATCH_SIZE]")
    p.add_argument(
        "--lr", type=float, default=None, help="peak learning rate (default 6e-5) [$LEARNING_RATE]"
    )
    p.add_argument(
        "--replay-ratio",
        type=float,
        default=None,
        help="share of each batch from replayed samples, 0 disables replay (default 0.5) [$REPLAY_RATIO]",
    )
    p.add_argument(
        "--input-size",
        type=_height_width,
        default=None,
        help="train at HxW (default: the model's input size)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of batch sampling and flips")
    p.add_argument(
        "--checkpoint-every", type=int, default=None, help="steps between checkpoints (default 100)"
    )
    _no_sedna(p)
    p.set_defaults(func=_train)

    p = subparsers.add_parser(
        "eval",
        help="Sedna eval worker: per-class IoU / mIoU on old and new domains (+ --gate)",
        description="Evaluate models on the new-domain and old-domain test sets; with --gate, "
        "decide whether the newest model may replace the deployed one.",
        epilog=EVAL_EPILOG,
        formatter_class=fmt,
    )
    _add_eval_args(p)
    p.add_argument(
        "--gate", action="store_true", help="also run the deploy gate (writes gate.json; exit 0 either way)"
    )
    p.set_defaults(func=_eval)

    p = subparsers.add_parser(
        "report",
        help="lifelong curve: every round of a LifelongLearningJob on one page (lifelong.html)",
        description="Read a LifelongLearningJob's outputDir (train/<n>, eval/<n>, data/...) and draw every "
        "round: mIoU on new and old domains, backward and forward transfer, samples added, time, and which "
        "rounds were deployed. Works on a partial or interrupted job. Each eval round also has its own "
        "report.html (eval/<n>/report.html).",
    )
    p.add_argument("--output-dir", required=True, help="the job's outputDir (a local directory)")
    p.add_argument("--out", default=None, help="page to write (default <output-dir>/lifelong.html)")
    p.set_defaults(func=_report)

    p = subparsers.add_parser(
        "gate",
        help="deploy gate: accept a retrained model only if it gains on the new domain without forgetting",
        description="Same as `sedna-sam eval --gate`.",
        epilog=EVAL_EPILOG,
        formatter_class=fmt,
    )
    _add_eval_args(p)
    p.set_defaults(func=_gate)
