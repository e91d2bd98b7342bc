"""CLI subcommand modules: each has ``register(subparsers)``; see :mod:`sedna_sam.cli`."""

from __future__ import annotations

import argparse
import logging

from sedna_sam.errors import BatchReport

log = logging.getLogger(__name__)


def add_dataset_dir(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--dataset-dir",
        "--dataset_dir",
        dest="dataset_dir",
        required=required,
        help="dataset root holding raw_data/, ssa_output/, ls_data/, train_ids/",
    )


def add_config_path(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-path",
        "--config_path",
        dest="config_path",
        default=None,
        help="labels config JSON (id2label), or a dataset name: cityscapes (default), foggy_driving, ade20k",
    )


def finish(report: BatchReport) -> int:
    """Log a batch's summary (as an error when items failed) and return its exit code."""
    (log.error if report.failed else log.info)("%s", report.summary())
    return report.exit_code
