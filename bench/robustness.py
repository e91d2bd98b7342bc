"""Hostile inputs under a memory cap: each case runs in its own process with its address
space limited (``ulimit -v``, default 2 GiB) and must end as a named per-item error while
the good item beside it is done. Prints a table (input, outcome, peak RSS, seconds) and
writes JSON to ``bench/results/robustness.json``.

    python bench/robustness.py                  # all cases, 2 GiB
    python bench/robustness.py --limit-gb 1 --case png-bomb-ssa-to-ls

The commands run are torch-free (the converters through ``sedna_sam.cli.main`` with only
their own module registered; the image readers of annotate, the interactive backend and the
cloud service called directly), so their imports fit in the cap.
``tests/test_robustness.py`` runs the same cases.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

GIB = 1 << 30
GOOD = "good"  # the well-formed item every case carries beside the hostile one
W, H = 64, 48  # the good image


# ----------------------------------------------------------------------------- inputs


def png_bomb(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A valid grayscale PNG of ``width`` x ``height`` black pixels: under 1 MB on disk,
    900 MB once decoded (and 2.7 GB as RGB). Made once per path."""
    if path.exists():
        return path

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def polygon_result(points: list[list[float]], width: int | float = W, height: int | float = H) -> dict:
    return {
        "type": "polygonlabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "value": {"points": points, "polygonlabels": ["car"]},
    }


def full_task(task_id: int, image: str, results: list[dict]) -> dict:
    return {
        "id": task_id,
        "data": {"image": image},
        "annotations": [{"id": task_id * 10, "result": results, "updated_at": "2026-01-01T00:00:00Z"}],
    }


def good_dataset(root: Path) -> Path:
    """A dataset with one good image and its SSA file (the item that must still be done)."""
    import numpy as np

    from sedna_sam.formats.ssa import write_ssa
    from sedna_sam.images import write_png
    from sedna_sam.storage import DatasetLayout

    layout = DatasetLayout(root)
    write_png(layout.raw_data / f"{GOOD}.png", np.full((H, W, 3), 90, np.uint8))
    class_map = np.zeros((H, W), np.uint16)
    class_map[10:30, 5:25] = 13
    write_ssa(layout.ssa_json(GOOD), class_map, [])
    return root


def good_task() -> dict:
    return full_task(
        1, f"/data/upload/1/0123abcd-{GOOD}.png", [polygon_result([[10, 10], [60, 10], [60, 60]])]
    )


def write_export(root: Path, hostile: dict) -> None:
    (root / "ls_data").mkdir(parents=True, exist_ok=True)
    (root / "ls_data" / "export.json").write_text(json.dumps([hostile, good_task()]))


def zigzag(n: int, width: float = 100.0, height: float = 100.0) -> list[list[float]]:
    """``n`` vertices alternating between the top and bottom edge (percent): every edge
    crosses every scanline, the worst case for a rasterizer."""
    return [[width * i / (n - 1), 0.0 if i % 2 == 0 else height] for i in range(n)]


# ----------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One hostile input: ``build(work)`` writes it and returns the argv that processes it."""

    name: str
    input: str
    build: Callable[[Path], list[str]]
    expect: str | None  # in the per-item error message (None: the input must be converted)
    item: str  # the item the error must name
    done: str  # file (relative to work) the good item produces
    exit_code: int = 1


# `sedna-sam COMMAND ...` through the real ``sedna_sam.cli.main``, with only the command's own
# module registered: building the whole parser would import every command's dependencies
# (torch among them), whose address space alone may not fit in the cap.
RUN_COMMAND = "import sys, sedna_sam.cli as cli; cli.COMMAND_MODULES[:] = [sys.argv[1]]; sys.exit(cli.main(sys.argv[2:]))"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", RUN_COMMAND, "sedna_sam.commands.convert", *args]


def _ls_to_trainids(work: Path) -> list[str]:
    return _cli("ls-to-trainids", "--dataset-dir", str(work / "ds"), "--ls-json-name", "export.json")


def build_export_size(work: Path) -> list[str]:
    ds = good_dataset(work / "ds")
    write_export(
        ds,
        full_task(
            7,
            "/data/upload/1/0123abcd-huge.png",
            [polygon_result([[0, 0], [100, 0], [0, 100]], 100000, 100000)],
        ),
    )
    return _ls_to_trainids(work)


def build_zigzag(work: Path) -> list[str]:
    ds = good_dataset(work / "ds")
    write_export(
        ds, full_task(7, "/data/upload/1/0123abcd-zigzag.png", [polygon_result(zigzag(200_000), 2048, 1024)])
    )
    return _ls_to_trainids(work)


def build_zigzag_within_cap(work: Path) -> list[str]:
    ds = good_dataset(work / "ds")
    write_export(
        ds, full_task(7, "/data/upload/1/0123abcd-zigzag.png", [polygon_result(zigzag(99_999), 2048, 1024)])
    )
    return _ls_to_trainids(work)


def build_bomb_export(work: Path) -> list[str]:
    ds = good_dataset(work / "ds")
    png_bomb(ds / "raw_data" / "bomb.png")
    no_size = polygon_result([[0, 0], [100, 0], [0, 100]], None, None)  # size must come from the image
    write_export(ds, full_task(7, "/data/upload/1/0123abcd-bomb.png", [no_size]))
    return _ls_to_trainids(work)


def build_bomb_ssa(work: Path) -> list[str]:
    import numpy as np

    from sedna_sam.formats.ssa import write_ssa

    ds = good_dataset(work / "ds")
    png_bomb(ds / "raw_data" / "bomb.png")
    write_ssa(ds / "ssa_output" / "bomb_semantic.json", np.zeros((H, W), np.uint16), [])
    return _cli("ssa-to-ls", "--dataset-dir", str(ds), "--image-root", "http://images.example/")


def build_huge_rle(work: Path) -> list[str]:
    ds = good_dataset(work / "ds")
    huge = {"annotations": [], "semantic_mask": {"0": {"size": [100000, 100000], "counts": "0"}}}
    (ds / "ssa_output" / "huge_semantic.json").write_text(json.dumps(huge))
    return _cli("ssa-to-trainids", "--dataset-dir", str(ds))


READERS = """
import hashlib, json, sys
from pathlib import Path
from sedna_sam.errors import InputError
from sedna_sam.images import read_image_rgb
from sedna_sam.labelstudio.image_source import ImageSource
from sedna_sam.cloud.store import fetch_sample
from sedna_sam.storage import url_filesystem
work = Path(sys.argv[1])
bomb = work / "root" / "bomb.png"
store = work / "store"
node = store / "flagged" / "edge-1"
data = bomb.read_bytes()
(node / "bomb.png").write_bytes(data)
(node / "bomb.json").write_text(json.dumps({"image": "bomb.png", "size": len(data),
                                            "sha256": hashlib.sha256(data).hexdigest()}))
fs, root = url_filesystem(str(store))
readers = [
    ("annotate (read_image_rgb)", lambda path: read_image_rgb(path)),
    ("backend (ImageSource)", lambda path: ImageSource(document_root=str(work / "root")).load("/data/local-files/?d=" + path.name)),
    ("cloud service (fetch_sample)", lambda path: fetch_sample(fs, f"{root}/flagged/edge-1/{path.stem}.json", work / "raw", root=root)),
]
failed = 0
for name, read in readers:
    for path in (bomb, work / "root" / "good.png"):
        try:
            read(path)
            print(f"{name}: {path.name} read")
        except InputError as exc:
            failed += 1
            print(f"FAILED {path.stem}: {name}: {exc}")
sys.exit(1 if failed else 0)
"""


def build_readers(work: Path) -> list[str]:
    import hashlib

    import numpy as np

    from sedna_sam.images import encode_png

    png_bomb(work / "root" / "bomb.png")
    good = encode_png(np.full((H, W, 3), 90, np.uint8))
    (work / "root" / "good.png").write_bytes(good)
    node = work / "store" / "flagged" / "edge-1"
    node.mkdir(parents=True, exist_ok=True)
    (node / "good.png").write_bytes(good)
    meta = {"image": "good.png", "size": len(good), "sha256": hashlib.sha256(good).hexdigest()}
    (node / "good.json").write_text(json.dumps(meta))
    return [sys.executable, "-c", READERS, str(work)]


CASES = [
    Case(
        "export-size-100000",
        "0.7 KB export, original_width/height 100000",
        build_export_size,
        "over the cap",
        "task 7",
        "ds/train_ids/good_TrainIds.png",
    ),
    Case(
        "export-zigzag-200k",
        "5.4 MB export, one 200,000-vertex zigzag polygon",
        build_zigzag,
        "200000 vertices",
        "zigzag",
        "ds/train_ids/good_TrainIds.png",
    ),
    Case(
        "export-zigzag-99999",
        "2.7 MB export, one 99,999-vertex zigzag over 2048x1024 (under the vertex cap)",
        build_zigzag_within_cap,
        None,
        "zigzag",
        "ds/train_ids/zigzag_TrainIds.png",
        exit_code=0,
    ),
    Case(
        "png-bomb-ls-to-trainids",
        "0.9 MB PNG declaring 30000x30000 (export without sizes)",
        build_bomb_export,
        "pixels",
        "bomb",
        "ds/train_ids/good_TrainIds.png",
    ),
    Case(
        "png-bomb-ssa-to-ls",
        "0.9 MB PNG declaring 30000x30000 (ssa-to-ls)",
        build_bomb_ssa,
        "pixels",
        "bomb",
        "ds/ls_data/good_semantic_poly_ls.json",
    ),
    Case(
        "ssa-rle-100000",
        "SSA file whose mask declares 100000x100000",
        build_huge_rle,
        "over the cap",
        "huge",
        "ds/train_ids/good_TrainIds.png",
    ),
    Case(
        "png-bomb-readers",
        "the PNG bomb through annotate's, the backend's and the cloud service's readers",
        build_readers,
        "pixels",
        "bomb",
        "raw/good.png",
    ),
]


# ----------------------------------------------------------------------------- running


@dataclass
class Result:
    name: str
    input: str
    exit_code: int
    outcome: str
    peak_rss_mb: float
    seconds: float
    named_error: bool
    good_done: bool
    output: str


def _limit(limit_bytes: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return apply


def _outcome(case: Case, code: int, output: str, work: Path) -> tuple[str, bool]:
    output = output.replace(f"{work}/", "")
    if "Traceback" in output or code < 0:
        last = [line for line in output.splitlines() if line.strip()][-1:] or [f"signal {-code}"]
        return f"crash: {last[0][:100]}", False
    errors = [line.split("FAILED ", 1)[1] for line in output.splitlines() if "FAILED " in line]
    if case.expect is None:
        if code == 0 and not errors:
            return "converted, all items done", True
        return f"exit {code}: {(errors or ['no error line'])[0][:100]}", False
    named = [e for e in errors if case.item in e and case.expect in e]
    if named:
        message = named[0]
        at = message.find(case.expect)
        return f"per-item error ({case.item}): ...{message[max(0, at - 60) : at + 40]}...", True
    if errors:
        return f"other error: {errors[0][:100]}", False
    return f"exit {code}, no error reported", False


# Prepended to every case's ``python -c`` program: the process's own peak RSS (VmHWM of its
# address space after exec). The rusage of a child forked from a big process (pytest with
# torch loaded) would report the parent's resident pages instead.
PEAK_HOOK = (
    "import atexit as _atexit, os as _os\n"
    "def _peak():\n"
    "    with open('/proc/self/status') as f:\n"
    "        kb = next(line.split()[1] for line in f if line.startswith('VmHWM'))\n"
    "    with open(_os.environ['ROBUSTNESS_PEAK_FILE'], 'w') as f:\n"
    "        f.write(kb)\n"
    "_atexit.register(_peak)\n"
)


def run_case(
    case: Case, work: Path, limit_bytes: int = 2 * GIB, timeout_s: float = 300.0, code: str | None = None
) -> Result:
    """Build ``case`` in ``work`` and run it in a process limited to ``limit_bytes`` of
    address space; peak RSS from the child's own rusage. ``code``: run another checkout's
    ``sedna_sam`` (a directory put first on PYTHONPATH), e.g. an older release."""
    work.mkdir(parents=True, exist_ok=True)
    argv = case.build(work)
    assert argv[:2] == [sys.executable, "-c"], "cases run python -c programs"
    argv = [argv[0], "-c", PEAK_HOOK + argv[2], *argv[3:]]
    peak_file = work / "peak-kb.txt"
    peak_file.unlink(missing_ok=True)
    log_path = work / "output.txt"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env["ROBUSTNESS_PEAK_FILE"] = str(peak_file)
    if code:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(code).resolve()), env.get("PYTHONPATH")) if p
        )
    start = time.perf_counter()
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work, preexec_fn=_limit(limit_bytes)
        )
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    output = log_path.read_text(errors="replace")
    outcome, named = _outcome(case, proc.returncode, output, work)
    peak_kb = int(peak_file.read_text()) if peak_file.exists() else usage.ru_maxrss  # killed: rusage
    return Result(
        case.name,
        case.input,
        proc.returncode,
        outcome,
        round(peak_kb / 1024, 1),
        round(seconds, 2),
        named,
        (work / case.done).exists(),
        output[-4000:],
    )


def table(results: list[Result], limit_gb: float) -> str:
    lines = [
        f"address space limit {limit_gb:g} GiB per case",
        "",
        "| input | outcome | exit | good item done | peak RSS MB | seconds |",
        "|---|---|---:|---|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.input} | {r.outcome} | {r.exit_code} | {'yes' if r.good_done else 'NO'} | "
            f"{r.peak_rss_mb:.0f} | {r.seconds:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit-gb", type=float, default=2.0, help="address-space cap per case (default 2)")
    ap.add_argument("--case", action="append", default=None, help="run only this case (repeatable)")
    ap.add_argument("--work", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--out", default="bench/results/robustness.json")
    ap.add_argument(
        "--code",
        default=None,
        help="run the cases against the sedna_sam of another checkout (e.g. `git archive` of a release)",
    )
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-robustness-"))
    cases = [c for c in CASES if not args.case or c.name in args.case]
    results = []
    for case in cases:
        result = run_case(case, work / case.name, int(args.limit_gb * GIB), code=args.code)
        print(
            f"{case.name}: {result.outcome} ({result.seconds:.1f} s, {result.peak_rss_mb:.0f} MB)", flush=True
        )
        results.append(result)
    print()
    print(table(results, args.limit_gb))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "limit_gb": args.limit_gb,
        "machine": platform.platform(),
        "results": [{k: v for k, v in asdict(r).items() if k != "output"} for r in results],
    }
    out.write_text(json.dumps(summary, indent=1))
    ok = all(r.named_error and r.good_done and r.exit_code == c.exit_code for r, c in zip(results, cases))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
