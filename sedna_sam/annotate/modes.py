"""Which decoder backend, precisions and batch sizes SAM runs with, ``auto`` resolved by
measuring on this machine.

A :class:`SamMode` is what the user asks for (``--sam-backend``, ``--sam-precision``,
``--sam-encoder-precision``, ``--sam-decoder-batch``, ``--sam-encoder-batch``); a
:class:`ResolvedMode` is what runs, and is written into every SSA file (``metadata``).

``backend="auto"`` times each backend that can run the requested precision on this device
(``eager``, ``compiled``, ``onnx``) on one synthetic prompt batch through the whole decoder,
after a warm-up (compilation, export), and takes the fastest. The choice is kept in
``<model cache>/sam-modes.json`` per machine, device, library versions, precision and
batch, so the measurement (about two minutes on a 2-core CPU, mostly compiling) happens
once per machine (worker processes wait on a lock file for the first one's result). A run
with fewer than :data:`AUTO_MIN_BATCHES` prompt batches per image (quick looks, tests)
would not pay back a compilation: ``auto`` is ``eager`` there, without measuring.

Defaults: decoder batch = ``points_per_batch`` on CPU (the stock generator's batches: the
exact mode needs them), 256 on CUDA; crops through the encoder one at a time on CPU (as
``SamPredictor.set_image``), all together on CUDA.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sedna_sam.annotate.backends import DECODER_BACKENDS, DecoderBackend, default_cache_dir
from sedna_sam.annotate.precision import device_kind, precision
from sedna_sam.errors import SednaSamError

log = logging.getLogger(__name__)

AUTO = "auto"
AUTO_MIN_BATCHES = 4
CUDA_DECODER_BATCH = 256
MODES_FILE = "sam-modes.json"


@dataclass(frozen=True)
class SamMode:
    """What to run SAM with; None/"auto" fields are resolved by :func:`resolve_mode`.

    ``precision``/``encoder_precision`` None: the annotate ``--autocast`` value, else fp32.
    """

    backend: str = "auto"
    precision: str | None = None
    encoder_precision: str | None = None
    decoder_batch: int | None = None
    encoder_batch: int | None = None


@dataclass(frozen=True)
class ResolvedMode:
    """What SAM runs with (names of registry entries, batch sizes) and how it was chosen."""

    backend: str
    precision: str
    encoder_precision: str
    decoder_batch: int
    encoder_batch: int
    chosen_by: str = "flags"  # "flags", "measured", "cached measurement" or "small workload"

    @property
    def exact(self) -> bool:
        """Records equal to segment-anything's own generator (eager, fp32, stock batches)."""
        return self.backend == "eager" and self.precision == "fp32" and self.encoder_precision == "fp32"

    def metadata(self, backend: DecoderBackend | None = None) -> dict[str, Any]:
        """The ``sam_mode`` entry of an SSA file's metadata."""
        out = dict(asdict(self))
        if backend is not None and backend.fallback:
            out["backend"] = backend.effective
            out["fallback"] = f"{self.backend} failed: {backend.fallback}"
        out["exact"] = (
            out["backend"] == "eager" and self.precision == "fp32" and self.encoder_precision == "fp32"
        )
        return out


def prompts_per_image(points_per_side: int, crop_n_layers: int, downscale: int) -> int:
    """Point prompts the generator decodes per image: (2^i)^2 crops of
    ``int(points_per_side / downscale^i)``^2 points in crop layer i."""
    return sum(4**i * int(points_per_side / downscale**i) ** 2 for i in range(crop_n_layers + 1))


def resolve_mode(
    sam, mode: SamMode, points_per_batch: int, autocast: str | None = None, prompts: int | None = None
) -> ResolvedMode:
    """Concrete names and batch sizes for ``mode`` on ``sam``'s device (see module
    docstring); ``prompts``: point prompts per image (None: a large workload)."""
    device = str(sam.device)
    cuda = device_kind(device) == "cuda"
    dec_precision = mode.precision or autocast or "fp32"
    enc_precision = mode.encoder_precision or autocast or "fp32"
    for name in (dec_precision, enc_precision):
        if name != AUTO:
            precision(name, device)
    batch = mode.decoder_batch or (max(points_per_batch, CUDA_DECODER_BATCH) if cuda else points_per_batch)
    encoder_batch = mode.encoder_batch or (8 if cuda else 1)
    if enc_precision == AUTO:
        enc_precision = "bf16" if cuda else "fp32"
    resolved = ResolvedMode(mode.backend, dec_precision, enc_precision, int(batch), int(encoder_batch))
    if mode.backend != AUTO and dec_precision != AUTO:
        DECODER_BACKENDS.get(mode.backend)  # unknown names fail here, with the choices
        return resolved
    if mode.backend == AUTO and prompts is not None and prompts < AUTO_MIN_BATCHES * resolved.decoder_batch:
        log.info("SAM decoder: eager (%d prompts per image: too few to pay for measuring/compiling)", prompts)
        resolved = replace(resolved, backend="eager", chosen_by="small workload")
        if dec_precision != AUTO:
            return resolved
    backends = [resolved.backend] if resolved.backend != AUTO else DECODER_BACKENDS.names()
    precisions = [dec_precision] if dec_precision != AUTO else ["fp32", "bf16" if not cuda else "fp16"]
    (backend, prec), how = choose_backend(sam, backends, precisions, resolved.decoder_batch)
    return replace(resolved, backend=backend, precision=prec, chosen_by=how)


def machine_key(sam, batch: int, backends: list[str], precisions: list[str]) -> str:
    """What a measurement depends on: CPU/GPU model, threads, library versions, the decoder."""
    import torch

    device = str(sam.device)
    if device_kind(device) == "cuda":
        hardware = torch.cuda.get_device_name(torch.device(device))
    else:
        hardware = f"{_cpu_model()} x{torch.get_num_threads()} threads"
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = "none"
    return "|".join(
        [
            hardware,
            f"torch {torch.__version__}",
            f"onnxruntime {ort}",
            f"batch {batch}",
            f"backends {','.join(backends)}",
            f"precisions {','.join(precisions)}",
        ]
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def choose_backend(
    sam, backends: list[str], precisions: list[str], batch: int, cache_dir: Path | None = None
) -> tuple[tuple[str, str], str]:
    """((backend, precision), "measured" | "cached measurement"): the fastest combination
    that runs here, measured once per machine key and kept in ``sam-modes.json``."""
    path = Path(cache_dir or default_cache_dir()) / MODES_FILE
    key = machine_key(sam, batch, backends, precisions)
    with _locked(path.with_name(path.name + ".lock")):
        cache = _read_json(path)
        if key in cache:
            entry = cache[key]
            return (entry["backend"], entry["precision"]), "cached measurement"
        best = _measure_all(sam, backends, precisions, batch, path)
        cache = _read_json(path)
        cache[key] = best
        _write_json(path, cache)
    return (best["backend"], best["precision"]), "measured"


def _measure_all(sam, backends: list[str], precisions: list[str], batch: int, path: Path) -> dict[str, Any]:
    log.warning(
        "measuring SAM decoder backends %s at %s on this machine (once; kept in %s) ...",
        ", ".join(backends),
        ", ".join(precisions),
        path,
    )
    timings: dict[str, float] = {}
    for prec in precisions:
        for name in backends:
            try:
                seconds = measure_backend(sam, name, prec, batch)
            except SednaSamError as exc:
                log.info("backend %s/%s not available here: %s", name, prec, exc)
                continue
            if seconds is not None:
                timings[f"{name}/{prec}"] = seconds
    if not timings:
        raise SednaSamError(f"no SAM decoder backend of {backends} runs at {precisions} on {sam.device}")
    best = min(timings, key=timings.__getitem__)
    backend, prec = best.split("/")
    log.warning(
        "SAM decoder: %s chosen (%s)",
        best,
        ", ".join(f"{k} {v:.2f} s/batch" for k, v in sorted(timings.items())),
    )
    return {"backend": backend, "precision": prec, "seconds_per_batch": timings, "measured": time.time()}


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created) while the block runs; none where the
    directory is read-only or the platform has no ``fcntl``."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
    except (ImportError, OSError):
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def measure_backend(sam, name: str, prec: str, batch: int, repeats: int = 3) -> float | None:
    """Median seconds of one prompt batch (tokens + masks of all prompts, 2:1 image) after a
    warm-up call; None when the backend fell back to another one."""
    import torch

    from sedna_sam.annotate.decoder import EMBED_SIDE, embed_region, point_sparse

    backend = DECODER_BACKENDS.get(name)(sam, precision(prec, str(sam.device)), batch)
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(1, sam.prompt_encoder.embed_dim, EMBED_SIDE, EMBED_SIDE, generator=gen)
    features = features.to(sam.device)
    points = torch.rand(batch, 2, generator=gen, dtype=torch.float64) * torch.tensor(
        [1024.0, 512.0], dtype=torch.float64
    )
    region = embed_region((512, 1024))
    times = []
    with torch.inference_mode():
        prefix = backend.prefix(features)
        sparse = point_sparse(sam, points.numpy())
        prompts = torch.arange(batch, device=features.device)
        for _ in range(repeats + 1):
            start = time.perf_counter()
            _, hyper, keys = backend.tokens(prefix, sparse)
            backend.masks(keys, hyper, region, prompts)
            if device_kind(str(sam.device)) == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    if backend.fallback:
        return None
    return statistics.median(times[1:])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from sedna_sam.storage import atomic_write_json

    try:
        atomic_write_json(path, data, indent=2)
    except OSError as exc:  # a read-only cache only costs a new measurement next time
        log.warning("cannot keep the SAM mode measurement in %s: %s", path, exc)
