"""Reading images defensively (issue 12, findings 2 and 5): the pixel cap is checked on the
header before anything is decoded, Pillow's DecompressionBombError never escapes, and float
TIFFs in 0-1 come out scaled instead of clipped to black."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sedna_sam.errors import InputError, SednaSamError
from sedna_sam.images import (
    DEFAULT_MAX_PIXELS,
    check_pixels,
    header_size,
    image_size,
    max_image_pixels,
    read_image_rgb,
    read_label_png,
    write_png,
)


def test_float_tiff_in_0_1_is_scaled_not_black(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.random((20, 30)).astype(np.float32)
    cv2.imwrite(str(tmp_path / "gray.tif"), gray)
    out = read_image_rgb(tmp_path / "gray.tif")
    np.testing.assert_array_equal(out[:, :, 0], np.rint(gray * 255).astype(np.uint8))
    color = rng.random((20, 30, 3)).astype(np.float32)  # Pillow cannot open this one: header read here
    cv2.imwrite(str(tmp_path / "color.tif"), color)
    assert header_size(tmp_path / "color.tif") == (30, 20)
    out = read_image_rgb(tmp_path / "color.tif")
    assert out.shape == (20, 30, 3) and out.mean() > 100  # main clipped it to (almost) black
    assert np.abs(out.astype(int) - np.rint(color[:, :, ::-1] * 255)).max() <= 6  # OpenCV's lossy float codec


@pytest.mark.parametrize(
    "values, message",
    [(np.array([[-3.0, 500.0]]), "expected 0-1 or 0-255"), (np.array([[np.nan, 0.5]]), "NaN")],
)
def test_float_images_out_of_range_are_refused_with_a_message(values, message, tmp_path):
    cv2.imwrite(str(tmp_path / "f.tif"), np.tile(values.astype(np.float32), (4, 4)))
    with pytest.raises(InputError, match=message):
        read_image_rgb(tmp_path / "f.tif")


def test_pixel_cap_is_configurable_and_checked_on_the_header(tmp_path, monkeypatch):
    write_png(tmp_path / "f.png", np.zeros((40, 50, 3), np.uint8))
    assert max_image_pixels() == DEFAULT_MAX_PIXELS == 50_000_000
    monkeypatch.setenv("SEDNA_SAM_MAX_IMAGE_PIXELS", "1999")
    for read in (read_image_rgb, image_size):
        with pytest.raises(InputError, match="f.png: 50x40 is 0.0 megapixels, over the cap"):
            read(tmp_path / "f.png")
    write_png(tmp_path / "label.png", np.zeros((40, 50), np.uint16))
    with pytest.raises(InputError, match="over the cap"):
        read_label_png(tmp_path / "label.png")
    monkeypatch.setenv("SEDNA_SAM_MAX_IMAGE_PIXELS", "2000")
    assert read_image_rgb(tmp_path / "f.png").shape == (40, 50, 3)
    monkeypatch.setenv("SEDNA_SAM_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(SednaSamError, match="SEDNA_SAM_MAX_IMAGE_PIXELS"):
        max_image_pixels()


def test_decompression_bomb_is_an_input_error_naming_the_file(tmp_path):
    """Over Pillow's own limit (main: PIL.Image.DecompressionBombError, a crash)."""
    from test_robustness import robustness

    bomb = robustness.png_bomb(tmp_path / "bomb.png")
    for read in (image_size, read_image_rgb):
        with pytest.raises(InputError, match=r"bomb.png: declares 900.0 megapixels, over the cap"):
            read(bomb)


def test_check_pixels_refuses_non_positive_sizes():
    with pytest.raises(InputError, match="not positive"):
        check_pixels(0, 10, "x")
    check_pixels(7000, 7000, "x")  # 49 MP: under the default cap


def test_annotate_reports_an_image_over_the_cap_and_does_the_others(
    tmp_path, tiny_annotate_options, monkeypatch
):
    """annotate reads through read_image_rgb: an image over the cap is one failed item."""
    from sedna_sam.annotate.batch import annotate_images

    write_png(tmp_path / "small.png", np.full((64, 128, 3), 90, np.uint8))
    write_png(tmp_path / "large.png", np.full((96, 192, 3), 90, np.uint8))
    monkeypatch.setenv("SEDNA_SAM_MAX_IMAGE_PIXELS", str(64 * 128))
    report = annotate_images(
        [tmp_path / "large.png", tmp_path / "small.png"],
        tmp_path / "out",
        tiny_annotate_options,
        progress=False,
    )
    assert report.done == 1 and report.exit_code == 1
    ((item, message),) = report.failed
    assert "large" in item and "over the cap" in message
