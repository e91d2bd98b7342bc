"""Real checkpoint files with tiny dims and random weights, made once per test session
and loaded through the same code paths as downloaded weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from sedna_sam.labels import LabelSet, cityscapes


@pytest.fixture(scope="session")
def labels() -> LabelSet:
    return cityscapes()


@pytest.fixture(scope="session")
def tiny_segformer_dir(tmp_path_factory, labels) -> Path:
    """A directory in ``save_pretrained`` layout: config.json, weights, preprocessor."""
    from sedna_sam.segformer import build_tiny_segformer

    return build_tiny_segformer(tmp_path_factory.mktemp("segformer") / "tiny-segformer", labels)
