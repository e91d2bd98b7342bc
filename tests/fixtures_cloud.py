"""The cloud annotation service for HTTP tests: a config over a temporary store and
dataset (SQLite queue, no Label Studio), and the real server on a free loopback port."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from sedna_sam.cloud.config import ServiceConfig
from sedna_sam.cloud.server import serve
from sedna_sam.cloud.service import AnnotationService


def local_service_config(tmp_path: Path, labels, secret: str = "", **overrides) -> ServiceConfig:
    """A config over ``tmp_path``/store (created) and ``tmp_path``/dataset; polling off."""
    (tmp_path / "store").mkdir(exist_ok=True)
    values = dict(
        store=str(tmp_path / "store"),
        dataset_dir=tmp_path / "dataset",
        index_path=tmp_path / "dataset" / "index.txt",
        queue_url=f"sqlite:///{tmp_path}/queue.sqlite",
        labels=labels,
        webhook_secret=secret,
        poll_interval_s=3600,
    )
    values.update(overrides)
    return ServiceConfig(**values)


@contextlib.contextmanager
def serving(service: AnnotationService, interval_s: float = 0.05) -> Iterator[int]:
    """Run ``serve`` in a thread on a free loopback port; yields the port, stops on exit."""
    stop, ready, box = threading.Event(), threading.Event(), {}

    def on_ready(server):
        box["port"] = server.server_address[1]
        ready.set()

    thread = threading.Thread(
        target=serve,
        args=(service, "127.0.0.1", 0),
        kwargs={"interval_s": interval_s, "stop": stop, "ready": on_ready},
    )
    thread.start()
    assert ready.wait(10)
    try:
        yield box["port"]
    finally:
        stop.set()
        service.wake.set()
        thread.join(10)
