"""Edge-worker fixtures: synthetic frames, a sample factory, a real local S3 server."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import pytest

from sedna_sam.images import write_png
from sedna_sam.labels import cityscapes
from sedna_sam.synthetic import add_unknown_objects, make_street_scene, render_scene


def write_frames(
    directory: Path, n: int, size=(64, 128), unknown_from: int | None = None, seed0: int = 0
) -> list[Path]:
    """``n`` rendered street scenes as PNGs; frames from index ``unknown_from`` on carry
    unknown objects."""
    directory.mkdir(parents=True, exist_ok=True)
    labels = cityscapes()
    out = []
    for i in range(n):
        image = render_scene(make_street_scene(*size, seed=seed0 + i), labels, seed=seed0 + i)
        if unknown_from is not None and i >= unknown_from:
            image = add_unknown_objects(image, seed=i, count=2)
        out.append(write_png(directory / f"frame_{seed0 + i:03d}.png", image))
    return out


def add_sample(buffer, name: str, score: float, nbytes: int = 1000, node: str = "node-a") -> bool:
    """Put one sample with random image bytes into ``buffer``."""
    from sedna_sam.edge.buffer import make_sample_id, sample_metadata

    data = os.urandom(nbytes)
    sid = make_sample_id(name, data)
    meta = sample_metadata(
        sid,
        f"{sid}.png",
        data,
        score=score,
        scorer="msp",
        threshold=0.1,
        model_version="v1",
        node=node,
        frame_time=time.time(),
    )
    return buffer.add(".png", data, meta)


@pytest.fixture
def edge_frames():
    return write_frames


@pytest.fixture
def edge_sample():
    return add_sample


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalS3:
    """moto's S3 server on a loopback port, reached over HTTP like a MinIO."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="test-key",
            aws_secret_access_key="test-secret",
            region_name="us-east-1",
        ).create_bucket(Bucket=name)


@pytest.fixture
def local_s3(monkeypatch):
    """A running local S3 server with bucket ``edge-store``; env set as Sedna sets it."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = LocalS3()
    server.start()
    monkeypatch.setenv("S3_ENDPOINT_URL", server.endpoint)
    monkeypatch.setenv("ACCESS_KEY_ID", "test-key")
    monkeypatch.setenv("SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server.create_bucket("edge-store")
    yield server
    server.stop()
