"""The Sedna txt index: atomic, idempotent appends that survive kills and races."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sedna_sam.errors import InputError
from sedna_sam.images import write_png
from sedna_sam.lifelong import data

APPENDER = """
import sys
from sedna_sam.lifelong.data import append_index_line
index, start, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(start, stop):
    append_index_line(index, f"raw_data/img{i:05d}.png", f"train_ids/img{i:05d}_TrainIds.png")
"""


def _check_whole_lines(index: Path) -> list[str]:
    text = index.read_text()
    assert text == "" or text.endswith("\n"), "index ends in a partial line"
    lines = text.splitlines()
    for line in lines:
        image, label = line.split(" ")
        assert image.startswith("raw_data/img") and image.endswith(".png"), line
        assert label == image.replace("raw_data/", "train_ids/").replace(".png", "_TrainIds.png"), line
    assert len(lines) == len(set(lines)), "duplicate lines"
    return lines


def test_append_is_idempotent_and_relative_inside_the_index_dir(tmp_path, monkeypatch):
    index = tmp_path / "ds" / "index.txt"
    img, lab = tmp_path / "ds" / "raw_data" / "a.png", tmp_path / "ds" / "train_ids" / "a_TrainIds.png"
    outside = tmp_path / "elsewhere" / "b.png"
    added = data.append_index_lines(index, [(img, lab), (outside, lab), (img, lab)])
    assert [s.image for s in added] == [img, outside]  # the repeat inside one call is dropped
    assert (
        index.read_text() == f"raw_data/a.png train_ids/a_TrainIds.png\n{outside} train_ids/a_TrainIds.png\n"
    )
    before = index.stat().st_mtime_ns
    # the same pair written another way (relative to the cwd, absolute) is still the same sample
    monkeypatch.chdir(tmp_path)
    assert not data.append_index_line(index, "ds/raw_data/a.png", lab)
    assert not data.append_index_line(index, outside, "ds/train_ids/a_TrainIds.png")
    assert index.stat().st_mtime_ns == before, "a no-op append rewrote the file"
    assert [s.line_no for s in data.read_index(index)] == [1, 2]
    assert data.count_samples(index) == 2


def test_append_keeps_foreign_lines_and_adds_a_missing_newline(tmp_path):
    index = tmp_path / "index.txt"
    index.write_text(
        "x.png  y.png\n\n/abs/z.png /abs/z_l.png"
    )  # hand-written: extra blanks, no final newline
    assert data.append_index_line(index, tmp_path / "n.png", tmp_path / "n_l.png")
    assert index.read_text() == "x.png  y.png\n\n/abs/z.png /abs/z_l.png\nn.png n_l.png\n"
    assert not data.append_index_line(index, "/abs/z.png", "/abs/z_l.png")
    assert [s.image.name for s in data.read_index(index)] == ["x.png", "z.png", "n.png"]


def test_paths_with_spaces_round_trip_as_one_token(tmp_path):
    index = tmp_path / "index.txt"
    img, lab = tmp_path / "my images" / "a b%.png", tmp_path / "lab els" / "a b.png"
    for p in (img, lab):
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"x")
    data.append_index_line(index, img, lab)
    (line,) = index.read_text().splitlines()
    assert len(line.split()) == 2  # what Sedna's own parser sees
    (sample,) = data.read_index(index)
    assert (sample.image, sample.label) == (img, lab)
    assert not data.append_index_line(index, img, lab)


def test_bad_index_lines_name_the_file_and_line(tmp_path):
    index = tmp_path / "index.txt"
    index.write_text("a.png a_l.png\na b c\n")
    with pytest.raises(InputError, match=r"index.txt:2: expected"):
        data.read_index(index)
    with pytest.raises(InputError, match="not found"):
        data.read_index(tmp_path / "missing.txt")
    assert data.read_index(tmp_path / "missing.txt", missing_ok=True) == []


def test_relative_paths_resolve_against_the_original_dataset_dir(tmp_path):
    """Sedna's split indexes live in the job output dir; their paths stay relative to the Dataset index."""
    (tmp_path / "dataset" / "raw").mkdir(parents=True)
    (tmp_path / "dataset" / "raw" / "a.png").write_bytes(b"x")
    split = tmp_path / "output" / "train.txt"
    split.parent.mkdir()
    split.write_text("raw/a.png raw/a_l.png\n")
    root = data.sedna_data_root(str(tmp_path / "dataset" / "index.txt"))
    (sample,) = data.read_index(split, data_root=root)
    assert sample.image == tmp_path / "dataset" / "raw" / "a.png"
    (sample,) = data.read_index(split)
    assert sample.image == tmp_path / "output" / "raw" / "a.png"


def test_split_is_stable_as_the_index_grows(tmp_path):
    samples = [data.LabelledSample(tmp_path / "raw" / f"{i}.png", None) for i in range(400)]
    train, valid = data.split_samples(samples[:200], 0.8)
    train2, valid2 = data.split_samples(samples, 0.8)
    assert set(train) <= set(train2) and set(valid) <= set(valid2)
    assert 0.7 < len(train2) / 400 < 0.9
    # the mount prefix does not move samples across the split
    moved = [data.LabelledSample(Path("/home/data/x/raw") / s.image.name, None) for s in samples[:200]]
    assert [s.image.name for s in data.split_samples(moved, 0.8)[0]] == [s.image.name for s in train]


def test_load_sample_checks_sizes_and_unknown_ids(tmp_path, caplog):
    img, lab = tmp_path / "a.png", tmp_path / "a_l.png"
    write_png(img, np.zeros((4, 6, 3), np.uint8))
    write_png(lab, np.array([[0, 1, 18, 19, 255, 300]] * 4, np.uint16))
    image, label = data.load_sample(data.LabelledSample(img, lab), num_classes=19)
    assert image.shape == (4, 6, 3)
    assert label[0].tolist() == [0, 1, 18, 255, 255, 255]
    assert "treated as ignore" in caplog.text
    write_png(lab, np.zeros((5, 6), np.uint16))
    with pytest.raises(InputError, match="a_l.png: label size 6x5 differs from image .*a.png size 6x4"):
        data.load_sample(data.LabelledSample(img, lab))


def test_concurrent_appenders_never_duplicate(tmp_path):
    index = tmp_path / "index.txt"
    procs = [
        subprocess.Popen([sys.executable, "-c", APPENDER, str(index), "0", "60"], cwd=tmp_path)
        for _ in range(3)
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert len(_check_whole_lines(index)) == 60


def test_killed_appender_leaves_whole_lines_and_a_rerun_completes(tmp_path):
    index = tmp_path / "index.txt"
    for extra_wait in (0.0, 0.05, 0.2):
        seen = len(index.read_text().splitlines()) if index.exists() else 0
        proc = subprocess.Popen([sys.executable, "-c", APPENDER, str(index), "0", "100000"], cwd=tmp_path)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill only once it is appending
            if index.exists() and len(index.read_text().splitlines()) > seen:
                break
            time.sleep(0.01)
        time.sleep(extra_wait)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _check_whole_lines(index)
    n = len(_check_whole_lines(index))
    assert n > 0, "the appender never got to write (machine too slow?)"
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # a kill between mkstemp and rename may leave a temp file; it is never the index
    assert all(p.name.startswith(".index.txt.") for p in leftovers)
    # a rerun over the same range only adds what is missing
    subprocess.run(
        [sys.executable, "-c", APPENDER, str(index), "0", str(n + 20)], check=True, timeout=120, cwd=tmp_path
    )
    assert len(_check_whole_lines(index)) == n + 20
