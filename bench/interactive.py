"""Seconds per click of the interactive SAM backend: first click, cached clicks, and the
baseline that recomputes the image embedding on every click (what a backend without a
cache does), same model, same image, same clicks, one run.

Every click goes through the backend's full request path (Label Studio predict request ->
prompt -> mask decoder -> polygons in percent), not just the model.

    .venv/bin/python bench/interactive.py                      # vit_b dims, random weights
    .venv/bin/python bench/interactive.py --ckpt-path sam_vit_b_01ec64.pth

Prints a table and writes JSON (default bench/results/interactive.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_model(args):
    """A real checkpoint when given; else the model type's dims with random weights."""
    import torch

    if args.ckpt_path:
        from sedna_sam.models import load_sam

        return load_sam(args.ckpt_path, model_type=args.model_type, device=args.device), Path(
            args.ckpt_path
        ).name
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry[args.model_type or "vit_b"](checkpoint=None)
    return sam.eval().to(args.device), f"{args.model_type or 'vit_b'} (random weights)"


def click_request(task: dict, config: str, x: float, y: float, label: str) -> dict:
    """A predict request as Label Studio builds it for one smart-keypoint click."""
    region = {
        "id": "k1",
        "from_name": "click",
        "to_name": "image",
        "type": "keypointlabels",
        "origin": "manual",
        "original_width": 0,
        "original_height": 0,
        "image_rotation": 0,
        "is_positive": True,
        "value": {"x": x, "y": y, "width": 0.3, "keypointlabels": [label]},
    }
    return {
        "tasks": [task],
        "project": "1.0",
        "label_config": config,
        "params": {"context": {"result": [region]}},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt-path", default=None, help="real SAM checkpoint (default: random weights)")
    parser.add_argument("--model-type", default=None, help="vit_b (default), vit_l, vit_h")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--clicks", type=int, default=10, help="clicks on the cached embedding")
    parser.add_argument("--recompute-clicks", type=int, default=3, help="clicks for the no-cache baseline")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "interactive.json"))
    args = parser.parse_args(argv)

    import torch

    from sedna_sam.images import write_png
    from sedna_sam.labels import cityscapes
    from sedna_sam.labelstudio.backend import SamBackend
    from sedna_sam.labelstudio.image_source import ImageSource
    from sedna_sam.labelstudio.interactive import InteractiveSam
    from sedna_sam.labelstudio.label_config import interactive_labeling_config_xml
    from sedna_sam.synthetic import make_street_scene, render_scene

    labels = cityscapes()
    sam, model_name = build_model(args)
    engine = InteractiveSam(sam, cache_size=4)
    tmp_root = tempfile.mkdtemp(prefix="bench-interactive-")
    # images come from the document root, as Label Studio's local files do (absolute paths are refused)
    backend = SamBackend(engine, ImageSource(document_root=tmp_root), model_version="bench")
    config = interactive_labeling_config_xml(labels)
    rng = np.random.default_rng(0)
    n_clicks = 1 + args.clicks + args.recompute_clicks
    points = rng.uniform(5, 95, size=(n_clicks, 2))

    try:
        image = render_scene(make_street_scene(args.height, args.width, seed=0), labels, seed=0)
        write_png(Path(tmp_root) / "frame.png", image)
        task = {"id": 1, "data": {"image": "/data/local-files/?d=frame.png"}}

        def click(i: int) -> tuple[float, int]:
            t0 = time.perf_counter()
            out = backend.predict(click_request(task, config, *points[i], "car"))
            return time.perf_counter() - t0, len(out["results"][0]["result"])

        first, _ = click(0)
        cached = [click(1 + i)[0] for i in range(args.clicks)]
        recompute = []
        for i in range(args.recompute_clicks):
            engine.clear()  # the baseline: no cache, every click embeds the image again
            recompute.append(click(1 + args.clicks + i)[0])
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)

    rows = [
        ("first click (embed + decode)", [first]),
        ("further click, cached embedding", cached),
        ("every click re-embeds (no cache)", recompute),
    ]
    print(
        f"\ninteractive SAM backend, {model_name}, {args.width}x{args.height} image, {args.device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"{'case':<36} {'clicks':>6} {'s/click (median)':>17} {'min':>8} {'max':>8}")
    for name, times in rows:
        print(
            f"{name:<36} {len(times):>6} {statistics.median(times):>17.3f} {min(times):>8.3f} {max(times):>8.3f}"
        )
    speedup = statistics.median(recompute) / statistics.median(cached)
    print(f"cached click is {speedup:.0f}x faster than re-embedding; encoder runs: {engine.encoder_calls}")

    result = {
        "bench": "interactive",
        "model": model_name,
        "image": [args.height, args.width],
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "first_click_s": first,
        "cached_click_s": cached,
        "recompute_click_s": recompute,
        "cached_median_s": statistics.median(cached),
        "recompute_median_s": statistics.median(recompute),
        "speedup_cached_vs_recompute": speedup,
        "encoder_calls": engine.encoder_calls,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
