"""``sedna-sam annotate``: the flags, the options they make, the run over shards.

The model and SAM flags (:func:`add_model_args`, :func:`add_sam_args`) and
:func:`options_from_args` are shared with ``sedna-sam demo`` (:mod:`sedna_sam.commands.demo`)."""

from __future__ import annotations

import argparse
import logging

from sedna_sam.commands import add_config_path, finish
from sedna_sam.errors import SednaSamError

log = logging.getLogger(__name__)

SEGFORMER_HINT = (
    "Semantic model: a Segformer directory (save_pretrained layout) or a Hugging Face hub id, e.g. "
    "nvidia/segformer-b5-finetuned-cityscapes-1024-1024 (Cityscapes) or "
    "nvidia/segformer-b5-finetuned-ade-640-640 (ADE20K); offline: `huggingface-cli download ID "
    "--local-dir models/ID` on a connected machine and pass that directory."
)


# --- annotate ----------------------------------------------------------------------------

# "auto" + sedna_sam.annotate.backends.DECODER_BACKENDS' names, spelled out so that building
# the parser (`sedna-sam --help`) does not import torch; a test keeps the two equal.
SAM_BACKEND_CHOICES = ("auto", "compiled", "compiled-factored", "eager", "factored", "onnx", "onnx-factored")


def options_from_args(args: argparse.Namespace, labels):
    from sedna_sam.annotate.engine import AnnotateOptions
    from sedna_sam.annotate.modes import SamMode
    from sedna_sam.annotate.sam import sam_params

    params = sam_params(
        args.dataset,
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        crop_n_layers=args.crop_n_layers,
        crop_n_points_downscale_factor=args.crop_n_points_downscale_factor,
        min_mask_region_area=args.min_mask_region_area,
        box_nms_thresh=args.box_nms_thresh,
    )
    return AnnotateOptions(
        ckpt_path=str(args.ckpt_path),
        semantic_model=str(args.semantic_model),
        labels=labels,
        model_type=args.model_type,
        semantic_backend=args.semantic_backend,
        labeler=args.labeler,
        labeler_options=_key_values(args.labeler_option),
        sam=params,
        autocast=args.autocast,
        device=args.device,
        num_threads=args.threads,
        sam_mode=SamMode(
            backend=args.sam_backend,
            precision=args.sam_precision,
            encoder_precision=args.sam_encoder_precision,
            decoder_batch=args.sam_decoder_batch,
            encoder_batch=args.sam_encoder_batch,
        ),
        overlap=args.overlap,
    )


def _key_values(items: list[str] | None) -> dict[str, object]:
    """``["min_share=0.5", "clip_model=models/clip"]`` -> dict; numbers become numbers."""
    out: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SednaSamError(f"--labeler-option {item!r}: expected KEY=VALUE")
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out


def _annotate(args: argparse.Namespace) -> int:
    from sedna_sam.annotate import shards

    if args.dataset_dir:
        root = str(args.dataset_dir).rstrip("/")
        data_dir = args.data_dir or f"{root}/raw_data"
        out_dir = args.out_dir or f"{root}/ssa_output"
    else:
        if not args.data_dir or not args.out_dir:
            raise SednaSamError(
                "give --data-dir and --out-dir, or --dataset-dir (uses raw_data/ and ssa_output/)"
            )
        data_dir, out_dir = args.data_dir, args.out_dir
    if args.merge_report:
        count = shards.shard_count_from(args.shard_count)
        if count is None:
            raise SednaSamError(f"--merge-report needs --shard-count N (or ${shards.COUNT_ENV})")
        merged = shards.merge_reports(data_dir, out_dir, count, save_img=args.save_img)
        print(merged.summary())
        print(f"report: {str(out_dir).rstrip('/')}/{shards.REPORT_DIR}/merged-of-{count:05d}.json")
        return merged.exit_code
    if not args.ckpt_path:
        raise SednaSamError("--ckpt-path is required (a SAM checkpoint, e.g. models/sam_vit_h_4b8939.pth)")
    if not args.semantic_model:
        raise SednaSamError(f"--semantic-model is required. {SEGFORMER_HINT}")
    from sedna_sam.annotate.batch import annotate_images
    from sedna_sam.labels import load_labels

    shard = shards.shard_from(args.shard_index, args.shard_count)
    labels = load_labels(args.config_path or args.dataset)
    options = options_from_args(args, labels)
    log.info(
        "annotating %s -> %s%s (SAM %s, %s %s, labeler %s, points_per_side %d)",
        data_dir,
        out_dir,
        f", {shard}" if shard else "",
        args.ckpt_path,
        args.semantic_backend,
        args.semantic_model,
        args.labeler,
        options.sam.points_per_side,
    )
    loaded: dict[str, object] = {}

    def annotate(images, out, on_done):
        if args.world_size == 1 and "annotator" not in loaded:  # chunks of a URL input reuse the models
            from sedna_sam.annotate.batch import device_for
            from sedna_sam.annotate.engine import Annotator

            loaded["annotator"] = Annotator.from_options(options, device_for(0, options))
        return annotate_images(
            images,
            out,
            options,
            world_size=args.world_size,
            save_img=args.save_img,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            annotator=loaded.get("annotator"),
            on_done=on_done,
        )

    report = shards.run_shard(
        data_dir,
        out_dir,
        shard,
        annotate,
        save_img=args.save_img,
        overwrite=args.overwrite,
        staging=args.staging_dir,
    )
    return finish(report)


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--ckpt-path",
        "--ckpt_path",
        dest="ckpt_path",
        required=required,
        help="SAM checkpoint (.pth), e.g. sam_vit_h_4b8939.pth; model type read from the file "
        "(`sedna-sam models download vit_h --dir models` fetches it)",
    )
    p.add_argument(
        "--model-type",
        "--model_type",
        dest="model_type",
        default=None,
        help="vit_h|vit_l|vit_b: checked against the checkpoint (optional)",
    )
    p.add_argument(
        "--semantic-model", "--semantic_model", dest="semantic_model", default=None, help=SEGFORMER_HINT
    )
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: CUDA when present)")


def add_sam_args(p: argparse.ArgumentParser) -> None:
    from sedna_sam.annotate.labelers import LABELERS, load_plugins
    from sedna_sam.annotate.semantic import SEMANTIC_BACKENDS

    load_plugins()  # so --help lists the open-vocabulary labelers too

    g = p.add_argument_group("SAM automatic mask generator (default: SSA's values for --dataset)")
    for flag, typ, what in (
        ("points-per-side", int, "point grid per side (SSA: 64; 128 for foggy_driving)"),
        ("points-per-batch", int, "prompts per decoder batch (64; raise on a large GPU)"),
        ("pred-iou-thresh", float, "keep masks with predicted IoU above (0.86)"),
        ("stability-score-thresh", float, "keep masks with stability above (0.92)"),
        ("crop-n-layers", int, "crop layers, each adds encoder passes (1)"),
        ("crop-n-points-downscale-factor", int, "point density divisor per crop layer (2)"),
        ("min-mask-region-area", int, "remove holes/islands smaller than this, px (100)"),
        ("box-nms-thresh", float, "drop masks whose box overlaps a better one above this IoU (0.7)"),
    ):
        dest = flag.replace("-", "_")
        g.add_argument(f"--{flag}", f"--{dest}", dest=dest, type=typ, default=None, help=what)
    p.add_argument(
        "--semantic-backend",
        default="segformer",
        choices=SEMANTIC_BACKENDS.names(),
        help="semantic model family (default segformer)",
    )
    p.add_argument(
        "--labeler",
        default="segformer",
        help=f"how masks get classes: {', '.join(LABELERS.names())} (default segformer: SSA's vote)",
    )
    p.add_argument(
        "--labeler-option",
        action="append",
        metavar="KEY=VALUE",
        help="option passed to the labeler (repeatable), e.g. clip_model=models/clip-vit-b32",
    )
    p.add_argument(
        "--autocast",
        choices=["bf16", "fp16"],
        default=None,
        help="mixed precision for SAM and the semantic model on CUDA (bf16 also on CPU)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads per worker (default: cores / world size)"
    )
    _add_sam_mode_args(p)


def _add_sam_mode_args(p: argparse.ArgumentParser) -> None:
    from sedna_sam.annotate.precision import PRECISIONS

    g = p.add_argument_group(
        "how SAM runs (same masks as segment-anything's generator in fp32; eager fp32 is bit-exact)"
    )
    g.add_argument(
        "--sam-backend",
        default="auto",
        choices=SAM_BACKEND_CHOICES,
        help="mask decoder backend: auto (default: the fastest here, measured once per machine and "
        "cached), eager (bit-exact in fp32), compiled (torch.compile), onnx (onnxruntime, CPU, fp32); "
        "the *factored variants run the same decoder with about half the arithmetic (same masks up "
        "to float rounding, not bit-exact)",
    )
    g.add_argument(
        "--sam-precision",
        default=None,
        choices=["auto", *PRECISIONS.names()],
        help="mask decoder precision (default: --autocast, else fp32); bf16 on CPU and CUDA, fp16 on CUDA",
    )
    g.add_argument(
        "--sam-encoder-precision",
        default=None,
        choices=["auto", *PRECISIONS.names()],
        help="image encoder precision (default: --autocast, else fp32; auto: bf16 on CUDA, fp32 on CPU)",
    )
    g.add_argument(
        "--sam-decoder-batch",
        type=int,
        default=None,
        help="prompts per decoder call (default: --points-per-batch on CPU, 256 on CUDA)",
    )
    g.add_argument(
        "--sam-encoder-batch",
        type=int,
        default=None,
        help="crops per image-encoder call (default: 1 on CPU, 8 on CUDA)",
    )
    g.add_argument(
        "--overlap",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the semantic model in a thread while SAM runs (default: on CUDA only)",
    )


def _register_annotate(subparsers) -> None:
    p = subparsers.add_parser(
        "annotate",
        help="SAM + semantic voting pre-annotation (SSA format)",
        description="Pre-annotate images the way Semantic-Segment-Anything does: SAM's automatic masks, "
        "a semantic model's per-pixel classes, each mask voted to its majority class. Writes "
        "<stem>_semantic.json (SSA format) and, with --save-img, <stem>_semantic.png. Reruns skip "
        "images whose outputs exist and parse; bad images are reported at the end (exit 1). "
        "On CPU, SSA's settings take minutes per image: lower --points-per-side for a quick look.",
        epilog="example: sedna-sam annotate --dataset-dir D --ckpt-path models/sam_vit_h_4b8939.pth "
        "--semantic-model models/segformer-b5-cityscapes --save-img --world-size 2",
    )
    p.add_argument("--data-dir", "--data_dir", dest="data_dir", default=None, help="input images")
    p.add_argument("--out-dir", "--out_dir", dest="out_dir", default=None, help="where SSA files go")
    p.add_argument(
        "--dataset-dir",
        "--dataset_dir",
        dest="dataset_dir",
        default=None,
        help="dataset root: reads raw_data/, writes ssa_output/",
    )
    add_model_args(p, required=False)
    p.add_argument(
        "--dataset",
        default="cityscapes",
        help="cityscapes (default), foggy_driving, ade20k: SAM defaults and labels",
    )
    add_config_path(p)
    p.add_argument(
        "--save-img", "--save_img", dest="save_img", action="store_true", help="also write the overlay PNG"
    )
    p.add_argument(
        "--world-size",
        "--world_size",
        dest="world_size",
        type=int,
        default=1,
        help="worker processes, one device each (default 1)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo images that already have outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    g = p.add_argument_group(
        "shards (a Kubernetes Indexed Job: one pod per shard)",
        "Each image belongs to one shard by a hash of its file name, so adding images never moves "
        "finished ones. --data-dir/--out-dir/--dataset-dir may be fsspec URLs (s3://bucket/path, with "
        "S3_ENDPOINT_URL, ACCESS_KEY_ID, SECRET_ACCESS_KEY): results are uploaded as each image is done.",
    )
    g.add_argument(
        "--shard-index",
        type=int,
        default=None,
        help="this shard (default $JOB_COMPLETION_INDEX, set by Kubernetes in an Indexed Job)",
    )
    g.add_argument(
        "--shard-count",
        type=int,
        default=None,
        help="number of shards (default $SEDNA_SAM_SHARD_COUNT: the Job's completions)",
    )
    g.add_argument(
        "--merge-report",
        action="store_true",
        help="no annotating: read every shard's report and the outputs, list what is done, failed and "
        "missing (exit 1 unless all are done)",
    )
    g.add_argument(
        "--staging-dir", default=None, help="local scratch for URL inputs/outputs (default: the temp dir)"
    )
    add_sam_args(p)
    p.set_defaults(func=_annotate)


def register(subparsers) -> None:
    _register_annotate(subparsers)
