"""Automatic mask generation over segment-anything's modules, post-processing reordered.

The same prompts (point grids per crop layer), thresholds, crops, NMS and record fields as
segment-anything's ``SamAutomaticMaskGenerator`` (``output_mode="coco_rle"``); what changes
is only where work is done and on what:

1. Decoder: the prompt-independent part once per crop (:mod:`~sedna_sam.annotate.decoder`),
   the rest per prompt batch by a registered backend (:mod:`~sedna_sam.annotate.backends`).
2. The predicted-IoU filter runs on the decoder's scores before anything is upsampled; only
   prompts with a surviving mask get low-res logits, and only for the image's part of SAM's
   padded 1024x1024 frame. Survivors are upsampled exactly as ``Sam.postprocess_masks``
   does, so their stability scores, thresholded masks and boxes are the stock ones.
3. Survivors are kept as box crops (:class:`~sedna_sam.annotate.rle.BoxMask`); the per-crop
   and cross-crop box NMS run before any RLE, and only what survives is encoded.
4. Small-region removal (``min_mask_region_area``) runs on the masks in memory (no RLE
   decode) with segment-anything's own ``remove_small_regions``, then its NMS; RLE last.

With the ``eager`` backend in ``fp32`` the records equal the stock generator's, field for
field and in the same order (tests/test_annotate_amg.py), including a quirk of the stock
code: when a prompt batch keeps no mask at all, its empty box tensor is float and
``torch.cat`` turns every box of that crop (and ``crop_box`` of every record when a crop
keeps none) into floats; the records here have the same types.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sedna_sam.annotate.backends import DecoderBackend
from sedna_sam.annotate.decoder import embed_region
from sedna_sam.annotate.precision import Precision
from sedna_sam.annotate.rle import BoxMask, box_mask_rles, crop_to_boxes
from sedna_sam.annotate.stopwatch import Stopwatch

UPSAMPLE_CHUNK = 32  # survivors upsampled at once: bounds memory to 32 full-size float masks
# Masks left after each step of one image (``MaskGenerator.counts``), in order.
COUNTS = ("candidates", "iou", "stability", "edge", "box_nms", "crop_nms", "small_changed", "records")


@dataclass
class Survivors:
    """Masks of one crop that passed the filters, in prompt order.

    ``masks`` n :class:`BoxMask`; ``boxes`` (n, 4) XYXY; ``iou_preds``, ``stability`` (n,)
    float32; ``points`` (n, 2) float64 prompt of each mask; ``float_boxes``: the stock
    generator would hold these boxes as float32 (see the module docstring).
    """

    masks: list[BoxMask] = field(default_factory=list)
    boxes: list[Tensor] = field(default_factory=list)
    iou_preds: list[Tensor] = field(default_factory=list)
    stability: list[Tensor] = field(default_factory=list)
    points: list[Tensor] = field(default_factory=list)
    float_boxes: bool = False

    def add(
        self, masks: list[BoxMask], boxes: Tensor, iou: Tensor, stability: Tensor, points: Tensor
    ) -> None:
        self.masks += masks
        self.boxes.append(boxes)
        self.iou_preds.append(iou)
        self.stability.append(stability)
        self.points.append(points)


def upsample_valid(low_res: Tensor, input_size: tuple[int, int], out_size: tuple[int, int]) -> Tensor:
    """``Sam.postprocess_masks`` for (n, h, w) low-res logits that cover at least the
    ``input_size`` part of the 1024 frame: (n, H, W) logits of ``out_size``, the same numbers
    (bilinear at the same 4x scale, rows/columns past the image never computed)."""
    x = F.interpolate(low_res[:, None], scale_factor=4, mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, out_size, mode="bilinear", align_corners=False)[:, 0]


class MaskGenerator:
    """``SamAutomaticMaskGenerator`` (coco_rle output) with the reordered work above.

    ``backend``: a decoder backend (its ``batch`` is the prompt batch size; the exact mode
    uses ``points_per_batch`` as the stock generator does). ``encoder_precision``: the
    image encoder's precision. ``encoder_batch``: crops encoded together (1 = one
    ``set_image`` per crop as the stock generator; more on CUDA). Other arguments: as
    segment-anything's generator, same defaults.
    """

    def __init__(
        self,
        sam,
        backend: DecoderBackend,
        encoder_precision: Precision,
        *,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        min_mask_region_area: int = 0,
        encoder_batch: int = 1,
        detailed_timings: bool = False,
    ) -> None:
        from segment_anything import SamPredictor
        from segment_anything.utils.amg import build_all_layer_point_grids

        self.sam = sam
        self.backend = backend
        self.encoder_precision = encoder_precision
        self.predictor = SamPredictor(sam)
        self.point_grids = build_all_layer_point_grids(
            points_per_side, crop_n_layers, crop_n_points_downscale_factor
        )
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.encoder_batch = max(1, int(encoder_batch))
        self.device = str(sam.device)
        self.detailed_timings = detailed_timings
        self.watch = Stopwatch(self.device)
        self.counts: dict[str, int] = {}

    # --- one image -------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Records for an (H, W, 3) uint8 RGB image, in the stock generator's order;
        ``self.watch`` then holds the seconds per stage."""
        from segment_anything.utils.amg import generate_crop_boxes

        self.watch = Stopwatch(self.device, sync=self.detailed_timings)
        self.counts = dict.fromkeys(COUNTS, 0)
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(orig_size, self.crop_n_layers, self.crop_overlap_ratio)
        with self.watch.stage("encoder"):
            embeddings = self.encode([image[y0:y1, x0:x1, :] for x0, y0, x1, y1 in crop_boxes])
        crops = []
        for crop_box, layer_idx, (features, input_size) in zip(crop_boxes, layer_idxs, embeddings):
            crops.append(self._process_crop(features, input_size, crop_box, layer_idx, orig_size))
        del embeddings
        with self.watch.stage("filter"):
            data = self._merge_crops(crops, crop_boxes)
        if self.min_mask_region_area > 0 and len(data["masks"]):
            with self.watch.stage("small_regions"):
                data = self._small_regions(data)
        with self.watch.stage("rle"):
            return self._records(data)

    def encode(self, images: list[np.ndarray]) -> list[tuple[Tensor, tuple[int, int]]]:
        """(features (1, C, 64, 64) float32, input size (h, w) in the 1024 frame) per image.

        One image at a time through ``SamPredictor.set_image`` (the stock path) unless
        ``encoder_batch`` > 1: then up to that many are stacked into one encoder call.
        """
        out: list[tuple[Tensor, tuple[int, int]]] = []
        autocast = self.encoder_precision.autocast(self.device)
        if self.encoder_batch == 1:
            for im in images:
                with autocast:
                    self.predictor.set_image(im)
                out.append((self.predictor.features.float(), tuple(self.predictor.input_size)))
            self.predictor.reset_image()
            return out
        transform = self.predictor.transform
        for start in range(0, len(images), self.encoder_batch):
            inputs, sizes = [], []
            for im in images[start : start + self.encoder_batch]:
                x = (
                    torch.as_tensor(transform.apply_image(im), device=self.device)
                    .permute(2, 0, 1)
                    .contiguous()
                )
                sizes.append(tuple(x.shape[-2:]))
                inputs.append(self.sam.preprocess(x[None])[0])
            with autocast:
                features = self.sam.image_encoder(torch.stack(inputs)).float()
            out += [(features[i : i + 1], size) for i, size in enumerate(sizes)]
        return out

    @torch.inference_mode()
    def warmup(self, image_size: tuple[int, int]) -> float:
        """Run the decoder backend once per shape an (H, W) ``image_size`` needs (a full
        prompt batch, each crop's region) on dummy inputs, so that compilation or export
        happens here and not inside the first image; returns the seconds it took."""
        from segment_anything.utils.amg import generate_crop_boxes

        start = time.perf_counter()
        crop_boxes, _ = generate_crop_boxes(image_size, self.crop_n_layers, self.crop_overlap_ratio)
        side = self.sam.image_encoder.img_size
        regions = {
            embed_region(self.predictor.transform.get_preprocess_shape(y1 - y0, x1 - x0, side))
            for x0, y0, x1, y1 in crop_boxes
        }
        dim = self.sam.prompt_encoder.embed_dim
        features = torch.zeros(1, dim, *self.sam.prompt_encoder.image_embedding_size, device=self.device)
        prefix = self.backend.prefix(features)
        sparse = torch.zeros(self.points_per_batch, 2, dim, device=self.device)
        _, hyper, keys = self.backend.tokens(prefix, sparse)
        prompts = torch.arange(self.points_per_batch, device=self.device)
        for region in sorted(regions):
            self.backend.masks(keys, hyper, region, prompts)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    # --- per crop --------------------------------------------------------------------

    def _process_crop(
        self,
        features: Tensor,
        input_size: tuple[int, int],
        crop_box: list[int],
        layer_idx: int,
        orig_size: tuple[int, int],
    ) -> dict[str, Any]:
        from segment_anything.utils.amg import batch_iterator, uncrop_boxes_xyxy, uncrop_points
        from torchvision.ops.boxes import batched_nms

        x0, y0, x1, y1 = crop_box
        crop_size = (y1 - y0, x1 - x0)
        with self.watch.stage("decoder"):
            prefix = self.backend.prefix(features)
        region = embed_region(input_size)
        points_for_image = self.point_grids[layer_idx] * np.array(crop_size)[None, ::-1]
        kept = Survivors()
        for (points,) in batch_iterator(self.points_per_batch, points_for_image):
            self._process_batch(points, prefix, region, input_size, crop_size, crop_box, orig_size, kept)
        with self.watch.stage("filter"):
            n = len(kept.masks)
            boxes = _cat(kept.boxes, (0, 4), torch.int64, self.device)
            if kept.float_boxes:
                boxes = boxes.float()
            iou = _cat(kept.iou_preds, (0,), torch.float32, self.device)
            stability = _cat(kept.stability, (0,), torch.float32, self.device)
            points = _cat(kept.points, (0, 2), torch.float64, "cpu")
            keep = batched_nms(boxes.float(), iou, torch.zeros(n, device=boxes.device), self.box_nms_thresh)
            keep_list = keep.tolist()
            self.counts["box_nms"] += len(keep_list)
            return {
                "masks": [kept.masks[i] for i in keep_list],
                "boxes": uncrop_boxes_xyxy(boxes[keep], crop_box),
                "iou_preds": iou[keep],
                "stability": stability[keep],
                "points": uncrop_points(points[keep.cpu()], crop_box),
                "float_boxes": kept.float_boxes,
            }

    def _process_batch(
        self,
        points: np.ndarray,
        prefix,
        region: tuple[int, int],
        input_size: tuple[int, int],
        crop_size: tuple[int, int],
        crop_box: list[int],
        orig_size: tuple[int, int],
        kept: Survivors,
    ) -> None:
        from segment_anything.utils.amg import (
            batched_mask_to_box,
            calculate_stability_score,
            is_box_near_crop_edge,
        )

        orig_h, orig_w = orig_size
        with self.watch.stage("decoder"):
            transformed = self.predictor.transform.apply_coords(points, crop_size)
            in_points = torch.as_tensor(transformed, device=self.device)
            in_labels = torch.ones(in_points.shape[0], dtype=torch.int, device=self.device)
            sparse, _ = self.sam.prompt_encoder(
                points=(in_points[:, None, :], in_labels[:, None]), boxes=None, masks=None
            )
            iou, hyper, keys = self.backend.tokens(prefix, sparse)
            n_masks = iou.shape[1]
            iou = iou.flatten(0, 1)
            self.counts["candidates"] += len(iou)
            if self.pred_iou_thresh > 0.0:
                candidates = (iou > self.pred_iou_thresh).nonzero()[:, 0]
            else:
                candidates = torch.arange(len(iou), device=iou.device)
            if len(candidates) == 0:
                kept.float_boxes = True  # the stock generator's empty box tensor is float
                return
            self.counts["iou"] += len(candidates)
            prompt = candidates // n_masks
            prompts = torch.unique(prompt)
            low_res = self.backend.masks(keys, hyper, region, prompts)
            low_res = low_res[torch.searchsorted(prompts, prompt), candidates % n_masks]
            del keys, hyper
        all_points = torch.as_tensor(points.repeat(n_masks, axis=0))
        cand_cpu = candidates.cpu()
        survived = 0
        mask_threshold = self.sam.mask_threshold
        for start in range(0, len(candidates), UPSAMPLE_CHUNK):
            part = slice(start, start + UPSAMPLE_CHUNK)
            with self.watch.stage("upsample"):
                logits = upsample_valid(low_res[part], input_size, crop_size)
            with self.watch.stage("filter"):
                stability = calculate_stability_score(logits, mask_threshold, self.stability_score_offset)
                keep = torch.ones_like(stability, dtype=torch.bool)
                if self.stability_score_thresh > 0.0:
                    keep = stability >= self.stability_score_thresh
                masks = logits[keep] > mask_threshold
                del logits
                survived += len(masks)
                boxes = batched_mask_to_box(masks)
                near = is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
                self.counts["edge"] += int((~near).sum())
                if not bool((~near).any()):
                    continue
                masks, boxes = masks[~near], boxes[~near].long()
                keep_idx = keep.nonzero()[:, 0][~near]
                kept.add(
                    crop_to_boxes(masks, boxes, crop_box[1], crop_box[0], orig_size),
                    boxes,
                    iou[candidates[part]][keep_idx],
                    stability[keep_idx],
                    all_points[cand_cpu[part]][keep_idx.cpu()],
                )
        self.counts["stability"] += survived
        if survived == 0:
            kept.float_boxes = True

    # --- whole image -----------------------------------------------------------------

    def _merge_crops(self, crops: list[dict[str, Any]], crop_boxes: list[list[int]]) -> dict[str, Any]:
        """Concatenate the crops and drop duplicates between them (NMS preferring masks from
        smaller crops), as the stock generator; then to numpy as it does."""
        from torchvision.ops.boxes import batched_nms, box_area

        float_boxes = any(c["float_boxes"] for c in crops)
        # A crop without masks has a 1-D float ``crop_boxes`` in the stock code: cat -> float.
        float_crop_boxes = len(crops) > 1 and any(len(c["masks"]) == 0 for c in crops)
        masks = [m for c in crops for m in c["masks"]]
        boxes = torch.cat([c["boxes"].float() if float_boxes else c["boxes"] for c in crops])
        iou = torch.cat([c["iou_preds"] for c in crops])
        stability = torch.cat([c["stability"] for c in crops])
        points = torch.cat([c["points"] for c in crops])
        crop_box_rows = torch.tensor(
            [box for box, c in zip(crop_boxes, crops) for _ in range(len(c["masks"]))], dtype=torch.int64
        ).reshape(-1, 4)
        if float_crop_boxes:
            crop_box_rows = crop_box_rows.float()
        if len(crop_boxes) > 1:
            scores = (1 / box_area(crop_box_rows)).to(boxes.device)
            keep = batched_nms(
                boxes.float(), scores, torch.zeros(len(boxes), device=boxes.device), self.crop_nms_thresh
            )
            masks = [masks[i] for i in keep.tolist()]
            boxes, iou, stability = boxes[keep], iou[keep], stability[keep]
            points, crop_box_rows = points[keep.cpu()], crop_box_rows[keep.cpu()]
        self.counts["crop_nms"] = len(masks)
        return {
            "masks": masks,
            "boxes": boxes.cpu().numpy(),
            "iou_preds": iou.cpu().numpy(),
            "stability": stability.cpu().numpy(),
            "points": points.numpy(),
            "crop_boxes": crop_box_rows.numpy(),
        }

    def _small_regions(self, data: dict[str, Any]) -> dict[str, Any]:
        """``SamAutomaticMaskGenerator.postprocess_small_regions`` on masks in memory: the same
        ``remove_small_regions`` (holes, then islands) on each full-size mask, the same NMS
        preferring unchanged masks, new boxes and pixels only for changed masks kept."""
        from segment_anything.utils.amg import batched_mask_to_box, remove_small_regions
        from torchvision.ops.boxes import batched_nms

        min_area = self.min_mask_region_area
        new_masks: list[BoxMask | None] = []
        nms_boxes, scores = [], []
        for bm in data["masks"]:
            full = bm.full()
            mask, changed = remove_small_regions(full, min_area, mode="holes")
            unchanged = not changed
            mask, changed = remove_small_regions(mask, min_area, mode="islands")
            unchanged = unchanged and not changed
            if unchanged:
                new_masks.append(None)
                nms_boxes.append(bm.box())
            else:
                box = batched_mask_to_box(torch.as_tensor(mask)[None])[0]
                x0, y0, x1, y1 = box.tolist()
                pixels = torch.as_tensor(np.ascontiguousarray(mask[y0 : y1 + 1, x0 : x1 + 1]))
                new_masks.append(BoxMask(pixels, y0, x0, bm.size))
                nms_boxes.append(box.tolist())
            scores.append(float(unchanged))
        self.counts["small_changed"] = scores.count(0.0)
        boxes = torch.tensor(nms_boxes, dtype=torch.int64)
        keep = batched_nms(
            boxes.float(),
            torch.as_tensor(scores),
            torch.zeros(len(boxes)),
            max(self.box_nms_thresh, self.crop_nms_thresh),
        )
        masks = list(data["masks"])
        for i in keep.tolist():
            if scores[i] == 0.0:
                masks[i] = new_masks[i]
                data["boxes"][i] = boxes[i].numpy()
        idx = keep.numpy()
        return {
            "masks": [masks[i] for i in idx],
            **{k: v[idx] for k, v in data.items() if k != "masks"},
        }

    def _records(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        """The stock generator's records (coco_rle segmentation)."""
        from segment_anything.utils.amg import area_from_rle, box_xyxy_to_xywh, coco_encode_rle

        rles = box_mask_rles(data["masks"])
        self.counts["records"] = len(rles)
        return [
            {
                "segmentation": coco_encode_rle(rle),
                "area": area_from_rle(rle),
                "bbox": box_xyxy_to_xywh(data["boxes"][i]).tolist(),
                "predicted_iou": data["iou_preds"][i].item(),
                "point_coords": [data["points"][i].tolist()],
                "stability_score": data["stability"][i].item(),
                "crop_box": box_xyxy_to_xywh(data["crop_boxes"][i]).tolist(),
            }
            for i, rle in enumerate(rles)
        ]


def _cat(parts: list[Tensor], empty_shape: tuple[int, ...], dtype: torch.dtype, device: str) -> Tensor:
    return torch.cat(parts) if parts else torch.zeros(empty_shape, dtype=dtype, device=device)
