"""Regenerate examples/dataset/raw_data/: small street scenes rendered from generated label
maps (sedna_sam.synthetic), one with dashes, dots and spaces in its name.

    python examples/make_example_images.py [--with-ssa]

``--with-ssa`` also writes ssa_output/<stem>_semantic.json from the exact label maps, so
the converters can be tried without running SAM (`sedna-sam annotate` writes real ones).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from sedna_sam.formats.ssa import write_ssa
from sedna_sam.storage import DatasetLayout, atomic_write_bytes
from sedna_sam.synthetic import make_street_scene, render_scene

DATASET = Path(__file__).resolve().parent / "dataset"
# (file name, seed, layout): 512x256 JPEGs, about 30-60 KB each
EXAMPLES = [
    ("street_0001.jpg", 1, "street"),
    ("frankfurt-000001 night.v2.jpg", 2, "street"),
    ("park_0003.jpg", 3, "park"),
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset-dir", default=str(DATASET))
    parser.add_argument("--with-ssa", action="store_true", help="also write exact SSA files")
    args = parser.parse_args()
    layout = DatasetLayout(Path(args.dataset_dir))
    for name, seed, scene in EXAMPLES:
        label_map = make_street_scene(256, 512, seed=seed, layout=scene)
        rgb = render_scene(label_map, seed=seed)
        ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
        assert ok
        atomic_write_bytes(layout.raw_data / name, buf.tobytes())
        if args.with_ssa:
            write_ssa(layout.ssa_json(Path(name).stem), label_map.astype(np.uint16), [])
        print(f"{layout.raw_data / name}: {len(buf) // 1024} KB")


if __name__ == "__main__":
    main()
