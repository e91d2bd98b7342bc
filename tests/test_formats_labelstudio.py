"""Label Studio tasks and exports: image references, both export formats, bad input."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from sedna_sam.errors import InputError
from sedna_sam.formats.labelstudio import regions_from_export, task_from_class_map
from sedna_sam.formats.ls_export import parse_export, read_export
from sedna_sam.formats.ls_images import image_ref_to_path, image_url, stem_of_ref
from sedna_sam.formats.trainids import (
    colorize,
    read_trainids,
    trainids_from_export,
    write_trainids,
)
from sedna_sam.labels import labeling_config_xml, load_labels


@pytest.fixture
def city():
    return load_labels("cityscapes")


def polygon(label, points, w=100, h=50, **extra):
    result = {
        "from_name": "label",
        "to_name": "image",
        "type": "polygonlabels",
        "value": {"points": points, "polygonlabels": [label]},
    }
    if w:
        result.update(original_width=w, original_height=h)
    result.update(extra)
    return result


def full_task(task_id, image, annotations):
    return {"id": task_id, "data": {"image": image}, "annotations": annotations}


def test_image_url_local_files_is_relative_and_url_encoded(tmp_path, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", str(tmp_path))
    image = tmp_path / "ds" / "raw_data" / "frame-01 b.ü.jpg"
    url = image_url(image)
    assert url == "/data/local-files/?d=ds/raw_data/frame-01%20b.%C3%BC.jpg"
    assert image_ref_to_path(url) == str(image)
    assert image_ref_to_path("http://ls:8080" + url) == str(image)
    with pytest.raises(InputError, match="outside the Label Studio document root"):
        image_url("/elsewhere/x.jpg")
    assert image_url(image, "http://host/raw") == "http://host/raw/frame-01%20b.%C3%BC.jpg"
    assert image_url(image, "s3://bucket/raw/") == "s3://bucket/raw/frame-01 b.ü.jpg"


@pytest.mark.parametrize(
    "ref, stem",
    [
        ("/data/upload/12/1a2b3c4d-street-01.v2.PNG", "street-01.v2"),
        ("/data/upload/3/notahash-frame.jpg", "notahash-frame"),  # not the pattern: kept whole
        ("/data/upload/3/1a2b3c4d-my%20photo.jpeg", "my photo"),
        ("/data/local-files/?d=data/raw_data/a%2Db%20c.tif", "a-b c"),
        ("s3://bucket/raw/x-y.bmp", "x-y"),
        ("https://host/img/%C3%BCber.JPG", "über"),
        ("/abs/path/frame.0001.jpg", "frame.0001"),
        ("frame.png", "frame"),
    ],
)
def test_image_refs_map_to_stems(ref, stem):
    assert stem_of_ref(ref) == stem


def test_local_files_ref_without_path_is_an_error():
    with pytest.raises(InputError, match="no \\?d="):
        image_ref_to_path("/data/local-files/?d=")


def test_task_from_class_map_structure_and_stats(city):
    class_map = np.full((50, 100), 255, dtype=np.uint16)
    class_map[:, :60] = 0
    class_map[10:20, 10:20] = 13
    stats = {}
    task = task_from_class_map(class_map, city, "/data/local-files/?d=a.jpg", stats=stats)
    results = task["predictions"][0]["result"]
    assert task["data"] == {"image": "/data/local-files/?d=a.jpg"}
    assert [r["value"]["polygonlabels"] for r in results] == [["road"], ["car"]]
    assert stats == {"regions": 2, "vertices": 8, "dropped": 0}
    assert {(r["original_width"], r["original_height"]) for r in results} == {(100, 50)}
    assert len({r["id"] for r in results}) == 2
    # vertices on pixel corners, in percent: the road rectangle spans x 0..60 px = 0..60 %
    pts = np.array(results[0]["value"]["points"])
    assert pts[:, 0].min() == 0 and pts[:, 0].max() == 60 and pts[:, 1].max() == 100
    annotated = task_from_class_map(class_map, city, "a.jpg", kind="annotations")
    assert "annotations" in annotated and "predictions" not in annotated


def test_task_from_class_map_rejects_ids_not_in_the_config(city):
    with pytest.raises(InputError, match=r"class ids \[40\]"):
        task_from_class_map(np.full((4, 4), 40, dtype=np.uint16), city, "a.jpg")


def test_full_export_uses_latest_non_cancelled_annotation():
    tasks = parse_export(
        [
            full_task(
                1,
                "a.jpg",
                [
                    {
                        "id": 1,
                        "updated_at": "2026-01-01T10:00:00Z",
                        "result": [polygon("road", [[0, 0], [50, 0], [0, 50]])],
                    },
                    {
                        "id": 2,
                        "updated_at": "2026-01-02T10:00:00Z",
                        "result": [polygon("car", [[0, 0], [50, 0], [0, 50]])],
                    },
                    {"id": 3, "updated_at": "2026-01-03T10:00:00Z", "was_cancelled": True, "result": []},
                ],
            ),
            full_task(2, "b.jpg", [{"id": 4, "was_cancelled": True, "result": []}]),
            full_task(3, "c.jpg", []),
        ]
    )
    assert [(t.task_id, t.annotated) for t in tasks] == [(1, True), (2, False), (3, False)]
    assert tasks[0].annotation_id == 2 and tasks[0].updated_at.startswith("2026-01-02")
    assert tasks[0].results[0]["value"]["polygonlabels"] == ["car"]
    assert tasks[0].export_format == "json" and tasks[0].size == (100, 50)


def test_json_min_made_by_label_studio_converter_is_read(tmp_path, city):
    # Build the JSON-MIN export with Label Studio's own converter from a full export.
    from label_studio_sdk.converter import Converter

    full = [
        full_task(
            7,
            "/data/upload/1/0badcafe-x-y.jpg",
            [
                {
                    "id": 10,
                    "created_at": "2026-01-01T00:00:00Z",
                    "updated_at": "2026-01-01T00:00:00Z",
                    "result": [polygon("road", [[0, 0], [100, 0], [100, 100], [0, 100]])],
                },
                {
                    "id": 11,
                    "created_at": "2026-01-05T00:00:00Z",
                    "updated_at": "2026-01-05T00:00:00Z",
                    "result": [
                        polygon("road", [[0, 0], [100, 0], [100, 100], [0, 100]]),
                        polygon("car", [[10, 10], [30, 10], [30, 30], [10, 30]]),
                    ],
                },
            ],
        ),
        full_task(8, "/data/upload/1/0badcafe-empty.jpg", []),
    ]
    (tmp_path / "full.json").write_text(json.dumps(full))
    Converter(labeling_config_xml(city), project_dir=None, download_resources=False).convert_to_json_min(
        str(tmp_path / "full.json"), str(tmp_path / "min"), is_dir=False
    )
    raw = json.loads((tmp_path / "min" / "result.json").read_text())
    assert "label" in raw[0] and "data" not in raw[0]  # really the JSON-MIN shape
    tasks = read_export(tmp_path / "min" / "result.json")
    assert [(t.task_id, t.annotated, t.export_format) for t in tasks] == [
        (7, True, "json-min"),
        (8, False, "json-min"),
    ]
    assert tasks[0].annotation_id == 11 and tasks[0].stem == "x-y"
    out = trainids_from_export(tasks[0], city)
    assert out.shape == (50, 100) and out.dtype == np.uint16
    assert (out == 13).sum() == 20 * 10 and (out == 0).sum() == 50 * 100 - 200


def test_malformed_and_wrong_shaped_exports_name_the_file(tmp_path):
    bad = tmp_path / "export.json"
    bad.write_text('[{"id": 1,')
    with pytest.raises(InputError, match="export.json: malformed JSON"):
        read_export(bad)
    bad.write_text('"just a string"')
    with pytest.raises(InputError, match="export.json: expected a list"):
        read_export(bad)
    with pytest.raises(InputError, match="not found"):
        read_export(tmp_path / "missing.json")
    # A task without an image fails alone (named), it does not refuse the export.
    (failed,) = parse_export([{"id": 3, "data": {}, "annotations": []}], "e.json")
    assert failed.task_id == 3 and "e.json: item 0: data.image is null" in failed.error


def test_unknown_label_names_label_and_task_or_is_skipped(city):
    (task,) = parse_export(
        [
            full_task(
                5,
                "a.jpg",
                [
                    {
                        "id": 1,
                        "result": [
                            polygon("unicorn", [[0, 0], [9, 0], [0, 9]]),
                            polygon("road", [[0, 0], [50, 0], [0, 50]]),
                        ],
                    }
                ],
            )
        ],
        "export.json",
    )
    with pytest.raises(InputError, match=r"task 5 \(a.jpg\): label 'unicorn' is not in the labels config"):
        regions_from_export(task, city, 100, 50)
    notes = {}
    regions = regions_from_export(task, city, 100, 50, ignore_unknown_labels=True, notes=notes)
    assert [r.class_id for r in regions] == [0] and notes == {"unknown labels skipped": 1}


def test_points_outside_the_image_are_clipped_with_a_warning(city, caplog):
    (task,) = parse_export(
        [
            full_task(
                5,
                "a.jpg",
                [{"id": 1, "result": [polygon("road", [[-10, -5], [110, 0], [100, 120], [0, 100]])]}],
            )
        ]
    )
    notes = {}
    with caplog.at_level(logging.WARNING):
        out = trainids_from_export(task, city, notes=notes)
    assert notes == {"points clipped": 3}
    assert "3 points outside 0..100% clipped" in caplog.text
    assert (out == 0).all()


def test_missing_original_size_needs_the_image_size(city):
    (task,) = parse_export(
        [
            full_task(
                1,
                "a.jpg",
                [{"id": 1, "result": [polygon("road", [[0, 0], [50, 0], [50, 50], [0, 50]], w=None)]}],
            )
        ]
    )
    assert task.size is None
    with pytest.raises(InputError, match="no original_width/height"):
        trainids_from_export(task, city)
    out = trainids_from_export(task, city, size=(40, 20))
    assert out.shape == (20, 40) and (out == 0).sum() == 20 * 10
    (task,) = parse_export(
        [full_task(1, "a.jpg", [{"id": 1, "result": [polygon("road", [[0, 0], [50, 0], [0, 50]])]}])]
    )
    with pytest.raises(InputError, match="annotation is for a 100x50 image, the image file is 40x20"):
        trainids_from_export(task, city, size=(40, 20))


def test_non_polygon_results_are_counted_not_painted(city):
    keypoint = {
        "type": "keypointlabels",
        "value": {"x": 5, "y": 5, "keypointlabels": ["car"]},
        "original_width": 100,
        "original_height": 50,
    }
    (task,) = parse_export([full_task(1, "a.jpg", [{"id": 1, "result": [keypoint]}])])
    notes = {}
    assert (trainids_from_export(task, city, notes=notes) == 255).all()
    assert notes == {"non-polygon results ignored": 1}


def test_trainids_png_is_16_bit_and_preview_uses_palette(tmp_path, city):
    train_ids = np.array([[0, 13], [255, 300]], dtype=np.uint16)
    write_trainids(tmp_path / "x_TrainIds.png", train_ids)
    assert np.array_equal(read_trainids(tmp_path / "x_TrainIds.png"), train_ids)
    rgb = colorize(train_ids, city)
    assert tuple(rgb[0, 0]) == (128, 64, 128) and tuple(rgb[1, 0]) == (0, 0, 0)


def test_latest_annotation_is_one_rule_for_exports_and_the_cloud_service():
    """Cancelled and skipped annotations never count, wherever the task came from (an
    export, `ls pull`, the cloud service's polling)."""
    from sedna_sam.formats.ls_export import latest_annotation

    annotations = [
        {"id": 1, "updated_at": "2026-01-01T10:00:00Z", "result": []},
        {"id": 2, "updated_at": "2026-01-03T10:00:00Z", "was_cancelled": True},
        {"id": 3, "updated_at": "2026-01-04T10:00:00Z", "skipped": True},
        {"id": 4, "created_at": "2026-01-02T10:00:00Z", "result": []},  # no updated_at
        "not an annotation",
    ]
    assert latest_annotation(annotations)["id"] == 4
    assert latest_annotation(annotations[1:3]) is None
    assert latest_annotation(None) is None and latest_annotation({"id": 1}) is None
