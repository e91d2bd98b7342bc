"""How the per-prompt part of SAM's mask decoder runs: one registry entry per backend.

Every backend computes the same two steps of :mod:`sedna_sam.annotate.decoder` for a batch
of point prompts on one image (the prompt-independent prefix is always eager torch):

- ``tokens(prefix, sparse)`` -> (iou_pred (B, 3) fp32, hyper_in (B, 3, C/8), keys (B, 4096, C));
- ``masks(keys, hyper_in, region, prompts)`` -> low-res logits (n, 3, 4 * rows, 4 * cols) fp32
  for the ``prompts`` (n,) indices of the batch.

Backends:

- ``eager``: segment-anything's modules called as they are. fp32 eager is the exact mode.
- ``compiled``: ``torch.compile`` of both steps; ``tokens`` at a fixed batch (the last batch
  of a crop is padded), ``masks`` per region shape. Compilation happens on the first call
  of each shape (timed as ``warmup_seconds``); inductor's on-disk cache
  (``$TORCHINDUCTOR_CACHE_DIR``, default ``<model cache>/inductor``) makes later processes
  start faster. When compilation fails (no C++ compiler, an unsupported op) it says so once
  in the log and runs eager.
- ``onnx``: both steps exported once per decoder weights and batch size (cached by a hash
  of the weights under ``<model cache>/sam-decoder/``) and run by onnxruntime on CPU; fp32.

Each comes in two forms (:class:`DecoderForm`): the stock decoder's operations
(:mod:`~sedna_sam.annotate.decoder`; ``eager``, ``compiled``, ``onnx``) and the factored
decoder (:mod:`~sedna_sam.annotate.factored`; ``factored``, ``compiled-factored``,
``onnx-factored``), the same function with the image-side projections moved onto the prompt
tokens: about half the arithmetic, float rounding not the stock one's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from sedna_sam.annotate import decoder as dec
from sedna_sam.annotate import factored as fac
from sedna_sam.annotate.precision import Precision, device_kind
from sedna_sam.errors import SednaSamError
from sedna_sam.registry import Registry

log = logging.getLogger(__name__)

ONNX_OPSET = 17
EXPORT_FORMAT = "sedna-sam-decoder/1"  # part of the export cache key: bump when the graphs change


@dataclass(frozen=True)
class DecoderForm:
    """How the per-prompt decoder is written: ``tokens(sam, prefix, sparse)`` ->
    (iou, hyper_in, keys); ``src(keys, region)`` -> the region's embedding pixels in the
    layout ``masks(sam, src, hyper_in)`` takes, its region rows at dim ``src_rows_dim`` and
    columns at the next; ``eager``: the registered backend that runs this form without
    compilation (the fallback)."""

    name: str
    tokens: Callable[..., tuple[Tensor, Tensor, Tensor]]
    src: Callable[[Tensor, tuple[int, int]], Tensor]
    masks: Callable[..., Tensor]
    src_rows_dim: int
    eager: str


# src: (n, C, rows, cols) for the stock form, channels last (n, rows, cols, C) when factored
STOCK_FORM = DecoderForm("stock", dec.decode_tokens, dec.region_src, dec.masks_from_src, 2, "eager")
FACTORED_FORM = DecoderForm(
    "factored", fac.decode_tokens, fac.region_pixels, fac.masks_from_pixels, 1, "factored"
)


class DecoderBackend:
    """``eager``: the decoder's modules as they are (see the module docstring)."""

    name = "eager"
    form: DecoderForm = STOCK_FORM
    precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")
    devices: tuple[str, ...] = ("cpu", "cuda")

    def __init__(self, sam, precision: Precision, batch: int) -> None:
        self.sam = sam
        self.precision = precision
        self.batch = int(batch)
        self.device = str(sam.device)
        self.warmup_seconds = 0.0
        self.fallback: str | None = None  # why this backend runs as another one
        if precision.name not in self.precisions:
            raise SednaSamError(
                f"SAM decoder backend {self.name} does not support {precision.name} "
                f"(supported: {', '.join(self.precisions)})"
            )
        if device_kind(self.device) not in self.devices:
            raise SednaSamError(f"SAM decoder backend {self.name} does not run on {self.device}")
        precision.check(self.device)

    @property
    def exact(self) -> bool:
        """True when the outputs are segment-anything's own, bit for bit (eager fp32)."""
        return self.effective == "eager" and self.precision.exact

    @property
    def effective(self) -> str:
        """The backend that actually runs (the form's eager one after a failed compilation)."""
        return self.form.eager if self.fallback else self.name

    def prefix(self, features: Tensor) -> dec.ImagePrefix:
        with self.precision.autocast(self.device):
            return dec.image_prefix(self.sam, features)

    def tokens(self, prefix: dec.ImagePrefix, sparse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        with self.precision.autocast(self.device):
            iou, hyper, keys = self.form.tokens(self.sam, prefix, sparse)
        return iou.float(), hyper, keys

    def masks(self, keys: Tensor, hyper: Tensor, region: tuple[int, int], prompts: Tensor) -> Tensor:
        with self.precision.autocast(self.device):
            src = self.form.src(keys[prompts], region)
            return self.form.masks(self.sam, src, hyper[prompts]).float()


DECODER_BACKENDS: Registry[DecoderBackend] = Registry("SAM decoder backend")
DECODER_BACKENDS.register("eager")(DecoderBackend)


@DECODER_BACKENDS.register("factored")
class FactoredBackend(DecoderBackend):
    """The factored decoder (:mod:`~sedna_sam.annotate.factored`), eager."""

    name = "factored"
    form = FACTORED_FORM


def pad_rows(x: Tensor, rows: int) -> Tensor:
    """``x`` with its last row repeated up to ``rows`` rows (fixed-shape batches)."""
    if x.shape[0] >= rows:
        return x
    return torch.cat([x, x[-1:].expand(rows - x.shape[0], *x.shape[1:])])


def default_cache_dir() -> Path:
    from sedna_sam.model_files import cache_root

    return cache_root()


@DECODER_BACKENDS.register("compiled")
class CompiledBackend(DecoderBackend):
    """``torch.compile`` of :func:`decoder.decode_tokens` (fixed batch) and
    :func:`decoder.decode_masks` (per region shape); eager when compilation fails."""

    name = "compiled"

    def __init__(self, sam, precision: Precision, batch: int) -> None:
        super().__init__(sam, precision, batch)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(default_cache_dir() / "inductor"))
        self._seen: set[tuple] = set()
        self._tokens = torch.compile(self._tokens_graph, dynamic=False)
        self._masks = torch.compile(self._masks_graph, dynamic=False)

    def _tokens_graph(self, keys, pe, k0, v0, q_img0, sparse):
        return self.form.tokens(self.sam, dec.ImagePrefix(keys, pe, k0, v0, q_img0), sparse)

    def _masks_graph(self, keys, hyper, rows: int, cols: int):
        return self.form.masks(self.sam, self.form.src(keys, (rows, cols)), hyper)

    def _run(self, key: tuple, compiled, eager, *args):
        """``compiled(*args)``; the first call of a shape is timed as warm-up; any failure
        to compile switches this backend to ``eager`` for good (logged once)."""
        if self.fallback:
            return eager(*args)
        first = key not in self._seen
        start = time.perf_counter()
        try:
            out = compiled(*args)
        except Exception as exc:  # inductor raises many types (no compiler, lowering errors)
            self.fallback = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            log.warning(
                "torch.compile of the SAM decoder failed (%s); running the decoder eager "
                "(--sam-backend eager avoids the attempt)",
                self.fallback,
            )
            return eager(*args)
        if first:
            self._seen.add(key)
            self.warmup_seconds += time.perf_counter() - start
            log.info("SAM decoder compiled for %s in %.1f s", key, time.perf_counter() - start)
        return out

    def tokens(self, prefix: dec.ImagePrefix, sparse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = sparse.shape[0]
        with self.precision.autocast(self.device):
            iou, hyper, keys = self._run(
                ("tokens", self.batch, self.precision.name),
                self._tokens,
                self._tokens_graph,
                *prefix.tensors(),
                pad_rows(sparse, self.batch),
            )
        return iou[:n].float(), hyper[:n], keys[:n]

    def masks(self, keys: Tensor, hyper: Tensor, region: tuple[int, int], prompts: Tensor) -> Tensor:
        # The whole (padded) batch: one graph per region shape, however many prompts survive.
        n = keys.shape[0]
        with self.precision.autocast(self.device):
            low = self._run(
                ("masks", self.batch, *region, self.precision.name),
                self._masks,
                self._masks_graph,
                pad_rows(keys, self.batch),
                pad_rows(hyper, self.batch),
                *region,
            )
        return low[:n][prompts].float()


@DECODER_BACKENDS.register("compiled-factored")
class CompiledFactoredBackend(CompiledBackend):
    """``torch.compile`` of the factored decoder; ``factored`` when compilation fails."""

    name = "compiled-factored"
    form = FACTORED_FORM


# --- onnx -------------------------------------------------------------------------------


class _TokensGraph(torch.nn.Module):
    def __init__(self, sam, form: DecoderForm) -> None:
        super().__init__()
        self.sam = sam
        self.form = form

    def forward(self, keys, pe, k0, v0, q_img0, sparse):
        return self.form.tokens(self.sam, dec.ImagePrefix(keys, pe, k0, v0, q_img0), sparse)


class _MasksGraph(torch.nn.Module):
    def __init__(self, sam, form: DecoderForm) -> None:
        super().__init__()
        self.sam = sam
        self.form = form

    def forward(self, src, hyper):
        return self.form.masks(self.sam, src, hyper)


def decoder_fingerprint(sam) -> str:
    """sha256 over the mask decoder's and prompt encoder's weights (what the exported
    graphs contain), so an export is reused for the same weights whatever the file."""
    h = hashlib.sha256(EXPORT_FORMAT.encode())
    for module in (sam.mask_decoder, sam.prompt_encoder):
        for name, tensor in sorted(module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def export_onnx(
    sam, batch: int, cache_dir: Path | None = None, form: DecoderForm = STOCK_FORM
) -> tuple[Path, Path, float]:
    """(tokens graph, masks graph, seconds spent exporting: 0 when cached) for ``sam``'s
    decoder in ``form`` at ``batch`` prompts, exported once into ``cache_dir`` (default the
    model cache) under the hash of its weights."""
    from sedna_sam.storage import atomic_write_bytes

    cache_dir = Path(cache_dir or default_cache_dir()) / "sam-decoder"
    key = decoder_fingerprint(sam)[:24]
    versions = f"torch{torch.__version__.split('+')[0]}-opset{ONNX_OPSET}-{form.name}"
    tokens_path = cache_dir / f"{key}-{versions}-tokens-b{batch}.onnx"
    masks_path = cache_dir / f"{key}-{versions}-masks.onnx"
    if tokens_path.is_file() and masks_path.is_file():
        return tokens_path, masks_path, 0.0
    start = time.perf_counter()
    model = sam  # on CPU: the onnx backend runs there only
    with torch.no_grad():
        features = torch.zeros(1, model.prompt_encoder.embed_dim, dec.EMBED_SIDE, dec.EMBED_SIDE)
        prefix = dec.image_prefix(model, features)
        sparse = torch.zeros(batch, 2, model.prompt_encoder.embed_dim)
        _, hyper, keys = form.tokens(model, prefix, sparse)
        src = form.src(keys, (dec.EMBED_SIDE, dec.EMBED_SIDE)).contiguous()
        rows_dim = form.src_rows_dim
        for path, module, args, names, outputs, dynamic in (
            (
                tokens_path,
                _TokensGraph(model, form),
                (*prefix.tensors(), sparse),
                ["keys", "pe", "k0", "v0", "q_img0", "sparse"],
                ["iou_pred", "hyper_in", "keys_out"],
                None,
            ),
            (
                masks_path,
                _MasksGraph(model, form),
                (src, hyper),
                ["src", "hyper_in"],
                ["low_res"],
                {
                    "src": {0: "n", rows_dim: "rows", rows_dim + 1: "cols"},
                    "hyper_in": {0: "n"},
                    "low_res": {0: "n", 2: "h", 3: "w"},
                },
            ),
        ):
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            try:
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # tracer warnings about shapes taken as constants
                    torch.onnx.export(
                        module,
                        args,
                        str(tmp),
                        dynamo=False,
                        opset_version=ONNX_OPSET,
                        input_names=names,
                        output_names=outputs,
                        dynamic_axes=dynamic,
                    )
                atomic_write_bytes(path, tmp.read_bytes())
            finally:
                tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    log.info("exported SAM decoder to ONNX (%s, batch %d) in %.1f s", cache_dir, batch, seconds)
    return tokens_path, masks_path, seconds


@DECODER_BACKENDS.register("onnx")
class OnnxBackend(DecoderBackend):
    """onnxruntime (CPU) on the exported decoder graphs; fp32."""

    name = "onnx"
    precisions = ("fp32",)
    devices = ("cpu",)

    def __init__(self, sam, precision: Precision, batch: int, cache_dir: Path | None = None) -> None:
        super().__init__(sam, precision, batch)
        try:
            import onnxruntime as ort
        except ImportError:
            raise SednaSamError(
                "SAM decoder backend onnx needs onnxruntime: pip install 'sedna-sam[onnx]' "
                "(or onnxruntime), or choose --sam-backend eager|compiled"
            ) from None
        tokens_path, masks_path, self.warmup_seconds = export_onnx(sam, self.batch, cache_dir, self.form)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        start = time.perf_counter()
        self._tokens = ort.InferenceSession(str(tokens_path), options, providers=["CPUExecutionProvider"])
        self._masks = ort.InferenceSession(str(masks_path), options, providers=["CPUExecutionProvider"])
        # the factored graph does not read every prefix tensor, and the exporter drops those
        self._token_inputs = {i.name for i in self._tokens.get_inputs()}
        self.warmup_seconds += time.perf_counter() - start

    def tokens(self, prefix: dec.ImagePrefix, sparse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        n = sparse.shape[0]
        names = ("keys", "pe", "k0", "v0", "q_img0")
        feed = {k: _np(t) for k, t in zip(names, prefix.tensors()) if k in self._token_inputs}
        feed["sparse"] = _np(pad_rows(sparse, self.batch))
        iou, hyper, keys = (torch.from_numpy(a) for a in self._tokens.run(None, feed))
        return iou[:n], hyper[:n], keys[:n]

    def masks(self, keys: Tensor, hyper: Tensor, region: tuple[int, int], prompts: Tensor) -> Tensor:
        src = _np(self.form.src(keys[prompts], region))
        (low,) = self._masks.run(None, {"src": src, "hyper_in": _np(hyper[prompts])})
        return torch.from_numpy(low)


@DECODER_BACKENDS.register("onnx-factored")
class OnnxFactoredBackend(OnnxBackend):
    """onnxruntime (CPU) on the factored decoder's graphs; fp32."""

    name = "onnx-factored"
    form = FACTORED_FORM


def _np(t: Tensor) -> Any:
    return t.detach().float().contiguous().cpu().numpy()


def make_backend(name: str, sam, precision: Precision, batch: int) -> DecoderBackend:
    """The registered backend ``name`` for ``sam`` at ``precision`` and ``batch`` prompts."""
    return DECODER_BACKENDS.get(name)(sam, precision, batch)
