"""SAM checkpoints: the official registry, download with resume + checksum, and one loader.

Every SAM, official or tiny, goes through :func:`load_sam`: it reads the state dict, infers
the image-encoder dims from the tensor shapes (embedding width from ``pos_embed``, depth
from the block count, head count from the relative-position tables, global-attention
blocks from which tables span the whole 64x64 token grid) and builds the model with
``segment_anything``'s own builder. A tiny random-weight SAM saved by :func:`build_tiny_sam`
is therefore loaded exactly like ``sam_vit_h_4b8939.pth``.

Official files (https://github.com/facebookresearch/segment-anything#model-checkpoints);
sizes and sha256 were cross-checked against several independent public download scripts
and manifests that pin them (no network here to hash the files ourselves).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sedna_sam.errors import InputError, SednaSamError

log = logging.getLogger(__name__)

SAM_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"


@dataclass(frozen=True)
class SamSpec:
    """Image-encoder dims of a SAM (prompt encoder and mask decoder are the same for all)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]


@dataclass(frozen=True)
class Checkpoint:
    """An official checkpoint: ``sha256`` None would mean "size check only" (all three are
    known, see the module docstring)."""

    name: str  # model type: vit_h, vit_l, vit_b
    filename: str
    size: int  # bytes
    sha256: str | None
    spec: SamSpec

    @property
    def url(self) -> str:
        return SAM_BASE_URL + self.filename


CHECKPOINTS: dict[str, Checkpoint] = {
    c.name: c
    for c in (
        Checkpoint(
            "vit_h",
            "sam_vit_h_4b8939.pth",
            2_564_550_879,
            "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            SamSpec(1280, 32, 16, (7, 15, 23, 31)),
        ),
        Checkpoint(
            "vit_l",
            "sam_vit_l_0b3195.pth",
            1_249_524_607,
            "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            SamSpec(1024, 24, 16, (5, 11, 17, 23)),
        ),
        Checkpoint(
            "vit_b",
            "sam_vit_b_01ec64.pth",
            375_042_383,
            "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            SamSpec(768, 12, 12, (2, 5, 8, 11)),
        ),
    )
}

# Small encoders for tests, demos and benches (random weights: meaningless masks).
TINY_SPECS: dict[str, SamSpec] = {
    "tiny": SamSpec(32, 2, 2, (1,)),
    "small": SamSpec(64, 4, 4, (1, 3)),
}

_TOKEN_GRID = 64  # SAM: 1024 px input, 16 px patches
_BLOCK_RE = re.compile(r"^image_encoder\.blocks\.(\d+)\.")


def _model_type_of(spec: SamSpec) -> str:
    for ckpt in CHECKPOINTS.values():
        if ckpt.spec == spec:
            return ckpt.name
    for name, tiny in TINY_SPECS.items():
        if tiny == spec:
            return name
    return f"custom(dim={spec.embed_dim},depth={spec.depth},heads={spec.num_heads})"


def spec_from_state_dict(state: dict[str, Any], source: str = "<memory>") -> SamSpec:
    """Infer the image-encoder dims of a SAM state dict from its tensor shapes."""
    try:
        embed_dim = int(state["image_encoder.pos_embed"].shape[-1])
    except (KeyError, AttributeError, IndexError):
        raise InputError(f"{source}: not a SAM checkpoint (no image_encoder.pos_embed)") from None
    blocks = sorted({int(m.group(1)) for k in state if (m := _BLOCK_RE.match(k))})
    if not blocks or blocks != list(range(len(blocks))):
        raise InputError(f"{source}: SAM image encoder blocks are missing or not numbered 0..N-1")
    heads: set[int] = set()
    global_idx: list[int] = []
    for i in blocks:
        rel = state.get(f"image_encoder.blocks.{i}.attn.rel_pos_h")
        if rel is None:
            raise InputError(f"{source}: block {i} has no relative position table")
        # rel_pos_h is (2 * tokens_per_side - 1, head_dim): 27 for 14-token windows,
        # 127 for global attention over the 64x64 grid.
        heads.add(embed_dim // int(rel.shape[1]))
        if int(rel.shape[0]) == 2 * _TOKEN_GRID - 1:
            global_idx.append(i)
    if len(heads) != 1:
        raise InputError(f"{source}: blocks disagree on the attention head count {sorted(heads)}")
    return SamSpec(embed_dim, len(blocks), heads.pop(), tuple(global_idx))


def _read_state_dict(path: Path) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise InputError(f"{path}: SAM checkpoint not found. {download_hint(path.name, path.parent)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/corrupt files
        raise InputError(
            f"{path}: cannot read SAM checkpoint ({type(exc).__name__}: {exc}); "
            "a partial download? check its size with `sedna-sam models list`"
        ) from None
    if isinstance(state, dict) and "model" in state and "image_encoder.pos_embed" not in state:
        state = state["model"]  # checkpoints saved as {"model": state_dict, ...}
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a SAM state dict")
    return state


def _sam_from_spec(spec: SamSpec):
    """An untrained SAM with ``spec``'s image encoder (segment-anything's own builder; the
    prompt encoder and mask decoder have SAM's fixed sizes)."""
    from segment_anything.build_sam import _build_sam

    return _build_sam(
        encoder_embed_dim=spec.embed_dim,
        encoder_depth=spec.depth,
        encoder_num_heads=spec.num_heads,
        encoder_global_attn_indexes=list(spec.global_attn_indexes),
        checkpoint=None,
    )


def load_sam(ckpt_path: str | Path, model_type: str | None = None, device: str | None = None):
    """Load a SAM (``segment_anything.modeling.Sam``, eval mode, on ``device``).

    ``model_type`` (vit_h/vit_l/vit_b) is optional: the dims are read from the checkpoint;
    when given it is checked against them. ``device`` defaults to CUDA when present.
    """
    from sedna_sam.segformer import default_device

    path = Path(ckpt_path).expanduser()
    state = _read_state_dict(path)
    spec = spec_from_state_dict(state, str(path))
    inferred = _model_type_of(spec)
    wanted = "vit_h" if model_type == "default" else model_type
    if wanted and wanted != inferred:
        raise InputError(f"{path}: model type {model_type} was given, but the checkpoint is {inferred}")
    sam = _sam_from_spec(spec)
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{path}: SAM weights do not fit a {inferred} model ({exc})") from None
    device = device or default_device()
    sam.eval().to(device)
    log.info("loaded SAM %s (%s) on %s", path, inferred, device)
    return sam


def sam_model_type(ckpt_path: str | Path) -> str:
    """Model type name of a checkpoint file (vit_h, vit_l, vit_b or custom(...))."""
    path = Path(ckpt_path)
    return _model_type_of(spec_from_state_dict(_read_state_dict(path), str(path)))


def build_tiny_sam(path: str | Path, spec: SamSpec | str = "tiny", seed: int = 0) -> Path:
    """Save a real SAM checkpoint with random weights and a small image encoder.

    ``spec`` is a :class:`SamSpec` or a name in :data:`TINY_SPECS` (or ``vit_b`` etc. for a
    full-size random model, as the bench uses). The prompt encoder and mask decoder keep
    SAM's sizes (the builder fixes them), so the file is ~16 MB for ``tiny``. Masks from it
    are meaningless; it exists so every code path that loads and runs SAM runs offline.
    """
    import torch

    from sedna_sam.storage import atomic_write_bytes

    if isinstance(spec, str):
        spec = TINY_SPECS[spec] if spec in TINY_SPECS else CHECKPOINTS[spec].spec
    torch.manual_seed(seed)
    sam = _sam_from_spec(spec)
    import io

    buf = io.BytesIO()
    torch.save(sam.state_dict(), buf)
    return atomic_write_bytes(path, buf.getvalue())


# --- download ---------------------------------------------------------------------------


def download_hint(filename: str, directory: str | Path) -> str:
    """What to do when a checkpoint is missing and this machine cannot download it."""
    ckpt = next((c for c in CHECKPOINTS.values() if c.filename == filename), None)
    if ckpt is None:
        names = ", ".join(f"{c.name} ({c.filename})" for c in CHECKPOINTS.values())
        return f"Official SAM checkpoints: {names}; get one with `sedna-sam models download NAME --dir DIR`."
    return (
        f"Download {ckpt.url} ({ckpt.size:,} bytes) on a machine with internet access and put it at "
        f"{Path(directory) / ckpt.filename}, or run `sedna-sam models download {ckpt.name} --dir {directory}`."
    )


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_checkpoint(path: str | Path, ckpt: Checkpoint, check_hash: bool = True) -> None:
    """Raise :class:`InputError` when the file's size (and sha256) differ from the registry."""
    path = Path(path)
    size = path.stat().st_size
    if size != ckpt.size:
        raise InputError(f"{path}: {size:,} bytes, expected {ckpt.size:,} for {ckpt.filename}")
    if check_hash and ckpt.sha256 is not None:
        got = sha256_file(path)
        if got != ckpt.sha256:
            raise InputError(f"{path}: sha256 {got} does not match {ckpt.filename} ({ckpt.sha256})")


def download_checkpoint(
    name: str,
    directory: str | Path,
    url: str | None = None,
    ckpt: Checkpoint | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download an official checkpoint into ``directory``, resuming a partial ``.part`` file
    with an HTTP Range request, then verify size and sha256 and rename into place.

    ``url``/``ckpt`` override the registry entry (tests serve a small file from a local
    HTTP server). An existing verified file is kept. Offline: :class:`SednaSamError` saying
    which file to put where.
    """
    import urllib.error
    import urllib.request

    from tqdm import tqdm

    if ckpt is None:
        if name not in CHECKPOINTS:
            raise SednaSamError(f"unknown SAM checkpoint {name!r}; choose one of: {', '.join(CHECKPOINTS)}")
        ckpt = CHECKPOINTS[name]
    url = url or ckpt.url
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / ckpt.filename
    if final.exists():
        verify_checkpoint(final, ckpt)
        log.info("%s already downloaded and verified", final)
        return final
    part = final.with_name(final.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > ckpt.size:
        part.unlink()
        have = 0
    if have < ckpt.size:
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except (urllib.error.URLError, OSError) as exc:
            raise SednaSamError(
                f"cannot download {url}: {exc}\n{download_hint(ckpt.filename, directory)}"
            ) from None
        with response:
            if have and response.status != 206:  # server ignored the Range: start over
                log.warning("%s: server does not resume; downloading from the start", url)
                have = 0
            mode = "ab" if have else "wb"
            with (
                open(part, mode) as f,
                tqdm(
                    total=ckpt.size,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    desc=ckpt.filename,
                    disable=not progress,
                ) as bar,
            ):
                while block := response.read(1 << 20):
                    f.write(block)
                    bar.update(len(block))
                f.flush()
                os.fsync(f.fileno())
    try:
        verify_checkpoint(part, ckpt)
    except InputError as exc:
        if part.stat().st_size >= ckpt.size:
            part.unlink()  # complete but wrong: a resumed download cannot fix it
        raise SednaSamError(f"{exc}; rerun to resume or retry the download") from None
    os.replace(part, final)
    log.info("downloaded %s (%s bytes, sha256 verified)", final, f"{ckpt.size:,}")
    return final


def tiny_random_models(models_dir: str | Path, labels) -> tuple[str, str, dict]:
    """(SAM checkpoint, Segformer dir, SAM parameter overrides) of tiny RANDOM-weight models
    in ``models_dir``, built on first use: offline plumbing runs only, their masks mean nothing.

    The overrides keep every mask (a random SAM predicts low IoU and stability) and use a
    4x4 point grid without crops, so a run takes seconds on a CPU.
    """
    from sedna_sam.segformer import build_tiny_segformer

    models_dir = Path(models_dir)
    ckpt = models_dir / "sam_tiny_random.pth"
    if not ckpt.exists():
        build_tiny_sam(ckpt)
    semantic = models_dir / "segformer_tiny_random"
    if not (semantic / "config.json").exists():
        build_tiny_segformer(semantic, labels)
    overrides = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, crop_n_layers=0)
    return str(ckpt), str(semantic), overrides
