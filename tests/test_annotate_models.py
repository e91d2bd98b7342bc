"""SAM checkpoints: real files through the one loader, dims inferred, download with resume."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from sedna_sam.errors import InputError, SednaSamError
from sedna_sam.models import (
    CHECKPOINTS,
    Checkpoint,
    SamSpec,
    build_tiny_sam,
    download_checkpoint,
    load_sam,
    sam_model_type,
    spec_from_state_dict,
)


def test_tiny_checkpoint_loads_through_the_same_loader(tiny_sam_ckpt):
    import torch

    assert sam_model_type(tiny_sam_ckpt) == "tiny"
    sam = load_sam(tiny_sam_ckpt, device="cpu")
    saved = torch.load(tiny_sam_ckpt, map_location="cpu", weights_only=True)
    for name, tensor in sam.state_dict().items():
        assert torch.equal(tensor, saved[name]), name  # the weights in the file, not fresh ones
    assert not sam.training


@pytest.mark.parametrize("name", ["vit_h", "vit_l", "vit_b"])
def test_official_dims_are_inferred_from_state_dict_shapes(name):
    import torch
    from segment_anything import sam_model_registry

    with torch.device("meta"):  # shapes only: no 2.5 GB of vit_h weights
        state = sam_model_registry[name]().state_dict()
    assert spec_from_state_dict(state) == CHECKPOINTS[name].spec


def test_custom_dims_round_trip(tmp_path):
    spec = SamSpec(48, 3, 3, (0, 2))
    path = build_tiny_sam(tmp_path / "custom.pth", spec)
    sam = load_sam(path, device="cpu")
    assert sam.image_encoder.patch_embed.proj.out_channels == 48
    assert len(sam.image_encoder.blocks) == 3
    assert [b.window_size for b in sam.image_encoder.blocks] == [0, 14, 0]  # 0 = global attention


def test_model_type_mismatch_missing_and_corrupt_files(tiny_sam_ckpt, tmp_path):
    with pytest.raises(InputError, match="vit_b was given, but the checkpoint is tiny"):
        load_sam(tiny_sam_ckpt, model_type="vit_b", device="cpu")
    with pytest.raises(InputError, match="not found.*sedna-sam models download"):
        load_sam(tmp_path / "sam_vit_b_01ec64.pth", device="cpu")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(Path(tiny_sam_ckpt).read_bytes()[:100_000])
    with pytest.raises(InputError, match="truncated.pth: cannot read SAM checkpoint"):
        load_sam(truncated, device="cpu")
    import torch

    not_sam = tmp_path / "not_sam.pth"
    torch.save({"weight": torch.zeros(3)}, not_sam)
    with pytest.raises(InputError, match="not a SAM checkpoint"):
        load_sam(not_sam, device="cpu")


# --- download -----------------------------------------------------------------------------


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves one payload with HTTP Range support; records the Range headers it saw."""

    payload = b""
    ranges: list[str | None] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = self.payload[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def file_server():
    payload = np.random.default_rng(0).bytes(300_000)
    RangeHandler.payload, RangeHandler.ranges = payload, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/sam_test.pth", payload
    server.shutdown()


def test_download_resumes_a_partial_file_and_verifies_sha256(file_server, tmp_path):
    url, payload = file_server
    ckpt = Checkpoint(
        "test", "sam_test.pth", len(payload), hashlib.sha256(payload).hexdigest(), CHECKPOINTS["vit_b"].spec
    )
    (tmp_path / "sam_test.pth.part").write_bytes(payload[:120_000])  # an interrupted download
    path = download_checkpoint("test", tmp_path, url=url, ckpt=ckpt, progress=False)
    assert path.read_bytes() == payload
    assert RangeHandler.ranges == ["bytes=120000-"]
    assert not (tmp_path / "sam_test.pth.part").exists()
    # a second call finds the verified file and downloads nothing
    download_checkpoint("test", tmp_path, url=url, ckpt=ckpt, progress=False)
    assert RangeHandler.ranges == ["bytes=120000-"]


def test_download_with_wrong_checksum_is_rejected(file_server, tmp_path):
    url, payload = file_server
    ckpt = Checkpoint("test", "sam_test.pth", len(payload), "0" * 64, CHECKPOINTS["vit_b"].spec)
    with pytest.raises(SednaSamError, match="sha256 .* does not match"):
        download_checkpoint("test", tmp_path, url=url, ckpt=ckpt, progress=False)
    assert not (tmp_path / "sam_test.pth").exists()
    assert not (tmp_path / "sam_test.pth.part").exists()  # complete but wrong: not resumable


def test_download_offline_says_which_file_to_put_where(tmp_path):
    with pytest.raises(SednaSamError) as err:
        download_checkpoint(
            "vit_b", tmp_path, url="http://127.0.0.1:9/sam_vit_b_01ec64.pth", progress=False, timeout=2
        )
    message = str(err.value)
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in message
    assert str(tmp_path / "sam_vit_b_01ec64.pth") in message
    assert "375,042,383 bytes" in message


def test_models_cli_list_and_unknown_name(tmp_path, capsys):
    from sedna_sam.cli import main

    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(b"short")
    assert main(["models", "list", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "vit_h" in out and "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e" in out
    assert "BAD:" in out and "5 bytes, expected 375,042,383" in out
    assert main(["models", "download", "vit_xx", "--dir", str(tmp_path)]) == 2
