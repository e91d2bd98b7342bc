"""A SAM whose masks come from a known scene, for testing what happens after the decoder.

A random-weight SAM scores every mask low and unstable, and its masks cover everything, so
thresholds, NMS, crops and small-region removal barely act on them. This model keeps the
real decoder code path (prefix, two-way transformer, mask tokens, upscaling call, hyper
product, prompt batches) but its numbers come from the image:

- ``SceneEncoder`` replaces the image encoder: pixel value 8 * k in the red channel is
  scene label k (< 30); the embedding's first 30 channels are each label's share of a
  16x16 patch (1024 frame), the rest 0.
- The checkpoint has the image-to-token attention outputs and the no-mask embedding zeroed,
  so the transformer's image side ends as per-pixel LayerNorms of that embedding.
- ``SceneUpscaling`` replaces ``output_upscaling``: it recovers the shares per pixel
  (invariant to the LayerNorms), scales them to logits (+6 where a label fills the patch,
  -6 where absent), adds a constant bias channel and repeats each pixel 4x4 (no spatial
  mixing, like the real kernel = stride = 2 transposed convolutions).
- ``HyperSelect`` replaces the hypernetwork MLPs: mask token i picks one or more labels by an
  integer hash of its transformer output (which depends on the prompt), so prompts give
  different masks.
- ``ScoreHead`` replaces the IoU head: scores spread over [0, 1) by the same kind of hash.

A scene image (:func:`scene_image`) has large regions, thin ones, holes and specks (small
region removal), and objects on the crop boundaries (crop-edge filter, cross-crop NMS).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

N_LABELS = 30
BIAS_CHANNEL = 30


def _modules():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class SceneEncoder(nn.Module):
        def __init__(self, sam) -> None:
            super().__init__()
            self.img_size = sam.image_encoder.img_size
            self.register_buffer("mean", sam.pixel_mean.clone())
            self.register_buffer("std", sam.pixel_std.clone())

        def forward(self, x):
            red = x[:, 0] * self.std[0] + self.mean[0]
            labels = torch.round(red / 8).clamp(0, N_LABELS - 1).long()
            onehot = F.one_hot(labels, N_LABELS).permute(0, 3, 1, 2).float()
            shares = F.avg_pool2d(onehot, 16)
            return F.pad(shares, (0, 0, 0, 0, 0, 256 - N_LABELS))

    class SceneUpscaling(nn.Module):
        def __init__(self, scale: float) -> None:
            super().__init__()
            self.scale = scale

        def forward(self, src):
            c = src[:, :N_LABELS]
            c = c - c.amin(1, keepdim=True)
            c = c / c.sum(1, keepdim=True).clamp_min(1e-6)
            feats = torch.cat([self.scale * c, torch.ones_like(c[:, :1]), torch.zeros_like(c[:, :1])], 1)
            return feats.repeat_interleave(4, 2).repeat_interleave(4, 3)

    def token_hash(x, salt: int):
        """(B,) int64 from a (B, C) float batch: exact integer arithmetic on rounded values,
        so equal inputs give equal hashes whatever the reduction order."""
        q = torch.round(x.float() * 1000).long()
        w = (torch.arange(q.shape[1]) * (2 * salt + 7) + salt) % 97 + 1
        return (q * w).sum(1).abs()

    class HyperSelect(nn.Module):
        def __init__(self, token: int) -> None:
            super().__init__()
            self.token = token

        def forward(self, x):
            k = token_hash(x, self.token) % N_LABELS
            w = torch.zeros(x.shape[0], 32, dtype=x.dtype)
            rows = torch.arange(x.shape[0])
            for extra in range(max(1, self.token)):  # token t > 1 selects t labels: a union
                w[rows, (k + 3 * extra) % N_LABELS] = 1.0
            w[:, BIAS_CHANNEL] = -6.0
            return w

    class ScoreHead(nn.Module):
        def forward(self, x):
            return torch.stack([(token_hash(x, 11 + t) % 1000).float() / 1000 for t in range(4)], 1)

    return SceneEncoder, SceneUpscaling, HyperSelect, ScoreHead


def build_scene_sam_checkpoint(path: Path) -> Path:
    """A tiny SAM checkpoint file with the weights edits described above."""
    import io

    import torch

    from sedna_sam.models import TINY_SPECS, _sam_from_spec
    from sedna_sam.storage import atomic_write_bytes

    torch.manual_seed(3)
    sam = _sam_from_spec(TINY_SPECS["tiny"])
    state = sam.state_dict()
    for key in list(state):
        if "cross_attn_image_to_token.out_proj" in key or key == "prompt_encoder.no_mask_embed.weight":
            state[key] = torch.zeros_like(state[key])
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_scene_sam(path: Path, hashed_heads: bool = True):
    """The checkpoint through the product's loader, then the scene modules put in.

    ``hashed_heads`` False keeps the checkpoint's own hypernetwork MLPs and IoU head: each
    mask is then a weighted union of scene labels whose weights move smoothly with the
    decoder's numbers (for comparing precisions and backends, where the hash would turn a
    last-bit difference into another label)."""
    from torch import nn

    from sedna_sam.models import load_sam

    SceneEncoder, SceneUpscaling, HyperSelect, ScoreHead = _modules()
    sam = load_sam(path, device="cpu")
    sam.image_encoder = SceneEncoder(sam)
    # Hashed heads weigh a label 1 against a bias of -6; the checkpoint's heads give weights
    # around 0.1, scaled up to logits of the same size.
    sam.mask_decoder.output_upscaling = SceneUpscaling(12.0 if hashed_heads else 1.0)
    if hashed_heads:
        sam.mask_decoder.output_hypernetworks_mlps = nn.ModuleList(HyperSelect(t) for t in range(4))
        sam.mask_decoder.iou_prediction_head = ScoreHead()
    else:
        _amplify_heads(sam)
    return sam.eval()


def _amplify_heads(sam) -> None:
    """Wrap the checkpoint's hypernetwork MLPs and IoU head as ``gain * (head(x) - mean)``,
    the mean over a reference batch of prompts: prompts then differ by as much as the
    scene's labels do, while a small change of x still moves the masks only a little."""
    import numpy as np
    import torch
    from segment_anything import SamPredictor
    from torch import nn

    class Centred(nn.Module):
        def __init__(self, head, mean, gain: float) -> None:
            super().__init__()
            self.head, self.gain = head, gain
            self.register_buffer("mean", mean)

        def forward(self, x):
            return self.gain * (self.head(x) - self.mean.to(x.dtype))

    predictor = SamPredictor(sam)
    predictor.set_image(scene_image(96, 192, seed=99))
    grid = np.stack(np.meshgrid(np.linspace(5, 187, 8), np.linspace(5, 91, 8)), -1).reshape(-1, 2)
    points = torch.as_tensor(predictor.transform.apply_coords(grid, (96, 192)))
    seen: dict[int, torch.Tensor] = {}
    decoder = sam.mask_decoder
    heads = [*decoder.output_hypernetworks_mlps, decoder.iou_prediction_head]
    hooks = [
        h.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, o)) for k, h in enumerate(heads)
    ]
    with torch.no_grad():
        predictor.predict_torch(points[:, None], torch.ones(len(points), 1, dtype=torch.int))
    for hook in hooks:
        hook.remove()
    decoder.output_hypernetworks_mlps = nn.ModuleList(
        Centred(h, seen[k].mean(0), 400.0) for k, h in enumerate(decoder.output_hypernetworks_mlps)
    )
    decoder.iou_prediction_head = Centred(decoder.iou_prediction_head, seen[4].mean(0) - 0.5, 20.0)


def scene_labels(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(h, w) label map: background bands, rectangles and discs of other labels (some on
    the middle lines where layer-1 crops meet), thin bars, holes and 1-6 px specks."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), dtype=np.int64)
    labels[: h // 3] = 1  # sky band
    labels[2 * h // 3 :] = 2  # road band
    yy, xx = np.mgrid[:h, :w]
    for k in range(3, 22):
        if k % 3 == 0:
            y0, x0 = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
            labels[y0 : y0 + int(rng.integers(6, h // 3)), x0 : x0 + int(rng.integers(6, w // 4))] = k
        elif k % 3 == 1:
            cy, cx, r = int(rng.integers(0, h)), int(rng.integers(0, w)), int(rng.integers(4, h // 5))
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = k
        else:  # thin bar
            x0 = int(rng.integers(0, w - 3))
            labels[h // 4 : 3 * h // 4, x0 : x0 + 2] = k
    labels[h // 2 - 6 : h // 2 + 6, w // 2 - 10 : w // 2 + 10] = 22  # on the crop seams
    for _ in range(40):  # specks: islands of one label inside others, holes in regions
        y, x, s = int(rng.integers(0, h - 6)), int(rng.integers(0, w - 6)), int(rng.integers(1, 6))
        labels[y : y + s, x : x + s] = int(rng.integers(0, 23))
    return labels


def scene_image(h: int = 96, w: int = 192, seed: int = 0) -> np.ndarray:
    """(h, w, 3) uint8 image whose red channel encodes :func:`scene_labels` (8 * label)."""
    labels = scene_labels(h, w, seed)
    image = np.empty((h, w, 3), dtype=np.uint8)
    image[..., 0] = 8 * labels
    image[..., 1] = (37 * labels) % 256
    image[..., 2] = (91 * labels) % 256
    return image


@pytest.fixture(scope="session")
def scene_sam_ckpt(tmp_path_factory) -> Path:
    return build_scene_sam_checkpoint(tmp_path_factory.mktemp("scene-sam") / "sam_scene.pth")


@pytest.fixture(scope="session")
def scene_sam(scene_sam_ckpt):
    return load_scene_sam(scene_sam_ckpt)


@pytest.fixture(scope="session")
def smooth_scene_sam(scene_sam_ckpt):
    return load_scene_sam(scene_sam_ckpt, hashed_heads=False)
