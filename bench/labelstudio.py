"""Label Studio round trip speed against a local server this script starts.

On N generated street scenes (SSA files -> ``ls_data/tasks.json`` with polygon predictions):

* push, ours: ``push_dataset`` (project + storage + batched import, idempotent), into a fresh
  project; then the same push again (nothing to import: the idempotency check alone);
* push, baseline: the same tasks imported one task per request (what a per-file loop over
  the import endpoint does), into another fresh project, same server, same run;
* pull + convert: after an annotation is created for every task (a copy of its prediction,
  not timed), ``ls pull`` (JSON-MIN export saved atomically, then TrainIds PNGs); then
  ``--only-new`` with nothing changed.

    python bench/labelstudio.py --n 200 --size 512x256

Prints a table and writes JSON (default bench/results/labelstudio.json).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

from sedna_sam.convert import TASKS_FILE, ssa_to_ls
from sedna_sam.formats.ssa import write_ssa
from sedna_sam.images import write_png
from sedna_sam.labels import cityscapes
from sedna_sam.labelstudio.api import LabelStudioClient
from sedna_sam.labelstudio.client import pull_dataset, push_dataset, read_tasks_file
from sedna_sam.labelstudio.server import start_server
from sedna_sam.storage import DatasetLayout, atomic_write_json
from sedna_sam.synthetic import make_street_scene, render_scene


def make_dataset(root: Path, n: int, width: int, height: int, labels, document_root: Path) -> list[dict]:
    import os

    layout = DatasetLayout(root)
    for i in range(n):
        label_map = make_street_scene(height, width, seed=i)
        write_png(layout.raw_data / f"scene{i:04d}.png", render_scene(label_map, labels, seed=i))
        write_ssa(layout.ssa_json(f"scene{i:04d}"), label_map, [])
    os.environ["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] = str(document_root)
    report = ssa_to_ls(root, labels, progress=False)
    assert not report.failed, report.summary()
    return read_tasks_file(layout.ls_data / TASKS_FILE)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200, help="number of tasks (default 200)")
    parser.add_argument("--size", default="512x256", help="image WIDTHxHEIGHT (default 512x256)")
    parser.add_argument("--batch-size", type=int, default=100, help="tasks per import request (default 100)")
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "results" / "labelstudio.json")
    )
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    labels = cityscapes()

    with tempfile.TemporaryDirectory(prefix="bench-ls-") as tmp:
        base = Path(tmp)
        server = start_server(base / "data", document_root=base / "files")
        try:
            ours_dir = base / "files" / "ours"
            tasks = make_dataset(ours_dir, args.n, width, height, labels, server.document_root)
            vertices = sum(len(r["value"]["points"]) for t in tasks for r in t["predictions"][0]["result"])
            with LabelStudioClient(server.url, server.token) as client:
                push_kw = dict(project="Bench batched", client=client, document_root=server.document_root)
                report, t_push = timed(
                    lambda: push_dataset(ours_dir, labels, batch_size=args.batch_size, **push_kw)
                )
                assert report.done == args.n and not report.failed, report.summary()
                again, t_again = timed(lambda: push_dataset(ours_dir, labels, **push_kw))
                assert again.done == 0 and again.skipped == args.n, again.summary()

                # baseline: one task per request
                base_proj = client.ensure_project("Bench one per request", labels)
                client.ensure_local_storage(base_proj["id"], ours_dir / "raw_data", server.document_root)

                def one_by_one():
                    for task in tasks:
                        client.import_tasks(base_proj["id"], [task])

                _, t_single = timed(one_by_one)
                assert len(list(client.iter_tasks(base_proj["id"]))) == args.n

                # annotations for every task (a person accepting the prediction), not timed
                project = client.find_project("Bench batched")
                for task in client.iter_tasks(project["id"]):
                    client.json(
                        "POST",
                        f"/api/tasks/{task['id']}/annotations/",
                        json={"result": task["predictions"][0]["result"], "task": task["id"]},
                    )
                pulled, t_pull = timed(
                    lambda: pull_dataset(client, "Bench batched", ours_dir, labels, only_new=True)
                )
                assert pulled.done == args.n and not pulled.failed, pulled.summary()
                export_bytes = Path(pulled.export_path).stat().st_size
                t0 = time.perf_counter()
                client.export(project["id"], "JSON_MIN")
                t_export = time.perf_counter() - t0
                nothing, t_nothing = timed(
                    lambda: pull_dataset(client, "Bench batched", ours_dir, labels, only_new=True)
                )
                assert nothing.done == 0, nothing.summary()
        finally:
            server.stop()

    rows = [
        ("push, batched (ours)", t_push, args.n),
        ("push, one task per request (baseline)", t_single, args.n),
        ("push rerun, nothing new (ours)", t_again, args.n),
        ("pull: export only", t_export, args.n),
        ("pull + convert to TrainIds (ours)", t_pull, args.n),
        ("pull --only-new, nothing changed", t_nothing, args.n),
    ]
    print(f"{args.n} tasks, {width}x{height} images, {vertices / args.n:.0f} polygon vertices/task, "
          f"batch {args.batch_size}, export {export_bytes / 1e6:.1f} MB")  # fmt: skip
    print(f"{'step':42s} {'seconds':>9s} {'tasks/s':>9s}")
    for name, seconds, n in rows:
        print(f"{name:42s} {seconds:9.2f} {n / seconds:9.1f}")
    print(f"batched push is {t_single / t_push:.1f}x the one-per-request import")
    atomic_write_json(
        args.out,
        {
            "n_tasks": args.n,
            "image_size": [width, height],
            "batch_size": args.batch_size,
            "vertices_per_task": vertices / args.n,
            "export_bytes": export_bytes,
            "rows": [{"step": name, "seconds": s, "tasks_per_s": n / s} for name, s, n in rows],
            "speedup_batched_vs_single": t_single / t_push,
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
            "label_studio": "local, sqlite, started by this script",
        },
        indent=1,
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
