"""Pre-annotation speed: our engine beside a straightforward SSA-style pipeline, same run.

Both pipelines get the same images and the same models: a SAM (vit_b with random weights
built here and saved as a real checkpoint, or ``--ckpt`` for a downloaded one) and a
Segformer (B0 dims, random weights, or ``--semantic-model``). SAM's automatic mask
generation is segment-anything's own code in both, so it is run once per image and its
time (encoder, decoder) is counted for both. What differs is measured separately:

- semantic: ours (tensor pre-processing, class-chunked upsample + argmax) vs the baseline
  (transformers' image processor, full upsample, argmax);
- voting: ours (RLE runs -> pixel indices, one bincount per mask, an owner map, one
  gather) vs the baseline loop written here the way SSA's script does it (decode every
  mask to a full-size array, torch unique/bincount/top-1, overwrite the full map);
- output: ``semantic_mask`` RLEs + JSON written atomically vs one encode per class + json.dump.

A second table times voting alone on synthetic 2048x1024 masks (RLE), the size where the
per-mask full-image work of the loop adds up.

    python bench/preannotate.py --n 2 --size 1024x512 --points-per-side 8

Prints tables and writes JSON (default bench/results/preannotate.json). Random-weight
models give meaningless masks; their number (reported) is what the voting cost depends on.
"""

from __future__ import annotations

import argparse
import json
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
        ckpt = work / f"sam_{args.model}_random.pth"
        if not ckpt.exists():
            print(f"building a random-weight {args.model} checkpoint at {ckpt} ...")
            build_tiny_sam(ckpt, args.model)
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2, help="images")
    parser.add_argument("--size", default="1024x512", help="WxH of the generated images")
    parser.add_argument(
        "--model", default="vit_b", help="random-weight SAM to build: vit_b (default), vit_l, vit_h, tiny"
    )
    parser.add_argument("--ckpt", default=None, help="a real SAM checkpoint instead")
    parser.add_argument("--semantic-model", default=None, help="a Segformer dir/hub id instead of random B0")
    parser.add_argument("--points-per-side", type=int, default=8)
    parser.add_argument("--crop-n-layers", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--autocast", choices=["bf16", "fp16"], default=None)
    parser.add_argument(
        "--voting-masks", type=int, default=300, help="masks in the synthetic 2048x1024 voting test"
    )
    parser.add_argument("--out", default="bench/results/preannotate.json")
    parser.add_argument("--work", default=None, help="where models are built (default: a temp dir)")
    args = parser.parse_args()

    import torch
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    from sedna_sam.annotate.engine import AnnotateOptions, Annotator
    from sedna_sam.annotate.labelers import SemanticEvidence
    from sedna_sam.annotate.sam import sam_params
    from sedna_sam.annotate.voting import MaskSet, class_counts_and_owner, paint, ssa_vote
    from sedna_sam.formats.ssa import ssa_document

    labels = cityscapes()
    w, h = (int(v) for v in args.size.lower().split("x"))
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-preannotate-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt, semantic = prepare_models(args, work, labels)
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
    options = AnnotateOptions(ckpt, semantic, labels, sam=params, autocast=args.autocast, device=args.device)
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
    report = dict(
        machine=dict(
            platform=platform.platform(),
            processor=platform.processor(),
            torch_threads=torch.get_num_threads(),
            device=device,
            cuda=torch.cuda.is_available(),
        ),
        settings=dict(
            n=args.n,
            size=args.size,
            sam=Path(ckpt).name,
            random_sam=random_sam,
            semantic=str(semantic),
            points_per_side=args.points_per_side,
            crop_n_layers=args.crop_n_layers,
            autocast=args.autocast,
            model_load_s=load_s,
        ),
        per_image=rows,
        seconds_per_image=summary,
        voting_only=voting_only,
    )
    atomic_write_json(Path(args.out), report, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
