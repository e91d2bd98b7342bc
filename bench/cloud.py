"""Seconds per stage of the cloud annotation service, and what the service adds on top of
calling the pre-annotation engine directly (baseline, same models and images, same run).

N synthetic frames are flagged and shipped by the edge's own buffer + shipper into a local
store; the service (SQLite queue) takes them through pre-annotation, a real Label Studio
(``--ls-url``, token in $LABEL_STUDIO_API_KEY; the dataset goes under
$LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT), a simulated person (annotation via the REST
API) and ingestion (TrainIds + index line). Without ``--ls-url`` only the queue-side
stages run (scan + pre-annotate).

    python bench/cloud.py --ls-url http://127.0.0.1:8080 --n 8 --out bench/results/cloud.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sedna_sam.cloud import samples as q  # noqa: E402
from sedna_sam.cloud.adapters import build_engine  # noqa: E402
from sedna_sam.cloud.config import PreAnnotationOptions, ServiceConfig  # noqa: E402
from sedna_sam.cloud.service import AnnotationService  # noqa: E402
from sedna_sam.labels import cityscapes  # noqa: E402


def ship(store: Path, work: Path, seed: int, h: int, w: int) -> str:
    from sedna_sam.edge.buffer import SampleBuffer, make_sample_id, sample_metadata
    from sedna_sam.edge.shipper import ship_once
    from sedna_sam.images import encode_png
    from sedna_sam.synthetic import make_street_scene, render_scene

    data = encode_png(render_scene(make_street_scene(h, w, seed=seed), cityscapes(), seed=seed))
    sid = make_sample_id(f"bench-{seed}", data)
    meta = sample_metadata(
        sid,
        f"{sid}.png",
        data,
        score=0.9,
        scorer="msp",
        threshold=0.5,
        model_version="m0",
        node="bench",
        frame_time=time.time(),
    )
    SampleBuffer(work / "buffer").add(".png", data, meta)
    ship_once(work / "buffer", str(store), "bench")
    return sid


def annotate_as_person(ls, task_id: int) -> None:
    task = ls.task(task_id)
    result = task["predictions"][0]["result"] if task.get("predictions") else []
    ls.call("POST", f"/api/tasks/{task_id}/annotations/", json={"result": result})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=6, help="samples (default 6)")
    ap.add_argument("--size", default="64x128", help="frame HxW (default 64x128)")
    ap.add_argument("--ls-url", default=os.environ.get("LABEL_STUDIO_URL"))
    ap.add_argument("--out", default="bench/results/cloud.json")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    root = Path(os.environ.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT") or tempfile.mkdtemp())
    work = Path(tempfile.mkdtemp(prefix="bench-cloud-"))
    dataset = root / f"bench-cloud-{int(time.time())}"
    config = ServiceConfig(
        store=str(work / "store"),
        dataset_dir=dataset,
        index_path=dataset / "index.txt",
        queue_url=f"sqlite:///{work}/queue.sqlite",
        labels=cityscapes(),
        ls_url=args.ls_url or "",
        ls_token=os.environ.get("LABEL_STUDIO_API_KEY") or "",
        project=f"bench cloud {int(time.time())}",
        pre_annotation=PreAnnotationOptions(tiny_random_models=True, device="cpu"),
        poll_interval_s=0,
        batch=args.n,
    )
    Path(config.store).mkdir(parents=True)  # the shipper never creates a store root
    ids = [ship(Path(config.store), work, seed, h, w) for seed in range(args.n)]

    start = time.perf_counter()
    engine = build_engine(config)
    load_s = time.perf_counter() - start
    service = AnnotationService(config, engine=engine)

    # Baseline: the engine alone on the same images (what a script looping annotate_file does).
    from sedna_sam.annotate.batch import annotate_file
    from sedna_sam.cloud.store import fetch_sample

    base_dir = work / "baseline"
    images = [
        fetch_sample(service._store_fs, f"{service._store_root}/flagged/bench/{sid}.json", base_dir)[0]
        for sid in ids
    ]
    annotate_file(engine, images[0], work / "warm-up", save_img=True)  # first call pays one-off costs

    def baseline_round(k: int) -> float:
        start = time.perf_counter()
        for image in images:
            annotate_file(engine, image, base_dir / f"ssa-{k}", save_img=True)
        return (time.perf_counter() - start) / len(images)

    # The machine is shared: best of two rounds, one before and one after the service's run.
    baseline_s = baseline_round(0)

    start = time.perf_counter()
    service.scan()
    for s in service.queue.claim(q.RECEIVED, args.n):
        service.run_stage(q.RECEIVED, s)
    to_pre = time.perf_counter() - start
    baseline_s = min(baseline_s, baseline_round(1))
    rows = {
        "engine alone (baseline), s/image": baseline_s,
        "service scan+fetch+pre-annotate, s/image": to_pre / args.n,
    }
    if args.ls_url:
        service.run_until_idle(poll=False)
        for s in service.queue.in_state(q.IN_LABEL_STUDIO):
            annotate_as_person(service.ls, s.ls_task_id)
        service.run_until_idle(poll=True)
        done = service.queue.counts()[q.INGESTED]
        if done != args.n:
            print(f"only {done}/{args.n} ingested: {service.queue.last_errors(3)}", file=sys.stderr)
    for stage, seconds in service.metrics.mean_seconds().items():
        rows[f"stage {stage}, s/sample (mean)"] = seconds
    rows["model load (once), s"] = load_s
    print(f"{'measure':<48} {'seconds':>9}")
    for name, value in rows.items():
        print(f"{name:<48} {value:>9.3f}")
    result = {
        "n": args.n,
        "size": [h, w],
        "label_studio": bool(args.ls_url),
        "models": "tiny random-weight SAM + Segformer (CPU)",
        "rows": rows,
        "queue_counts": service.queue.counts(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "samples_per_stage": dict(service.metrics.processed),
        "overhead_ratio": float(np.float64(rows["service scan+fetch+pre-annotate, s/image"] / baseline_s)),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
