"""Headless Chromium for tests that look at pages as a person would: Debian's
``/usr/bin/chromium`` driven by the ``playwright`` package (no browser download).

Skips when either is missing, except with ``SEDNA_SAM_REQUIRE_BROWSER=1`` (CI), where it
fails. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("SEDNA_SAM_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def browser_or_skip():
    """playwright's ``sync_playwright``, or skip (fail under SEDNA_SAM_REQUIRE_BROWSER=1)."""
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason, sync_playwright = "the playwright package is not installed", None
    if reason is None and not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        reason = f"no chromium at {CHROMIUM}"
    if reason:
        if os.environ.get("SEDNA_SAM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"browser required (SEDNA_SAM_REQUIRE_BROWSER=1) but {reason}")
        pytest.skip(reason)
    return sync_playwright


@contextmanager
def chromium_page(profile_dir: Path, width: int = 1280, height: int = 900) -> Iterator:
    """A page of a fresh headless Chromium (its own user-data-dir)."""
    sync_playwright = browser_or_skip()
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile_dir),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def screenshot(page, name: str, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    return path


def images_loaded(page) -> list[int]:
    """naturalWidth of every <img> once loaded (0 = broken)."""
    page.wait_for_function("[...document.images].every(i => i.complete)", timeout=30_000)
    return page.eval_on_selector_all("img", "els => els.map(i => i.naturalWidth)")
