"""The cloud side past one process: throughput of 1 vs 2 ``cloud serve`` replicas on one
PostgreSQL queue, and the queue's claim latency under 8 concurrent consumers on
PostgreSQL vs SQLite (baseline: the embedded SQLite queue, same run).

Replicas (part 1): N synthetic frames are flagged and shipped by the edge's own buffer +
shipper into a local store; each replica is its own process running the service's real
scan, then claim (batches of 4) -> pre-annotate (``AnnotationService.step``'s first stage) with the
fast ``semantic`` pre-annotation on the tiny random-weight Segformer, so what is timed is
the queue and the per-image work, not SAM. Timing starts when every replica has loaded its
model and ends when the queue has no sample left in ``received``. Compared: 1 replica with
1 thread, 1 replica with all cores' threads, 2 replicas with 1 thread each.

Claims (part 2): a queue holding ``--claims`` received samples, 8 threads each with its own
connection claiming one sample at a time and completing it (compare-and-set to the next
state), as 8 replicas' loops do; per-claim latency percentiles, claims/s, and a check that
no sample was claimed twice.

PostgreSQL is a throwaway local server (``sedna_sam.cloud.pglocal``, Debian's
``postgresql`` package) with its default durability (fsync on).

    python bench/scaleout.py --n 48 --out bench/results/scaleout.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sedna_sam.cloud import queue as q  # noqa: E402
from sedna_sam.cloud.config import PreAnnotationOptions  # noqa: E402
from sedna_sam.cloud.samples import PRE_ANNOTATED, RECEIVED  # noqa: E402
from sedna_sam.labels import cityscapes  # noqa: E402


def ship_frames(store: Path, work: Path, n: int, h: int, w: int) -> None:
    """Flag and ship ``n`` synthetic street frames the way an edge node does."""
    from sedna_sam.edge.buffer import SampleBuffer, make_sample_id, sample_metadata
    from sedna_sam.edge.shipper import ship_once
    from sedna_sam.images import encode_png
    from sedna_sam.synthetic import make_street_scene, render_scene

    buffer = SampleBuffer(work / "buffer")
    for seed in range(n):
        data = encode_png(render_scene(make_street_scene(h, w, seed=seed), cityscapes(), seed=seed))
        sid = make_sample_id(f"scaleout-{seed}", data)
        meta = sample_metadata(
            sid, f"{sid}.png", data, score=0.9, scorer="msp", threshold=0.5,
            model_version="m0", node=f"edge-{seed % 3}", frame_time=time.time(),
        )  # fmt: skip
        buffer.add(".png", data, meta)
    ship_once(work / "buffer", str(store), "bench")


def replica_process(config_kw: dict, threads: int, ready, go, result_queue) -> None:
    """One replica: load the model, wait for the start, then scan + claim + pre-annotate
    until nothing is left in ``received``."""
    import torch

    torch.set_num_threads(threads)
    import numpy as np

    from sedna_sam.cloud.config import ServiceConfig
    from sedna_sam.cloud.service import AnnotationService

    service = AnnotationService(ServiceConfig(**config_kw))
    service.engine.annotate(np.zeros((64, 128, 3), np.uint8))  # model loaded and warm before the clock
    ready.release()
    go.wait()
    done = 0
    service.scan()  # what step() does first; every replica scans, the queue receives each sample once
    while True:
        claimed = service.queue.claim(RECEIVED, service.config.batch, owner=service.replica_id, lease_s=600)
        if not claimed:
            if service.queue.counts().get(RECEIVED, 0) == 0:
                break
            time.sleep(0.05)  # held by the other replica's lease
            continue
        done += sum(service._run_claimed(RECEIVED, s) for s in claimed)
    result_queue.put((service.replica_id, done, time.time()))


def time_replicas(
    replicas: int, threads: int, queue_url: str, store: Path, root: Path, semantic: Path, n: int
) -> dict:
    ctx = multiprocessing.get_context("spawn")
    ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    dataset = root / "dataset"
    config_kw = dict(
        store=str(store),
        dataset_dir=dataset,
        index_path=dataset / "index.txt",
        queue_url=queue_url,
        labels=cityscapes(),
        pre_annotation=PreAnnotationOptions(kind="semantic", semantic_model=str(semantic), device="cpu"),
        batch=4,
    )
    procs = []
    for i in range(replicas):
        kw = dict(config_kw, replica_id=f"replica-{i}")
        proc = ctx.Process(target=replica_process, args=(kw, threads, ready, go, results))
        proc.start()
        procs.append(proc)
    for _ in procs:
        if not ready.acquire(timeout=600):
            raise SystemExit("a replica did not start within 600 s")
    start = time.time()
    go.set()
    per_replica = {}
    end = start
    for _ in procs:
        replica_id, done, finished = results.get(timeout=3600)
        per_replica[replica_id] = done
        end = max(end, finished)
    for proc in procs:
        proc.join(60)
    queue = q.open_queue(queue_url)
    counts = queue.counts()
    queue.close()
    wall = end - start
    assert sum(per_replica.values()) == n, f"pre-annotated {per_replica}, expected {n} in all"
    assert counts.get(PRE_ANNOTATED, 0) == n, counts
    return {
        "replicas": replicas,
        "threads_per_replica": threads,
        "images": n,
        "wall_s": round(wall, 2),
        "images_per_s": round(n / wall, 3),
        "per_replica": per_replica,
    }


def time_claims(queue_url: str, n: int, consumers: int) -> dict:
    """``consumers`` threads, each with its own connection, claim one sample at a time and
    complete it, until the queue has none left."""
    setup = q.open_queue(queue_url)
    for i in range(n):
        setup.receive(f"s{i:05d}", node="bench")
    setup.close()
    latencies: list[float] = []
    claimed_by: dict[str, list[str]] = {}
    lock = threading.Lock()
    barrier = threading.Barrier(consumers)

    def consumer(k: int) -> None:
        queue = q.open_queue(queue_url)
        owner = f"consumer-{k}"
        mine: list[tuple[float, str]] = []
        barrier.wait()
        while True:
            t0 = time.perf_counter()
            got = queue.claim(RECEIVED, 1, owner=owner, lease_s=600)
            seconds = time.perf_counter() - t0
            if not got:
                break
            sid = got[0].sample_id
            mine.append((seconds, sid))
            queue.advance(sid, RECEIVED, PRE_ANNOTATED)
            queue.release(sid, owner)
        queue.close()
        with lock:
            for seconds, sid in mine:
                latencies.append(seconds)
                claimed_by.setdefault(sid, []).append(owner)

    start = time.perf_counter()
    threads = [threading.Thread(target=consumer, args=(k,)) for k in range(consumers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    twice = sum(1 for owners in claimed_by.values() if len(owners) > 1)
    ms = sorted(x * 1000 for x in latencies)

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(p / 100 * len(ms)))], 2)

    return {
        "consumers": consumers,
        "claims": len(ms),
        "claimed_twice": twice,
        "missed": n - len(claimed_by),
        "claim_ms_p50": pct(50),
        "claim_ms_p90": pct(90),
        "claim_ms_p99": pct(99),
        "claim_ms_mean": round(statistics.fmean(ms), 2),
        "claims_per_s": round(len(ms) / wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=48, help="frames for the replica runs (default 48)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--claims", type=int, default=800, help="samples for the claim-latency runs")
    parser.add_argument("--consumers", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("bench/results/scaleout.json"))
    args = parser.parse_args(argv)

    from sedna_sam.cloud.pglocal import start_local_postgres
    from sedna_sam.segformer import build_tiny_segformer

    cores = os.cpu_count() or 1
    pg = start_local_postgres(durable=True)
    rows_claims, rows_replicas = [], []
    try:
        with tempfile.TemporaryDirectory(prefix="sedna-sam-scaleout-") as tmp:
            tmp = Path(tmp)
            for backend in ("sqlite", "postgresql"):
                url = (
                    f"sqlite:///{tmp}/claims.sqlite" if backend == "sqlite" else pg.create_database("claims")
                )
                row = {"backend": backend, **time_claims(url, args.claims, args.consumers)}
                rows_claims.append(row)
                print(f"[claims] {backend}: {row}", flush=True)

            store, semantic = tmp / "store", tmp / "segformer_tiny_random"
            store.mkdir()
            build_tiny_segformer(semantic, cityscapes())
            ship_frames(store, tmp / "edge", args.n, args.height, args.width)
            for k, (replicas, threads) in enumerate([(1, 1), (1, cores), (2, 1)]):
                url = pg.create_database(f"replicas_{k}")
                row = time_replicas(replicas, threads, url, store, tmp / f"run{k}", semantic, args.n)
                rows_replicas.append(row)
                print(f"[replicas] {row}", flush=True)
    finally:
        pg.stop()

    base = rows_replicas[0]["images_per_s"]
    print(f"\nReplicas on one PostgreSQL queue: {args.n} frames {args.width}x{args.height}, semantic "
          f"pre-annotation (tiny random Segformer), {cores} cores")  # fmt: skip
    print("| replicas | threads each | wall s | images/s | vs 1 replica, 1 thread | per replica |")
    print("|---:|---:|---:|---:|---:|---|")
    for r in rows_replicas:
        print(
            f"| {r['replicas']} | {r['threads_per_replica']} | {r['wall_s']} | {r['images_per_s']} | "
            f"{r['images_per_s'] / base:.2f}x | {r['per_replica']} |"
        )
    print(f"\nClaim latency, {args.consumers} concurrent consumers, {args.claims} samples")
    print("| queue | claim ms p50 | p90 | p99 | claims/s | claimed twice | missed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows_claims:
        print(
            f"| {r['backend']} | {r['claim_ms_p50']} | {r['claim_ms_p90']} | {r['claim_ms_p99']} | "
            f"{r['claims_per_s']} | {r['claimed_twice']} | {r['missed']} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"cores": cores, "n": args.n, "size": [args.height, args.width],
               "replicas": rows_replicas, "claims": rows_claims}  # fmt: skip
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp_out, args.out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
