"""Numeric precision of SAM's image encoder and mask decoder, one registry entry each.

- ``fp32``: no autocast. With the ``eager`` decoder backend the records are segment-anything's
  own, bit for bit (the exact mode).
- ``bf16``: ``torch.autocast`` to bfloat16, on CPU (fast where the CPU has AVX512-BF16/AMX)
  and CUDA. Logits and scores come back as fp32 for thresholds, NMS and RLE.
- ``fp16``: ``torch.autocast`` to float16, CUDA only.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

from sedna_sam.errors import SednaSamError
from sedna_sam.registry import Registry


class Precision:
    """How SAM's networks run: ``autocast(device)`` is the context they run in."""

    name = "fp32"
    exact = True  # fp32: the same numbers as segment-anything's own code
    dtype_name: str | None = None
    devices: tuple[str, ...] = ("cpu", "cuda")

    def check(self, device: str) -> None:
        """Raise :class:`SednaSamError` when this precision cannot run on ``device``."""
        kind = device_kind(device)
        if kind not in self.devices:
            raise SednaSamError(
                f"SAM precision {self.name} is not available on {device} (only on {', '.join(self.devices)})"
            )

    def autocast(self, device: str) -> AbstractContextManager:
        if self.dtype_name is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_kind(device), dtype=getattr(torch, self.dtype_name))

    def __repr__(self) -> str:
        return f"Precision({self.name})"


PRECISIONS: Registry[Precision] = Registry("SAM precision")


@PRECISIONS.register("fp32")
class Fp32(Precision):
    pass


@PRECISIONS.register("bf16")
class Bf16(Precision):
    name = "bf16"
    exact = False
    dtype_name = "bfloat16"


@PRECISIONS.register("fp16")
class Fp16(Precision):
    name = "fp16"
    exact = False
    dtype_name = "float16"
    devices = ("cuda",)


def device_kind(device: str) -> str:
    """ "cuda" for "cuda", "cuda:1"; else the device string's type ("cpu")."""
    return str(device).split(":")[0]


def precision(name: str, device: str | None = None) -> Precision:
    """The registered precision ``name``, checked against ``device`` when given."""
    p = PRECISIONS.create(name)
    if device is not None:
        p.check(device)
    return p
