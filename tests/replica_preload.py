"""Imported once by the forkserver the test replicas fork from (tests/cloud_replica.py):
the heavy imports a `cloud serve` replica makes, done before the fork so that each
(re)start of a replica skips them. transformers loads its model classes lazily, so they
are named here, not just the package."""

from __future__ import annotations

import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

import sedna_sam.cli  # noqa: F401
import sedna_sam.cloud.adapters  # noqa: F401
import sedna_sam.cloud.server  # noqa: F401
import sedna_sam.cloud.service  # noqa: F401
import sedna_sam.commands.cloud  # noqa: F401

torch.set_num_threads(1)  # no OpenMP pool in the forkserver: its children fork safely
MODEL_CLASSES = (SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor)
