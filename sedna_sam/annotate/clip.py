"""CLIP for mask labels: load a model, cut square crops around masks, score label names.

Each SAM mask is cut out of the image (its bounding box, pixels outside the mask greyed
out, padded to a square) and embedded by CLIP's image tower; each label name becomes a
prompt ("a photo of a {name}.") embedded by the text tower (:meth:`Clip.class_probabilities`).
Models load from a local ``save_pretrained`` directory or a hub id through :func:`load_clip`.
The labelers that use this are in :mod:`sedna_sam.annotate.openvocab`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sedna_sam.annotate.voting import MaskSet
from sedna_sam.errors import SednaSamError

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
# Used when a labeler gets no ``clip_model`` option (e.g. ``sedna-sam annotate --labeler clip``).
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Clip:
    """A loaded CLIP model with its tokenizer and image pre-processing settings.

    ``image_size`` is the square side the vision tower takes; ``mean``/``std`` are the
    normalization of the saved image processor.
    """

    model: object
    tokenizer: object
    device: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str
    _text_cache: dict = field(default_factory=dict, repr=False)

    def text_features(self, texts: Sequence[str]):
        """(K, D) L2-normalized text embeddings; cached per list of texts (label names
        rarely change between images)."""
        import torch

        key = tuple(texts)
        if key not in self._text_cache:
            tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
            tokens = {k: v.to(self.device) for k, v in tokens.items()}
            with torch.inference_mode():
                feats = _pooled(self.model.get_text_features(**tokens))
            self._text_cache.clear()  # one label list at a time is the common case
            self._text_cache[key] = torch.nn.functional.normalize(feats.float(), dim=-1)
        return self._text_cache[key]

    def image_features(self, crops: np.ndarray, batch_size: int = 64):
        """(N, D) L2-normalized image embeddings of (N, S, S, 3) uint8 crops, S = image_size."""
        import torch

        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        out = []
        with torch.inference_mode():
            for start in range(0, len(crops), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(crops[start : start + batch_size])).to(self.device)
                x = (x.permute(0, 3, 1, 2).float() / 255.0 - mean) / std
                out.append(_pooled(self.model.get_image_features(pixel_values=x)).float())
        feats = torch.cat(out) if out else torch.zeros((0, self.model.config.projection_dim))
        return torch.nn.functional.normalize(feats, dim=-1)

    def class_probabilities(
        self, crops: np.ndarray, names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
    ) -> np.ndarray:
        """(N, K) softmax over the K label names for N crops.

        With several templates, each name's embedding is the normalized mean over its
        prompts (CLIP's prompt ensembling).
        """
        import torch

        if not names:
            raise SednaSamError("open-vocabulary labelling needs at least one label name")
        prompts = [t.format(n) for n in names for t in templates]
        text = self.text_features(prompts).view(len(names), len(templates), -1).mean(1)
        text = torch.nn.functional.normalize(text, dim=-1)
        image = self.image_features(crops)
        scale = float(self.model.logit_scale.exp().item())
        return torch.softmax(scale * image @ text.T, dim=-1).cpu().numpy()


def _pooled(output):
    """transformers 4 returns the projected features as a tensor, 5 as ``pooler_output``."""
    return output if hasattr(output, "shape") else output.pooler_output


def load_clip(spec: str | Path, device: str | None = None) -> Clip:
    """Load CLIP (model, tokenizer, image processor) from a local directory or a hub id.

    Offline, a hub id that is not in the local cache fails with a message saying what to
    download and where to put it.
    """
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    from sedna_sam.segformer import default_device

    device = device or default_device()
    spec = str(spec)
    local = Path(spec).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise SednaSamError(f"{local}: not a CLIP model directory (no config.json)")
        source, local_only = str(local.resolve()), True
    else:
        source, local_only = spec, os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        model = CLIPModel.from_pretrained(source, local_files_only=local_only)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        raise SednaSamError(
            f"cannot load CLIP {spec!r}: {exc}\n"
            f"Without network access, download it elsewhere (e.g. `huggingface-cli download {spec} "
            f"--local-dir models/{spec.replace('/', '__')}`) and pass that directory."
        ) from None
    model.eval().to(device)
    size = int(model.config.vision_config.image_size)
    mean, std = CLIP_MEAN, CLIP_STD
    try:
        proc = CLIPImageProcessor.from_pretrained(source, local_files_only=local_only)
        mean, std = tuple(proc.image_mean), tuple(proc.image_std)
    except (OSError, ValueError):
        log.warning("%s has no image processor config; using CLIP's mean/std", source)
    log.info("loaded CLIP %s (image %dpx) on %s", source, size, device)
    return Clip(model, tokenizer, device, size, mean, std, source)  # type: ignore[arg-type]


def mask_crops(
    image: np.ndarray, masks: MaskSet | np.ndarray, size: int, context: float = 0.1, grey_out: bool = True
) -> np.ndarray:
    """Square crops around each mask, for CLIP.

    ``image`` (H, W, 3) uint8, ``masks`` a :class:`MaskSet` or (N, H, W) bool ->
    (N, size, size, 3) uint8. Each crop is the mask's bounding box grown by ``context`` of
    its side on every edge; pixels outside the mask are set to mid grey (so CLIP sees the
    object, not its neighbours), and the crop is padded to a square with grey before
    resizing, keeping the aspect ratio. Masks are read one at a time from their pixel
    indices (no (N, H, W) stack is decoded).
    """
    import cv2

    if not isinstance(masks, MaskSet):
        masks = MaskSet.from_dense(np.asarray(masks, dtype=bool).reshape(-1, *image.shape[:2]))
    h, w = image.shape[:2]
    out = np.full((len(masks), size, size, 3), 127, dtype=np.uint8)
    for i in range(len(masks)):
        idx = masks.indices(i)  # column-major flat indices
        if idx.size == 0:
            continue
        ys, xs = idx % h, idx // h
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        my, mx = int((y1 - y0) * context), int((x1 - x0) * context)
        y0, y1, x0, x1 = max(0, y0 - my), min(h, y1 + my), max(0, x0 - mx), min(w, x1 + mx)
        crop = image[y0:y1, x0:x1].copy()
        if grey_out:
            inside = np.zeros(crop.shape[:2], dtype=bool)
            inside[ys - y0, xs - x0] = True
            crop[~inside] = 127
        side = max(crop.shape[0], crop.shape[1])
        square = np.full((side, side, 3), 127, dtype=np.uint8)
        oy, ox = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
        square[oy : oy + crop.shape[0], ox : ox + crop.shape[1]] = crop
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        out[i] = cv2.resize(square, (size, size), interpolation=interp)
    return out
