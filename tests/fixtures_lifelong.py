"""Two synthetic domains on disk, as the cloud service leaves them: images, 16-bit
TrainIds PNGs and Sedna txt indexes (A = street scenes; B = fog + colour shift and a
park layout A never has), plus a tiny Segformer saved at the images' size."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sedna_sam.labels import LabelSet

SIZE = (64, 128)  # (h, w): small enough for CPU tests, big enough for 1-3 px poles


@dataclass(frozen=True)
class TwoDomains:
    root: Path
    a_train: Path  # index files
    a_test: Path
    b_train: Path
    b_test: Path
    base_model: Path  # tiny random-weight Segformer directory


def render_domain(root: Path, domain: str, seeds, labels: LabelSet, size=SIZE) -> list[tuple[Path, Path]]:
    """Write one domain's (image, TrainIds) pairs under ``root/<domain>/``."""
    from sedna_sam.images import write_png
    from sedna_sam.synthetic import make_street_scene, render_scene

    pairs = []
    for seed in seeds:
        if domain == "A":
            lab = make_street_scene(*size, seed=seed)
            img = render_scene(lab, labels, seed=seed)
        else:  # half park (a layout A never has), all foggy and tinted
            lab = make_street_scene(*size, seed=seed, layout="park" if seed % 2 else "street")
            img = render_scene(lab, labels, seed=seed, fog=0.5, tint=(0.8, 0.9, 1.2))
        image, label = (
            root / domain / f"{domain}{seed:04d}.png",
            root / domain / f"{domain}{seed:04d}_TrainIds.png",
        )
        write_png(image, img)
        write_png(label, lab.astype(np.uint16))
        pairs.append((image, label))
    return pairs


def make_two_domains(root: Path, labels: LabelSet, n_train: int = 16, n_test: int = 6) -> TwoDomains:
    from sedna_sam.lifelong.data import append_index_lines
    from sedna_sam.segformer import build_tiny_segformer

    parts = {
        "a_train": render_domain(root, "A", range(0, n_train), labels),
        "a_test": render_domain(root, "A", range(1000, 1000 + n_test), labels),
        "b_train": render_domain(root, "B", range(100, 100 + n_train), labels),
        "b_test": render_domain(root, "B", range(2000, 2000 + n_test), labels),
    }
    for name, pairs in parts.items():
        append_index_lines(root / f"{name}.txt", pairs)
    base = build_tiny_segformer(root / "base-model", labels, seed=0, input_size=SIZE)
    return TwoDomains(root, *(root / f"{n}.txt" for n in parts), base)


@pytest.fixture(scope="session")
def two_domains(tmp_path_factory, labels) -> TwoDomains:
    return make_two_domains(tmp_path_factory.mktemp("two-domains"), labels)
