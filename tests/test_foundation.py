"""Labels, storage, images, synthetic scenes, SSA RLE and Segformer loading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from sedna_sam.errors import InputError
from sedna_sam.formats.ssa import decode_rle, encode_rle, read_ssa, write_ssa
from sedna_sam.images import read_image_rgb, read_label_png, write_png
from sedna_sam.labels import labeling_config_xml, labels_from_dict, load_labels
from sedna_sam.storage import DatasetLayout, atomic_write_text, list_images
from sedna_sam.synthetic import make_street_scene, render_scene


def test_shipped_configs_match_builtins():
    cs = load_labels("cityscapes")
    assert len(cs) == 19 and cs.id2label[0] == "road" and cs.id2label[18] == "bicycle"
    assert cs.colour(13) == (0, 0, 142)
    assert load_labels("foggy_driving").id2label == cs.id2label
    ade = load_labels("ade20k")
    assert len(ade) == 150 and ade.id2label[0] == "wall" and ade.id2label[149] == "flag"
    shipped = Path(__file__).parent.parent / "config" / "labeling_interface_template.xml"
    assert shipped.read_text() == labeling_config_xml(cs)
    # read as package data (importlib.resources), the same files as the checkout's config/
    from sedna_sam.labels import config_file

    assert config_file("labeling_interface_template.xml").read_text() == shipped.read_text()
    assert cs.source == "sedna_sam.config/cityscapes_id2label.json"


def test_labels_accept_hf_config_and_reject_bad(tmp_path):
    hf = {"architectures": ["X"], "id2label": {"0": "a", "1": "b & <c>"}, "num_labels": 2}
    ls = labels_from_dict(hf)
    xml = labeling_config_xml(ls)
    assert 'value="b &amp; &lt;c&gt;"' in xml
    with pytest.raises(InputError, match="outside"):
        labels_from_dict({"300": "x"})
    with pytest.raises(InputError, match="unique"):
        labels_from_dict({"0": "x", "1": "x"})
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(InputError, match="bad.json"):
        load_labels(bad)


def test_atomic_write_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert os.listdir(target.parent) == ["a.txt"]
    umask = os.umask(0o022)
    try:
        atomic_write_text(target, "three")
    finally:
        os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o644  # readable like a plain open(), not mkstemp's 0600


def test_image_reading_normalises_and_names_file(tmp_path):
    import cv2

    gray16 = np.arange(64 * 32, dtype=np.uint16).reshape(32, 64) * 30
    cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 2] = 255  # red in BGRA
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    assert read_image_rgb(tmp_path / "g16.png").shape == (32, 64, 3)
    assert tuple(read_image_rgb(tmp_path / "rgba.png")[0, 0]) == (255, 0, 0)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(InputError, match="empty.jpg: file is empty"):
        read_image_rgb(tmp_path / "empty.jpg")
    with pytest.raises(InputError, match="corrupt.jpg"):
        read_image_rgb(tmp_path / "corrupt.jpg")


def test_uint16_png_roundtrip(tmp_path):
    m = np.array([[0, 18, 255], [300, 7, 1]], dtype=np.uint16)
    write_png(tmp_path / "x_TrainIds.png", m)
    back = read_label_png(tmp_path / "x_TrainIds.png")
    assert back.dtype == np.uint16 and np.array_equal(back, m)


def test_layout_and_listing(tmp_path):
    layout = DatasetLayout(tmp_path)
    layout.raw_data.mkdir()
    for name in ["b.JPG", "a-1.2 ü.png", "notes.txt", ".hidden.png", "c.Tif"]:
        (layout.raw_data / name).write_bytes(b"x")
    assert [p.name for p in list_images(layout.raw_data)] == ["a-1.2 ü.png", "b.JPG", "c.Tif"]
    assert layout.find_image("a-1.2 ü").name == "a-1.2 ü.png"
    assert layout.find_image("c").name == "c.Tif"
    assert layout.trainids("a-1.2 ü").name == "a-1.2 ü_TrainIds.png"


def test_rle_and_ssa_roundtrip(tmp_path):
    lab = make_street_scene(256, 512, seed=3)
    m = lab == 13
    assert np.array_equal(decode_rle(encode_rle(m)), m)
    assert np.array_equal(decode_rle(json.loads(json.dumps(encode_rle(m)))), m)
    write_ssa(tmp_path / "s_semantic.json", lab, [])
    res = read_ssa(tmp_path / "s_semantic.json")
    assert np.array_equal(res.class_map, lab)
    (tmp_path / "broken_semantic.json").write_text("[1,")
    with pytest.raises(InputError, match="broken_semantic.json: malformed JSON"):
        read_ssa(tmp_path / "broken_semantic.json")


def test_synthetic_scene_properties():
    lab = make_street_scene(512, 1024, seed=0)
    assert lab.shape == (512, 1024) and lab.dtype == np.uint8
    import cv2

    n_cars, _ = cv2.connectedComponents((lab == 13).astype(np.uint8))
    assert n_cars - 1 >= 2  # several instances
    assert (lab == 5).any()  # thin poles
    img = render_scene(lab, seed=0)
    assert img.shape == (512, 1024, 3) and img.dtype == np.uint8
    assert not np.array_equal(render_scene(lab, seed=0, fog=0.6), img)


def test_tiny_segformer_loads_through_public_loader(tiny_segformer_dir, labels):
    from sedna_sam.segformer import load_segformer

    seg = load_segformer(tiny_segformer_dir, device="cpu")
    assert seg.num_labels == 19 and seg.id2label[13] == "car"
    img = render_scene(make_street_scene(96, 160, seed=1), seed=1)
    ids = seg.predict_ids(img)
    assert ids.shape == (96, 160) and ids.max() < 19
    with pytest.raises(Exception, match="config.json"):
        load_segformer(tiny_segformer_dir.parent, device="cpu")


def test_is_connection_error_follows_the_cause_chain():
    """One rule for "the server is unreachable" (edge shipper and cloud service): builtin
    connection errors, the S3 and HTTP clients' by name, anywhere in the cause chain."""
    from sedna_sam.errors import SednaSamError, is_connection_error

    class EndpointConnectionError(Exception):  # botocore's name, not its class
        pass

    assert is_connection_error(ConnectionRefusedError())
    assert is_connection_error(TimeoutError())
    assert is_connection_error(EndpointConnectionError())
    try:
        try:
            raise EndpointConnectionError("http://minio:9000")
        except EndpointConnectionError as inner:
            raise RuntimeError("upload failed") from inner
    except RuntimeError as outer:
        assert is_connection_error(outer)
    assert not is_connection_error(ValueError("bad sample"))
    assert not is_connection_error(SednaSamError("label 'x' not in the config"))
    assert not is_connection_error(None)
