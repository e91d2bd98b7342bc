"""Shared test set-up. Fixture modules are ``tests/fixtures_*.py`` (one per area), loaded
as pytest plugins so that each area owns its own fixtures file."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = sorted(p.stem for p in Path(__file__).parent.glob("fixtures_*.py"))
