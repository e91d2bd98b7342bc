"""Conversion fidelity and speed: class map -> Label Studio polygons -> TrainIds map.

Runs, on N generated street scenes (many instances, holes, 1-3 px poles), our converters
(default simplification, and exact outlines) beside a naive baseline written here: the
approach of throwaway scripts -- the first external contour per class only, polygon
points in percent, truncated float -> int on the way back, painted in class order.
Per image: time to polygons, time back to a map, pixel accuracy, mIoU, vertices.

    python bench/conversion.py --n 10 --size 2048x1024

Prints a table and writes JSON (default bench/results/conversion.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from sedna_sam.formats.labelstudio import task_from_class_map
from sedna_sam.formats.ls_export import parse_export
from sedna_sam.formats.trainids import trainids_from_export
from sedna_sam.geometry import mean_iou, pixel_accuracy
from sedna_sam.labels import IGNORE_ID, LabelSet, cityscapes
from sedna_sam.storage import atomic_write_json
from sedna_sam.synthetic import make_street_scene


def naive_to_results(class_map: np.ndarray, labels: LabelSet) -> list[dict]:
    """Baseline: one polygon per class from the first external contour, pixel-centre
    vertices, in percent."""
    import cv2

    h, w = class_map.shape
    results = []
    for class_id in np.unique(class_map):
        if int(class_id) == IGNORE_ID:
            continue
        contours, _ = cv2.findContours(
            (class_map == class_id).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        pts = contours[0].reshape(-1, 2).astype(float)
        results.append(
            {
                "type": "polygonlabels",
                "original_width": w,
                "original_height": h,
                "value": {
                    "points": [[x / w * 100, y / h * 100] for x, y in pts],
                    "polygonlabels": [labels.id2label[int(class_id)]],
                },
            }
        )
    return results


def naive_to_map(results: list[dict], labels: LabelSet) -> np.ndarray:
    """Baseline back: truncate percent -> pixel ints, cv2.fillPoly in result order."""
    import cv2

    w, h = results[0]["original_width"], results[0]["original_height"]
    out = np.full((h, w), IGNORE_ID, dtype=np.uint16)
    label2id = labels.label2id
    for r in results:
        pts = np.array([[int(x * w / 100), int(y * h / 100)] for x, y in r["value"]["points"]], np.int32)
        cv2.fillPoly(out, [pts], int(label2id[r["value"]["polygonlabels"][0]]))
    return out


def ours(tolerance_px: float, min_area_px: float):
    def to_results(class_map, labels):
        task = task_from_class_map(
            class_map, labels, "bench.png", tolerance_px=tolerance_px, min_area_px=min_area_px
        )
        return task["predictions"][0]["result"]

    def to_map(results, labels):
        (task,) = parse_export(
            [{"id": 1, "data": {"image": "bench.png"}, "annotations": [{"id": 1, "result": results}]}]
        )
        return trainids_from_export(task, labels)

    return to_results, to_map


METHODS = {
    "ours (tolerance 1 px, min area 4)": ours(1.0, 4.0),
    "ours exact (tolerance 0)": ours(0.0, 0.0),
    "naive (first contour per class, int)": (naive_to_results, naive_to_map),
}


def run(n: int, width: int, height: int, seed: int) -> dict:
    labels = cityscapes()
    rows: dict[str, list[dict]] = {name: [] for name in METHODS}
    for i in range(n):
        truth = make_street_scene(height, width, seed=seed + i, layout="street" if i % 4 else "park")
        truth = truth.astype(np.uint16)
        for name, (to_results, to_map) in METHODS.items():
            t0 = time.perf_counter()
            results = to_results(truth, labels)
            t1 = time.perf_counter()
            # through JSON text, as the results travel through Label Studio
            results = json.loads(json.dumps(results))
            t2 = time.perf_counter()
            out = to_map(results, labels)
            t3 = time.perf_counter()
            rows[name].append(
                {
                    "to_ls_s": t1 - t0,
                    "to_trainids_s": t3 - t2,
                    "pixel_accuracy": pixel_accuracy(out, truth),
                    "miou": mean_iou(out, truth),
                    "pole_recall": float((out[truth == 5] == 5).mean()) if (truth == 5).any() else 1.0,
                    "polygons": len(results),
                    "vertices": sum(len(r["value"]["points"]) for r in results),
                }
            )
    summary = {
        name: {key: float(np.mean([r[key] for r in items])) for key in items[0]}
        for name, items in rows.items()
    }
    return {
        "n": n,
        "size": f"{width}x{height}",
        "seed": seed,
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "summary": summary,
        "per_image": rows,
    }


def print_table(result: dict) -> None:
    print(f"\n{result['n']} generated scenes at {result['size']} (mean per image)\n")
    head = f"{'method':40s} {'to LS ms':>9s} {'to map ms':>9s} {'pix acc':>8s} {'mIoU':>7s} {'poles':>6s} {'polys':>6s} {'vertices':>9s}"
    print(head)
    print("-" * len(head))
    for name, s in result["summary"].items():
        print(
            f"{name:40s} {s['to_ls_s'] * 1e3:9.1f} {s['to_trainids_s'] * 1e3:9.1f} {s['pixel_accuracy']:8.4f} "
            f"{s['miou']:7.4f} {s['pole_recall']:6.3f} {s['polygons']:6.0f} {s['vertices']:9.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10, help="number of generated scenes (default 10)")
    parser.add_argument("--size", default="2048x1024", help="WIDTHxHEIGHT (default 2048x1024)")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "conversion.json"))
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    result = run(args.n, width, height, args.seed)
    print_table(result)
    atomic_write_json(args.out, result, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
