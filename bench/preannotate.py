"""Pre-annotation speed: SAM's automatic masks (stock vs ours per mode), then the rest of
the pipeline (ours vs a straightforward SSA-style loop), same models, same images, same run.

Part ``sam`` (default): segment-anything's own ``SamAutomaticMaskGenerator`` against our
generator (sedna_sam/annotate/amg.py) in each mode ``backend/precision[/encoder precision]``
(e.g. ``eager/fp32`` = the exact mode, ``compiled-factored/fp32``, ``compiled/bf16/bf16``),
on the same checkpoint and
images, interleaved in one process (stock, then each mode, per image and repeat), at two
SAM settings:

- ``bench``: 32 points per side, no crop layer (1024 prompts per image);
- ``ssa``: the SSA defaults we ship (64 points per side + one crop layer: 4096 + 4 x 1024
  prompts, 5 encoder passes).

Both use SSA's thresholds (pred_iou 0.86, stability 0.92, box NMS 0.7, min region 100).
Per run: wall and process CPU seconds, per stage (encoder, decoder, upsample, post =
filters/NMS/small regions/RLE), masks per step; the exact mode's records are compared
with the stock ones (identical or not), the others by matched-mask IoU and by the masks
left after each filter (equal to the exact mode's or not). Compilation and
ONNX export happen in a warm-up before the timed runs and are reported separately.
Speed-ups are medians over the paired runs of stock time / our time.

Part ``pipeline``: the rest of one image (semantic model, voting, JSON), ours vs the
baseline written here the way SSA's script does it, on the masks of the exact mode (8x8
points, filters opened so that masks exist to vote on), plus voting alone on 300
synthetic masks at 2048x1024.

    python bench/preannotate.py --n 2 --size 1024x512 --configs bench \
        --modes eager/fp32,onnx/fp32,compiled-factored/fp32,compiled-factored/bf16/bf16 --threads 2

Random weights (no checkpoint download here) score every mask low: at SSA's thresholds few
or none survive, so the post-processing share is smaller than with real weights (see
docs/annotate.md); ``--open-filters`` opens them instead. Prints tables, writes JSON (default
bench/results/preannotate.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from sedna_sam.labels import cityscapes
from sedna_sam.storage import atomic_write_json
from sedna_sam.synthetic import make_street_scene, render_scene

# --- the baseline (written here, the plain way) -------------------------------------------


def baseline_semantic(model, processor, image: np.ndarray):
    """Image processor (PIL path) -> model -> full-size upsample -> argmax; (H, W) torch int64."""
    import torch
    import torch.nn.functional as F

    inputs = processor(images=image, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**inputs).logits
        logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
    return logits[0].argmax(0)


def baseline_vote(class_ids, records: list[dict]):
    """SSA's loop: every mask decoded to full size, votes on the original map, overwrites."""
    import torch
    from pycocotools import mask as mask_utils

    final = class_ids.clone()
    names = []
    for rec in records:
        rle = dict(rec["segmentation"])
        rle["counts"] = rle["counts"].encode("ascii")
        mask = torch.from_numpy(mask_utils.decode(rle)).bool()
        inside = class_ids[mask]
        if inside.numel() == 0:
            names.append(None)
            continue
        top = int(torch.bincount(inside.flatten()).argmax())  # argmax: ties -> smallest id
        final[mask] = top
        names.append(top)
    return final, names


def baseline_write(path: Path, final, records: list[dict]) -> None:
    from pycocotools import mask as mask_utils

    doc = {"annotations": records, "semantic_mask": {}}
    for cid in torch_unique(final):
        rle = mask_utils.encode(np.asfortranarray((final == cid).numpy().astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("utf-8")
        doc["semantic_mask"][str(int(cid))] = rle
    with open(path, "w") as f:
        json.dump(doc, f)


def torch_unique(t):
    import torch

    return torch.unique(t).tolist()


# --- models -------------------------------------------------------------------------------


def prepare_models(args, work: Path, labels):
    from sedna_sam.models import build_tiny_sam
    from sedna_sam.segformer import save_segformer

    ckpt = args.ckpt
    if not ckpt:
        ckpt = work / f"sam_{args.model}_random_calibrated.pth"
        if not ckpt.exists():
            print(f"building a random-weight {args.model} checkpoint at {ckpt} ...")
            build_tiny_sam(ckpt, args.model)
            calibrate_random_sam(ckpt)
    semantic = args.semantic_model
    if not semantic:
        import torch
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        semantic = work / "segformer_b0_random"
        if not (semantic / "config.json").exists():
            torch.manual_seed(0)
            config = SegformerConfig(  # B0 dims (transformers' defaults), Cityscapes classes
                num_labels=len(labels),
                id2label=dict(labels.id2label),
                label2id=labels.label2id,
            )
            save_segformer(SegformerForSemanticSegmentation(config), semantic, input_size=(512, 1024))
    return str(ckpt), str(semantic)


# Random weights predict IoU ~0.03 and logits under 1, so at SSA's thresholds no mask
# survives (and the stock generator then fails on an image with crops: it indexes an empty
# crop-box tensor). Two edits give the random checkpoint real SAM's orders of magnitude:
# IoU head bias +0.83 (about half the candidates pass pred_iou_thresh 0.86, 9 prompts in
# 10 keep at least one) and hypernetwork outputs x150 (logits of ~5-30: about a third pass
# stability 0.92). Masks stay random textures (large, noisy outlines).
IOU_BIAS_SHIFT = 0.83
LOGIT_SCALE = 150.0


def calibrate_random_sam(path: Path) -> None:
    """Apply the two edits above to a random-weight SAM checkpoint file, in place."""
    import io

    import torch

    from sedna_sam.storage import atomic_write_bytes

    state = torch.load(path, map_location="cpu", weights_only=True)
    for i in range(4):
        for kind in ("weight", "bias"):
            state[f"mask_decoder.output_hypernetworks_mlps.{i}.layers.2.{kind}"] *= LOGIT_SCALE
    state["mask_decoder.iou_prediction_head.layers.2.bias"] += IOU_BIAS_SHIFT
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def synthetic_rles(h: int, w: int, n: int, seed: int = 0) -> list[dict]:
    """``n`` blob masks (rectangles with holes) as SAM-like records, largest first."""
    from sedna_sam.formats.ssa import encode_rle

    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n):
        mh, mw = int(rng.integers(8, h // 2)), int(rng.integers(8, w // 3))
        y, x = int(rng.integers(0, h - mh)), int(rng.integers(0, w - mw))
        mask = np.zeros((h, w), dtype=bool)
        mask[y : y + mh, x : x + mw] = rng.random((mh, mw)) < 0.97
        records.append({"segmentation": encode_rle(mask), "area": int(mask.sum())})
    records.sort(key=lambda r: r["area"], reverse=True)
    return records


def bench_pipeline(args, work: Path, labels, ckpt: str, semantic: str) -> dict:
    """Semantic + voting + JSON: ours vs the SSA-style baseline, on the exact mode's masks."""
    import torch
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    from sedna_sam.annotate.engine import AnnotateOptions, Annotator
    from sedna_sam.annotate.labelers import SemanticEvidence
    from sedna_sam.annotate.modes import SamMode
    from sedna_sam.annotate.sam import sam_params
    from sedna_sam.annotate.voting import MaskSet, class_counts_and_owner, paint, ssa_vote
    from sedna_sam.formats.ssa import ssa_document

    w, h = (int(v) for v in args.size.lower().split("x"))
    # Random weights score masks low: open SAM's filters so masks exist to vote on.
    random_sam = args.ckpt is None
    params = sam_params(
        "cityscapes",
        points_per_side=args.points_per_side,
        crop_n_layers=args.crop_n_layers,
        pred_iou_thresh=0.0 if random_sam else None,
        stability_score_thresh=0.0 if random_sam else None,
        box_nms_thresh=1.0 if random_sam else None,  # random masks overlap: keep them all
    )
    options = AnnotateOptions(
        ckpt, semantic, labels, sam=params, device=args.device, sam_mode=SamMode("eager", "fp32", "fp32")
    )
    t0 = time.perf_counter()
    annotator = Annotator.from_options(options)
    load_s = time.perf_counter() - t0
    device = annotator.mask_branch.device
    base_model = SegformerForSemanticSegmentation.from_pretrained(semantic).eval().to("cpu")
    base_proc = SegformerImageProcessor.from_pretrained(semantic)

    # Warm-up (first forward passes allocate and pick kernels), not timed.
    warm = render_scene(make_street_scene(h, w, seed=99), labels, seed=99)
    annotator.semantic.predict(warm)
    baseline_semantic(base_model, base_proc, warm)

    rows = []
    for i in range(args.n):
        image = render_scene(make_street_scene(h, w, seed=100 + i), labels, seed=100 + i)
        records = annotator.mask_branch.generate(image)
        sam_t = dict(annotator.mask_branch.last_timings)
        n_masks = len(records)

        # ours
        t = time.perf_counter()
        ids = annotator.semantic.predict(image)
        ours_sem = time.perf_counter() - t
        t = time.perf_counter()
        masks = MaskSet.from_rles([r["segmentation"] for r in records], image.shape[:2])
        counts, owner = class_counts_and_owner(ids, masks)
        result = annotator.labeler(image, masks, SemanticEvidence(ids, counts, owner))
        ours_map = paint(ids, owner, result.class_ids)
        ours_vote = time.perf_counter() - t
        t = time.perf_counter()
        recs = [dict(r) for r in records]
        atomic_write_json(work / f"ours_{i}.json", ssa_document(ours_map.astype(np.uint16), recs))
        ours_io = time.perf_counter() - t

        # baseline
        t = time.perf_counter()
        base_ids = baseline_semantic(base_model, base_proc, image)
        base_sem = time.perf_counter() - t
        t = time.perf_counter()
        base_map, _ = baseline_vote(base_ids, records)
        base_vote = time.perf_counter() - t
        t = time.perf_counter()
        baseline_write(work / f"base_{i}.json", base_map, [dict(r) for r in records])
        base_io = time.perf_counter() - t
        # Same rule: our voting on the baseline's semantic map must give its final map.
        same_rule = bool(np.array_equal(ssa_vote(base_ids.numpy(), masks)[1], base_map.numpy()))
        semantic_agree = float((ids == base_ids.numpy()).mean())
        rows.append(
            dict(
                image=i,
                masks=n_masks,
                encoder=sam_t["encoder"],
                decoder=sam_t["decoder"],
                ours=dict(semantic=ours_sem, voting=ours_vote, io=ours_io),
                baseline=dict(semantic=base_sem, voting=base_vote, io=base_io),
                voting_identical_on_same_semantic_map=same_rule,
                semantic_pixel_agreement=semantic_agree,
            )
        )
        print(f"image {i}: {n_masks} masks, encoder {sam_t['encoder']:.1f}s, decoder {sam_t['decoder']:.1f}s")

    # voting alone, synthetic masks at 2048x1024
    vh, vw = 1024, 2048
    rng = np.random.default_rng(1)
    ids = np.kron(rng.integers(0, 19, (vh // 32, vw // 32)), np.ones((32, 32), dtype=np.int64))
    vrec = synthetic_rles(vh, vw, args.voting_masks)
    t = time.perf_counter()
    _, ours_final = ssa_vote(ids, MaskSet.from_rles([r["segmentation"] for r in vrec], (vh, vw)))
    v_ours = time.perf_counter() - t
    t = time.perf_counter()
    base_final, _ = baseline_vote(torch.from_numpy(ids), vrec)
    v_base = time.perf_counter() - t
    voting_only = dict(
        size=f"{vw}x{vh}",
        masks=len(vrec),
        ours_s=v_ours,
        baseline_s=v_base,
        identical=bool(np.array_equal(ours_final, base_final.numpy())),
    )

    def mean(key, side=None):
        vals = [r[side][key] if side else r[key] for r in rows]
        return float(np.mean(vals)) if vals else 0.0

    enc, dec = mean("encoder"), mean("decoder")
    summary = {}
    for side in ("ours", "baseline"):
        parts = {k: mean(k, side) for k in ("semantic", "voting", "io")}
        summary[side] = dict(encoder=enc, decoder=dec, **parts, total=enc + dec + sum(parts.values()))
    print()
    print(
        f"SAM {Path(ckpt).name} on {device}, {args.n} images {w}x{h}, points_per_side {args.points_per_side}, "
        f"crop_n_layers {args.crop_n_layers}, masks/image {mean('masks'):.0f}; seconds per image"
    )
    print(f"{'':10}{'encoder':>9}{'decoder':>9}{'semantic':>10}{'voting':>9}{'io':>8}{'total':>9}")
    for side, s in summary.items():
        print(
            f"{side:10}{s['encoder']:9.2f}{s['decoder']:9.2f}{s['semantic']:10.2f}{s['voting']:9.3f}{s['io']:8.3f}{s['total']:9.2f}"
        )
    print(
        f"voting only, {voting_only['size']}, {voting_only['masks']} masks: ours {v_ours:.2f}s, "
        f"baseline loop {v_base:.2f}s, identical maps: {voting_only['identical']}"
    )
    return dict(
        settings=dict(
            n=args.n,
            size=args.size,
            sam=Path(ckpt).name,
            random_sam=random_sam,
            semantic=str(semantic),
            points_per_side=args.points_per_side,
            crop_n_layers=args.crop_n_layers,
            model_load_s=load_s,
            device=device,
        ),
        per_image=rows,
        seconds_per_image=summary,
        voting_only=voting_only,
    )


# --- SAM: stock AMG vs ours per mode -------------------------------------------------------

SAM_CONFIGS = {
    "bench": dict(points_per_side=32, crop_n_layers=0),
    "ssa": {},  # SamParams() as shipped: 64 points per side, one crop layer
}
STAGES = ("encoder", "decoder", "upsample", "post")


class Clock:
    """Wall and process-CPU seconds accumulated per stage."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def add(self, stage: str, wall: float, cpu: float) -> None:
        self.wall[stage] = self.wall.get(stage, 0.0) + wall
        self.cpu[stage] = self.cpu.get(stage, 0.0) + cpu


class StockRunner:
    """segment-anything's own generator, its stages timed through instance wrappers:
    ``set_image`` (encoder), ``predict_torch`` (decoder, minus its ``postprocess_masks``:
    upsample); the rest of ``generate`` is post-processing."""

    name = "stock"

    def __init__(self, sam, params: dict) -> None:
        from segment_anything import SamAutomaticMaskGenerator

        self.generator = SamAutomaticMaskGenerator(sam, output_mode="coco_rle", **params)
        self.clock = Clock()
        self.sync = _sync_for(sam)
        predictor = self.generator.predictor
        predictor.set_image = self._timed("encoder", predictor.set_image)
        predictor.predict_torch = self._timed("predict", predictor.predict_torch)
        # The bound method of the class, so that a runner made later replaces this wrapper.
        sam.postprocess_masks = self._timed("upsample", type(sam).postprocess_masks.__get__(sam))

    def _timed(self, stage: str, fn):
        def run(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            out = fn(*args, **kwargs)
            self.sync()
            self.clock.add(stage, time.perf_counter() - wall, time.process_time() - cpu)
            return out

        return run

    def warmup(self, size: tuple[int, int]) -> float:
        return 0.0

    def run(self, image: np.ndarray) -> tuple[list[dict], dict, dict, dict]:
        self.clock = clock = Clock()
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            records = self.generator.generate(image)
        except IndexError:  # the stock generator's known failure when no crop keeps a mask
            records = []  # counted as 0 records
        self.sync()
        total_wall, total_cpu = time.perf_counter() - wall, time.process_time() - cpu
        stages = {}
        for kind, table, total in (("wall", clock.wall, total_wall), ("cpu", clock.cpu, total_cpu)):
            enc, pred, up = (table.get(k, 0.0) for k in ("encoder", "predict", "upsample"))
            stages[kind] = dict(
                encoder=enc, decoder=pred - up, upsample=up, post=total - enc - pred, total=total
            )
        return records, stages, {}, {}


class OursRunner:
    """Our generator in one mode; ``warmup`` compiles/exports before the timed runs."""

    def __init__(self, sam, params: dict, spec: str) -> None:
        from sedna_sam.annotate.amg import MaskGenerator
        from sedna_sam.annotate.backends import make_backend
        from sedna_sam.annotate.modes import CUDA_DECODER_BATCH
        from sedna_sam.annotate.precision import precision

        parts = spec.split("/")
        backend, prec = parts[0], parts[1] if len(parts) > 1 else "fp32"
        encoder = parts[2] if len(parts) > 2 else "fp32"
        self.name = spec
        device = str(sam.device)
        batch = params["points_per_batch"]
        if device.startswith("cuda") and backend != "eager":
            batch = max(batch, CUDA_DECODER_BATCH)
        self.generator = MaskGenerator(
            sam,
            make_backend(backend, sam, precision(prec, device), batch),
            precision(encoder, device),
            encoder_batch=8 if device.startswith("cuda") else 1,
            detailed_timings=True,
            **dict(params, points_per_batch=batch),
        )
        self.exact = backend == "eager" and prec == "fp32" and encoder == "fp32"

    def warmup(self, size: tuple[int, int]) -> float:
        seconds = self.generator.warmup(size)
        return (
            seconds + self.generator.backend.warmup_seconds
            if self.generator.backend.name.startswith("onnx")
            else seconds
        )

    def run(self, image: np.ndarray) -> tuple[list[dict], dict, dict, dict]:
        wall, cpu = time.perf_counter(), time.process_time()
        records = self.generator.generate(image)
        total_wall, total_cpu = time.perf_counter() - wall, time.process_time() - cpu
        watch = self.generator.watch
        stages = {}
        for kind, table, total in (("wall", watch.wall, total_wall), ("cpu", watch.cpu, total_cpu)):
            enc, dec, up = (table.get(k, 0.0) for k in ("encoder", "decoder", "upsample"))
            stages[kind] = dict(
                encoder=enc, decoder=dec, upsample=up, post=total - enc - dec - up, total=total
            )
        backend = self.generator.backend
        info = {"fallback": backend.fallback, "effective_backend": backend.effective}
        return records, stages, dict(self.generator.counts), info


def _sync_for(sam):
    import torch

    if str(sam.device).startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def compare_records(ours: list[dict], stock: list[dict]) -> dict:
    """identical (same JSON text), and matched-mask IoU: for each stock mask the best IoU
    with one of ours (percentiles), plus the counts."""
    from pycocotools import mask as mask_utils

    out = dict(identical=json.dumps(ours) == json.dumps(stock), stock_masks=len(stock), our_masks=len(ours))
    if stock and ours:

        def rles(records):
            return [dict(r["segmentation"], counts=r["segmentation"]["counts"].encode()) for r in records]

        best = np.asarray(mask_utils.iou(rles(stock), rles(ours), [0] * len(ours))).max(1)
        out.update(iou_p1=float(np.percentile(best, 1)), iou_median=float(np.median(best)))
    elif stock or ours:
        out.update(iou_p1=0.0, iou_median=0.0)
    return out


def bench_sam(args, ckpt: str) -> dict:
    import torch

    from sedna_sam.annotate.sam import SamParams
    from sedna_sam.labels import cityscapes
    from sedna_sam.models import load_sam

    labels = cityscapes()
    w, h = (int(v) for v in args.size.lower().split("x"))
    sam = load_sam(ckpt, device=args.device)
    device = str(sam.device)
    modes = [m for m in args.modes.split(",") if m]
    results = {}
    for config in [c for c in args.configs.split(",") if c]:
        from dataclasses import asdict

        params = asdict(SamParams())
        params.update(SAM_CONFIGS[config])
        if args.sam_points:
            params["points_per_side"] = args.sam_points
        if args.open_filters:
            params.update(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
        print(f"\n== {config}: {params}", flush=True)
        runners = [StockRunner(sam, params)] + [OursRunner(sam, params, m) for m in modes]
        warmups = {}
        for r in runners[1:]:
            warmups[r.name] = r.warmup((h, w))
            print(f"warm-up {r.name}: {warmups[r.name]:.1f} s", flush=True)
        runs = []
        for i in range(args.n):
            image = render_scene(make_street_scene(h, w, seed=100 + i), labels, seed=100 + i)
            for rep in range(args.reps):
                stock_records = None
                for r in runners:
                    records, stages, counts, info = r.run(image)
                    row = dict(
                        config=config, image=i, rep=rep, mode=r.name, stages=stages, counts=counts, **info
                    )
                    if r.name == "stock":
                        stock_records = records
                        row["masks"] = len(records)
                    else:
                        row["vs_stock"] = compare_records(records, stock_records)
                        row["masks"] = len(records)
                    runs.append(row)
                    extra = "" if r.name == "stock" else f" vs stock {row['vs_stock']}"
                    print(
                        f"  image {i} rep {rep} {r.name:22} wall {stages['wall']['total']:7.1f} s  "
                        f"cpu {stages['cpu']['total']:7.1f} s  masks {len(records)}{extra}",
                        flush=True,
                    )
        results[config] = dict(params=params, warmup_s=warmups, runs=runs, summary=summarize(runs, modes))
        print_table(config, results[config]["summary"], w, h, args.n, args.reps)
    return dict(
        sam=Path(ckpt).name, size=args.size, device=device, threads=torch.get_num_threads(), configs=results
    )


def summarize(runs: list[dict], modes: list[str]) -> dict:
    """Medians per mode of wall/CPU per stage, and of the paired speed-ups over stock."""
    stock = {(r["image"], r["rep"]): r for r in runs if r["mode"] == "stock"}
    out = {}
    for mode in ["stock", *modes]:
        rows = [r for r in runs if r["mode"] == mode]
        entry = {}
        for kind in ("wall", "cpu"):
            entry[kind] = {
                s: float(np.median([r["stages"][kind][s] for r in rows])) for s in (*STAGES, "total")
            }
            if mode != "stock":
                ratios = [
                    stock[(r["image"], r["rep"])]["stages"][kind]["total"] / r["stages"][kind]["total"]
                    for r in rows
                ]
                entry[f"speedup_{kind}"] = float(np.median(ratios))
        entry["masks"] = float(np.median([r["masks"] for r in rows]))
        if mode != "stock":
            entry["identical"] = all(r["vs_stock"]["identical"] for r in rows)
            p1 = [r["vs_stock"].get("iou_p1") for r in rows if "iou_p1" in r["vs_stock"]]
            entry["iou_p1_min"] = min(p1) if p1 else None
            entry["fallback"] = next((r["fallback"] for r in rows if r.get("fallback")), None)
            # Masks left after each filter (IoU, stability, edge, NMS, ...) equal to the exact
            # mode's: the same candidates crossed every threshold, not only the final records.
            exact = {(r["image"], r["rep"]): r["counts"] for r in runs if r["mode"] == "eager/fp32"}
            if exact:
                entry["counts_as_exact"] = all(r["counts"] == exact[(r["image"], r["rep"])] for r in rows)
        out[mode] = entry
    return out


def print_table(config: str, summary: dict, w: int, h: int, n: int, reps: int) -> None:
    print(f"\n{config}: {n} images {w}x{h} x {reps} paired runs; medians, seconds per image (wall / CPU)")
    head = (
        f"{'mode':24}"
        + "".join(f"{s:>16}" for s in (*STAGES, "total"))
        + f"{'speed-up':>16}{'masks':>7}  same as stock"
    )
    print(head)
    for mode, e in summary.items():
        cells = "".join(f"{e['wall'][s]:8.1f}/{e['cpu'][s]:<7.1f}" for s in (*STAGES, "total"))
        speed = "" if mode == "stock" else f"{e['speedup_wall']:7.2f}x/{e['speedup_cpu']:.2f}x"
        same = ""
        if mode != "stock":
            same = "identical" if e["identical"] else f"IoU p1 {e['iou_p1_min']}"
            if "counts_as_exact" in e:
                same += ", filter counts " + ("= exact" if e["counts_as_exact"] else "differ")
            if e.get("fallback"):
                same += f" (fell back: {e['fallback']})"
        print(f"{mode:24}{cells}{speed:>16}{e['masks']:7.0f}  {same}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", default="sam,pipeline", help="sam, pipeline or both (default)")
    parser.add_argument("--n", type=int, default=2, help="images")
    parser.add_argument("--reps", type=int, default=1, help="paired runs per image (stock and every mode)")
    parser.add_argument("--size", default="1024x512", help="WxH of the generated images")
    parser.add_argument(
        "--model", default="vit_b", help="random-weight SAM to build: vit_b (default), vit_l, vit_h, tiny"
    )
    parser.add_argument("--ckpt", default=None, help="a real SAM checkpoint instead")
    parser.add_argument("--configs", default="bench,ssa", help="SAM settings: bench (32 pts, no crops), ssa")
    parser.add_argument(
        "--modes",
        default="eager/fp32,factored/fp32,onnx-factored/fp32,compiled-factored/fp32,compiled-factored/bf16/bf16",
        help="our modes, backend/precision[/encoder precision]",
    )
    parser.add_argument("--open-filters", action="store_true", help="thresholds 0, box NMS 1.0 (sam part)")
    parser.add_argument("--sam-points", type=int, default=None, help="override points_per_side (quick runs)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--semantic-model", default=None, help="a Segformer dir/hub id instead of random B0")
    parser.add_argument("--points-per-side", type=int, default=8, help="pipeline part")
    parser.add_argument("--crop-n-layers", type=int, default=0, help="pipeline part")
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--voting-masks", type=int, default=300, help="masks in the synthetic 2048x1024 voting test"
    )
    parser.add_argument("--out", default="bench/results/preannotate.json")
    parser.add_argument("--work", default=None, help="where models are built (default: a temp dir)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    labels = cityscapes()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-preannotate-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt, semantic = prepare_models(args, work, labels)
    report = dict(
        machine=dict(
            platform=platform.platform(),
            processor=platform.processor(),
            cpus=os.cpu_count(),
            load_average_at_start=os.getloadavg(),
            torch=torch.__version__,
            torch_threads=torch.get_num_threads(),
            cuda=torch.cuda.is_available(),
        ),
    )
    parts = args.part.split(",")
    if "sam" in parts:
        report["sam"] = bench_sam(args, ckpt)
    if "pipeline" in parts:
        report["pipeline"] = bench_pipeline(args, work, labels, ckpt, semantic)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    atomic_write_json(Path(args.out), report, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
