"""Hostile inputs under ``ulimit -v`` 2 GiB (issue 12, finding 2): every case of
``bench/robustness.py`` runs in its own process with RLIMIT_AS set, and must end as a
named per-item error, exit status 1, with the good item beside it done. Today's main
allocated 18.6 GiB (sizes), 1.5 GiB (zigzag), 2.5 GiB (PNG bomb) or crashed on PIL's
DecompressionBombError for these."""

from __future__ import annotations

import importlib.util
import resource
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "robustness.py"
LIMIT = 2 << 30


def _bench():
    spec = importlib.util.spec_from_file_location("bench_robustness", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


robustness = _bench()


def test_imports_of_the_torch_free_commands_fit_in_the_cap():
    """The cap tests the inputs, not the imports: the converters start well under it."""
    code = (
        "import sedna_sam.cli, sedna_sam.commands.convert, sedna_sam.convert, sedna_sam.labelstudio.backend, "
        "sedna_sam.cloud.service, cv2"
    )

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))

    done = subprocess.run([sys.executable, "-c", code], preexec_fn=limit, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("case", robustness.CASES, ids=lambda c: c.name)
def test_hostile_input_under_2_gib_is_a_named_per_item_error(case, tmp_path_factory):
    work = tmp_path_factory.mktemp(case.name)
    result = robustness.run_case(case, work, LIMIT, timeout_s=240)
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == case.exit_code, result.output
    assert result.named_error, f"{result.outcome}\n{result.output}"
    assert result.good_done, f"the good item was not done:\n{result.output}"
    assert result.peak_rss_mb < 1024, result.peak_rss_mb


def test_png_bomb_is_a_valid_png_that_only_its_header_gives_away(tmp_path):
    """The bomb is a real PNG (not a truncated file): Pillow reads its header, 30000 x 30000."""
    from PIL import Image

    bomb = robustness.png_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 1 << 20
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(bomb) as im:
            assert im.size == (30000, 30000)
    finally:
        Image.MAX_IMAGE_PIXELS = before
