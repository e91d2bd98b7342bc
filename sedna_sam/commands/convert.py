"""``sedna-sam ssa-to-ls | ls-to-trainids | ssa-to-trainids | labeling-config``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sedna_sam import convert
from sedna_sam.commands import add_config_path, add_dataset_dir, finish
from sedna_sam.labels import labeling_config_xml, load_labels
from sedna_sam.storage import atomic_write_text

log = logging.getLogger(__name__)


def _ssa_to_ls(args: argparse.Namespace) -> int:
    report = convert.ssa_to_ls(
        args.dataset_dir,
        load_labels(args.config_path),
        image_root=args.image_root,
        kind=args.kind,
        model_version=args.model_version,
        tolerance_px=args.tolerance,
        min_area_px=args.min_area,
        overwrite=args.overwrite,
    )
    return finish(report)


def _ls_to_trainids(args: argparse.Namespace) -> int:
    report = convert.ls_to_trainids(
        args.dataset_dir,
        args.ls_json_name,
        load_labels(args.config_path),
        ignore_unknown_labels=args.ignore_unknown_labels,
        preview=args.preview,
        overwrite=args.overwrite,
    )
    return finish(report)


def _ssa_to_trainids(args: argparse.Namespace) -> int:
    report = convert.ssa_to_trainids(
        args.dataset_dir,
        load_labels(args.config_path),
        ignore_unknown_labels=args.ignore_unknown_labels,
        preview=args.preview,
        overwrite=args.overwrite,
    )
    return finish(report)


def _labeling_config(args: argparse.Namespace) -> int:
    xml = labeling_config_xml(load_labels(args.config_path))
    if args.output:
        atomic_write_text(Path(args.output), xml)
        log.info("wrote %s", args.output)
    else:
        sys.stdout.write(xml)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    add_dataset_dir(p)
    add_config_path(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="redo every output (default: keep outputs newer than their input)",
    )


def register(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "ssa-to-ls",
        help="SSA pre-annotations -> Label Studio tasks with polygon predictions",
        formatter_class=fmt,
        description="Turn ssa_output/<stem>_semantic.json into ls_data/<stem>_semantic_poly_ls.json "
        "(one task each) and ls_data/tasks.json (all tasks, for bulk import). Every connected "
        "region of every class becomes a polygon; regions inside others (cars on road, what "
        "shows through a fence) get their own polygons.",
        epilog="Example:\n  LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=$PWD sedna-sam ssa-to-ls "
        "--dataset-dir examples/dataset",
    )
    _common(p)
    p.add_argument(
        "--image-root",
        "--image_root",
        dest="image_root",
        default=None,
        help="URL prefix for the images (e.g. http://host/raw/ or s3://bucket/raw/); default: "
        "/data/local-files/?d=<path relative to $LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT>",
    )
    p.add_argument(
        "--kind",
        choices=["predictions", "annotations"],
        default="predictions",
        help="import the polygons as editable predictions (default) or as finished annotations",
    )
    p.add_argument(
        "--model-version",
        "--model_version",
        dest="model_version",
        default="sedna-sam-ssa",
        help="model_version of the predictions, shown and filterable in Label Studio (default sedna-sam-ssa)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=1.0,
        help="Douglas-Peucker simplification tolerance in pixels (0 = exact outlines; default 1.0)",
    )
    p.add_argument(
        "--min-area",
        "--min_area",
        dest="min_area",
        type=float,
        default=4.0,
        help="drop regions with fewer pixels than this (counted in the summary; default 4)",
    )
    p.set_defaults(func=_ssa_to_ls)

    p = subparsers.add_parser(
        "ls-to-trainids",
        help="Label Studio export (JSON-MIN or JSON) -> 16-bit TrainIds PNGs",
        formatter_class=fmt,
        description="Read ls_data/<LS_JSON_NAME> (a JSON-MIN or full JSON export) and write "
        "train_ids/<stem>_TrainIds.png (uint16, pixel = train id, 255 = ignore). Larger polygons "
        "are painted first so regions inside them survive. Tasks without annotation are skipped.",
        epilog="Example:\n  sedna-sam ls-to-trainids --dataset-dir examples/dataset --ls-json-name export.json --preview",
    )
    _common(p)
    p.add_argument(
        "--ls-json-name",
        "--ls_json_name",
        dest="ls_json_name",
        required=True,
        help="export file name inside ls_data/ (or an absolute path)",
    )
    p.add_argument(
        "--ignore-unknown-labels",
        action="store_true",
        help="skip polygons whose label is not in the labels config (default: fail that task)",
    )
    p.add_argument("--preview", action="store_true", help="also write <stem>_TrainIds_color.png")
    p.set_defaults(func=_ls_to_trainids)

    p = subparsers.add_parser(
        "ssa-to-trainids",
        help="SSA pre-annotations straight to TrainIds PNGs (no correction)",
        description="Write train_ids/<stem>_TrainIds.png from each ssa_output/<stem>_semantic.json, exactly.",
    )
    _common(p)
    p.add_argument(
        "--ignore-unknown-labels",
        action="store_true",
        help="map class ids missing from the labels config to 255 (default: fail that image)",
    )
    p.add_argument("--preview", action="store_true", help="also write <stem>_TrainIds_color.png")
    p.set_defaults(func=_ssa_to_trainids)

    p = subparsers.add_parser(
        "labeling-config",
        help="print the Label Studio labeling config (PolygonLabels, one Label per class)",
        description="Print (or write with --output) the Label Studio XML for a labels config.",
    )
    add_config_path(p)
    p.add_argument("--output", "-o", default=None, help="write to this file instead of stdout")
    p.set_defaults(func=_labeling_config)
