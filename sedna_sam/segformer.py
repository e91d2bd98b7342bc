"""Segformer: a model is a config plus weights, loaded from a directory or a hub id.

Used by the annotation engine (semantic branch), the edge worker and the trainer, all
through :func:`load_segformer`, so a tiny random-weight model saved by a test goes
through exactly the same code path as a downloaded checkpoint.

Pre-processing follows the saved image processor (resize, rescale 1/255, normalize)
but runs as tensor ops, which is several times faster than the processor's PIL path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sedna_sam.errors import SednaSamError
from sedna_sam.labels import LabelSet

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Segformer:
    """A loaded Segformer with its pre-processing settings.

    ``input_size`` is (height, width) the model is fed at, or None to feed images at
    their own size (padded to a multiple of 32 is not needed: Segformer takes any size).
    """

    model: object
    device: str
    input_size: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str

    @property
    def id2label(self) -> dict[int, str]:
        return {int(k): v for k, v in self.model.config.id2label.items()}

    @property
    def num_labels(self) -> int:
        return int(self.model.config.num_labels)

    def preprocess(self, images: Sequence[np.ndarray]):
        """(N, 3, h, w) float tensor on the model's device from (H, W, 3) uint8 RGB arrays."""
        import torch
        import torch.nn.functional as F

        batch = []
        for img in images:
            t = torch.from_numpy(np.ascontiguousarray(img)).to(self.device).permute(2, 0, 1).float() / 255.0
            if self.input_size is not None and tuple(t.shape[1:]) != tuple(self.input_size):
                t = F.interpolate(t[None], size=self.input_size, mode="bilinear", align_corners=False)[0]
            batch.append(t)
        x = torch.stack(batch)
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def logits(self, images: Sequence[np.ndarray], out_size: tuple[int, int] | None = None):
        """Class logits (N, C, h, w) for a batch of same-size images.

        With ``out_size`` = (H, W) the logits are bilinearly upsampled to that size (as
        SSA does before the argmax); otherwise they stay at 1/4 of the input size.
        """
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            out = self.model(pixel_values=self.preprocess(images)).logits
            if out_size is not None:
                out = F.interpolate(out, size=out_size, mode="bilinear", align_corners=False)
        return out

    def predict_ids(self, image: np.ndarray) -> np.ndarray:
        """(H, W) int64 per-pixel class ids at the image's own size."""
        return upsampled_argmax(self.logits([image]), image.shape[:2]).cpu().numpy()


# Classes upsampled at once: bounds memory to H*W*CLASS_CHUNK floats (ADE20K has 150).
CLASS_CHUNK = 32


def upsampled_argmax(logits, out_size: tuple[int, int], chunk: int = CLASS_CHUNK):
    """(1, C, h, w) logits -> (H, W) int64 torch class ids: the argmax of the logits
    upsampled bilinearly to ``out_size`` (as SSA does), ``chunk`` classes at a time (ties:
    the smaller class id, like ``argmax``). The one logits-to-ids step: pre-annotation,
    the edge worker and :meth:`Segformer.predict_ids` use it."""
    import torch
    import torch.nn.functional as F

    best_val = best_idx = None
    for start in range(0, logits.shape[1], chunk):
        up = F.interpolate(
            logits[:, start : start + chunk].float(), size=out_size, mode="bilinear", align_corners=False
        )[0]
        val, idx = up.max(dim=0)
        idx = idx + start
        if best_val is None:
            best_val, best_idx = val, idx
        else:
            better = val > best_val  # strict: an earlier (smaller) id keeps ties
            best_val = torch.where(better, val, best_val)
            best_idx = torch.where(better, idx, best_idx)
    return best_idx


def load_segformer(spec: str | Path, device: str | None = None) -> Segformer:
    """Load a Segformer from any model spec (:func:`sedna_sam.model_files.resolve_model`):
    a local directory (``save_pretrained`` layout), a one-file archive, a Sedna
    knowledge-base index, a remote URL, or a hub id.

    Offline, a hub id that is not in the local cache fails with a message saying what
    to download and where to put it.
    """
    from transformers import SegformerForSemanticSegmentation

    from sedna_sam.model_files import resolve_model

    device = device or default_device()
    resolved = resolve_model(spec)
    if resolved.local:
        source = os.path.abspath(resolved.source)
        kwargs = {"local_files_only": True}
    else:
        source = resolved.source
        kwargs = {"local_files_only": os.environ.get("HF_HUB_OFFLINE") == "1"}
    try:
        model = SegformerForSemanticSegmentation.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise SednaSamError(
            f"cannot load Segformer {spec!r}: {exc}\n"
            f"Without network access, download it elsewhere (e.g. `huggingface-cli download {source} "
            f"--local-dir models/{source.replace('/', '__')}`) and pass that directory."
        ) from None
    model.eval().to(device)
    input_size, mean, std = _processor_settings(source, kwargs["local_files_only"])
    log.info("loaded Segformer %s (%d classes) on %s", source, model.config.num_labels, device)
    return Segformer(model, device, input_size, mean, std, source)


def _processor_settings(source: str, local_only: bool):
    """(input_size, mean, std) from the saved image processor, with Segformer's defaults."""
    try:
        from transformers import SegformerImageProcessor

        proc = SegformerImageProcessor.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError):
        log.warning("%s has no preprocessor_config.json; using ImageNet mean/std at 512x512", source)
        return (512, 512), IMAGENET_MEAN, IMAGENET_STD
    size = None
    if proc.do_resize:
        size = (int(proc.size["height"]), int(proc.size["width"]))
    mean = tuple(proc.image_mean) if proc.do_normalize else (0.0, 0.0, 0.0)
    std = tuple(proc.image_std) if proc.do_normalize else (1.0, 1.0, 1.0)
    return size, mean, std  # type: ignore[return-value]


def save_segformer(model, out_dir: str | Path, input_size: tuple[int, int] | None = (512, 512)) -> Path:
    """Save a model plus a matching image processor, loadable by :func:`load_segformer`."""
    from transformers import SegformerImageProcessor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    if input_size is None:
        proc = SegformerImageProcessor(do_resize=False, do_reduce_labels=False)
    else:
        proc = SegformerImageProcessor(
            size={"height": input_size[0], "width": input_size[1]}, do_reduce_labels=False
        )
    proc.save_pretrained(out_dir)
    return out_dir


def tiny_segformer(labels: LabelSet, seed: int = 0, hidden_sizes: Sequence[int] = (8, 16, 32, 64)):
    """A Segformer with random weights and tiny dims (for tests, demos and benches).

    Its predictions are meaningless until trained; it exists so that every code path
    that loads and runs a real Segformer can run offline in seconds.
    """
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    config = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=4,
        depths=[1, 1, 1, 1],
        sr_ratios=[8, 4, 2, 1],
        hidden_sizes=list(hidden_sizes),
        patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2],
        num_attention_heads=[1, 1, 2, 4],
        mlp_ratios=[2, 2, 2, 2],
        decoder_hidden_size=32,
        num_labels=len(labels),
        id2label={i: n for i, n in labels.id2label.items()},
        label2id={n: i for i, n in labels.id2label.items()},
        semantic_loss_ignore_index=255,
    )
    return SegformerForSemanticSegmentation(config)


def build_tiny_segformer(
    out_dir: str | Path, labels: LabelSet, seed: int = 0, input_size: tuple[int, int] | None = (128, 256)
) -> Path:
    """Save a tiny random-weight Segformer to ``out_dir`` (see :func:`tiny_segformer`)."""
    return save_segformer(tiny_segformer(labels, seed), out_dir, input_size)
