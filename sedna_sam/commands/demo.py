"""``sedna-sam demo``: the one-machine chain on the example images (annotate ->
Label Studio tasks -> TrainIds), with the annotate command's model and SAM flags."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from sedna_sam.commands import add_config_path, finish
from sedna_sam.commands.annotate import SEGFORMER_HINT, add_model_args, add_sam_args, options_from_args
from sedna_sam.errors import SednaSamError

log = logging.getLogger(__name__)

EXAMPLES_RAW = Path(__file__).resolve().parents[2] / "examples" / "dataset" / "raw_data"
TINY_WARNING = (
    "\n" + "!" * 78 + "\n"
    "!! --tiny-random-models: SAM and Segformer with RANDOM weights. The masks and classes are\n"
    "!! MEANINGLESS; this only exercises the plumbing (files, formats, resume) offline.\n"
    "!! For real pre-annotations pass --ckpt-path and --semantic-model.\n" + "!" * 78
)


def _demo_models(args: argparse.Namespace, work: Path, labels):
    """(ckpt path, semantic model, SAM overrides, random?) for the demo, or raise with instructions."""
    from sedna_sam.models import CHECKPOINTS, download_hint

    if args.ckpt_path and args.semantic_model:
        return args.ckpt_path, args.semantic_model, {}, False
    if not args.tiny_random_models:
        raise SednaSamError(
            "the demo needs models: --ckpt-path and --semantic-model, or --tiny-random-models "
            "for an offline plumbing run with meaningless masks.\n"
            f"SAM: {download_hint(CHECKPOINTS['vit_b'].filename, 'models')}\n{SEGFORMER_HINT}"
        )
    from sedna_sam.models import tiny_random_models

    log.warning("%s", TINY_WARNING)
    ckpt, semantic, tiny = tiny_random_models(work / "models", labels)
    return ckpt, semantic, tiny, True


def push_step(dataset_dir: Path, labels, args: argparse.Namespace) -> int:
    """Push the demo's Label Studio tasks (``ls_data/``) to ``--label-studio-url`` and print
    where a person corrects them."""
    from sedna_sam.labelstudio.client import project_url, push_dataset

    report = push_dataset(dataset_dir, labels, url=args.label_studio_url, project=args.project)
    project = getattr(report, "project", None)
    if project is not None:
        print(f"correct the pre-annotations at {project_url(args.label_studio_url, project['id'])}")
    return finish(report)


def _demo(args: argparse.Namespace) -> int:
    import dataclasses

    from sedna_sam import convert
    from sedna_sam.annotate.batch import annotate_dataset
    from sedna_sam.labels import load_labels
    from sedna_sam.storage import DatasetLayout, list_images

    work = Path(args.out).resolve()
    layout = DatasetLayout(work)
    labels = load_labels(args.config_path or args.dataset)
    ckpt, semantic, overrides, random_models = _demo_models(args, work, labels)
    source = Path(args.images) if args.images else EXAMPLES_RAW
    if not source.is_dir() or not list_images(source):
        raise SednaSamError(
            f"{source}: no example images (run examples/make_example_images.py or pass --images DIR)"
        )
    layout.raw_data.mkdir(parents=True, exist_ok=True)
    for img in list_images(source):
        if not (layout.raw_data / img.name).exists():
            shutil.copy2(img, layout.raw_data / img.name)
    args.ckpt_path, args.semantic_model = ckpt, semantic
    options = options_from_args(args, labels)
    options.sam = dataclasses.replace(
        options.sam, **{k: v for k, v in overrides.items() if getattr(args, k) is None}
    )
    failed = 0
    print(f"[1/3] annotate {layout.raw_data} -> {layout.ssa_output}")
    report = annotate_dataset(
        layout.raw_data, layout.ssa_output, options, save_img=True, progress=not args.no_progress
    )
    print("      " + report.summary().replace("\n", "\n      "))
    failed |= report.exit_code
    print(f"[2/3] ssa-to-ls -> {layout.root / 'ls_data'}")
    report = convert.ssa_to_ls(work, labels, progress=not args.no_progress)
    print("      " + report.summary().replace("\n", "\n      "))
    failed |= report.exit_code
    print(f"[3/3] ssa-to-trainids -> {layout.root / 'train_ids'}")
    report = convert.ssa_to_trainids(work, labels, preview=True, progress=not args.no_progress)
    print("      " + report.summary().replace("\n", "\n      "))
    failed |= report.exit_code
    if args.label_studio_url:
        failed |= push_step(work, labels, args)
    if random_models:
        print("NOTE: tiny random-weight models were used: the outputs are meaningless (plumbing only).")
    print(f"done: {work}")
    return failed


def _register_demo(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="one-machine chain on the example images: annotate -> Label Studio tasks -> TrainIds",
        description="Runs annotate, ssa-to-ls and ssa-to-trainids on examples/dataset/raw_data into --out. "
        "Needs real models (--ckpt-path, --semantic-model) or --tiny-random-models (offline, meaningless masks).",
    )
    p.add_argument("--out", default="demo-output", help="work directory (default ./demo-output)")
    p.add_argument("--images", default=None, help="image folder instead of the shipped examples")
    p.add_argument(
        "--tiny-random-models",
        action="store_true",
        help="build tiny random-weight SAM + Segformer (plumbing only)",
    )
    p.add_argument(
        "--label-studio-url",
        default=None,
        help="also push the tasks to this Label Studio (LABEL_STUDIO_API_KEY from env)",
    )
    p.add_argument("--project", default="sedna-sam", help="Label Studio project title (default sedna-sam)")
    p.add_argument("--dataset", default="cityscapes", help="labels and SAM defaults (cityscapes)")
    add_config_path(p)
    add_model_args(p, required=False)
    add_sam_args(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_demo)


def register(subparsers) -> None:
    _register_demo(subparsers)
