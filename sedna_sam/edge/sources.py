"""Where frames come from: a directory (optionally watched), a list of files, a video
file, or a camera / RTSP / HTTP stream through OpenCV.

:func:`open_source` picks the kind from the spec and returns an iterator of
:class:`Frame`. An unreadable image is logged and skipped (the batch goes on; the
worker counts it as failed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sedna_sam.errors import InputError, SednaSamError
from sedna_sam.images import encode_png, read_image_rgb
from sedna_sam.storage import image_stem, is_image_file, list_images

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg"})
STREAM_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://")


@dataclass
class Frame:
    """One frame: ``image`` (H, W, 3) uint8 RGB, a ``name`` for output files, capture
    ``time`` (epoch seconds), the source file if any, and the frame's bytes as kept in a
    sample (the original file's bytes for image files, a PNG for decoded video)."""

    image: np.ndarray
    name: str
    time: float
    path: Path | None = None
    data: bytes | None = None
    ext: str = ".png"

    def encoded(self) -> tuple[bytes, str]:
        """(bytes, extension) to store this frame as a sample, losslessly."""
        if self.data is None:
            self.data, self.ext = encode_png(self.image), ".png"
        return self.data, self.ext


@dataclass
class Failure:
    """A source item that could not be read (yielded instead of a Frame)."""

    item: str
    message: str


def _image_frame(path: Path) -> Frame | Failure:
    try:
        image = read_image_rgb(path)
        data = path.read_bytes()
    except (InputError, OSError) as exc:
        return Failure(str(path), str(exc))
    return Frame(image, image_stem(path), path.stat().st_mtime, path, data, path.suffix.lower())


def files_source(paths: list[Path]) -> Iterator[Frame | Failure]:
    for path in paths:
        yield _image_frame(path)


def directory_source(
    directory: Path,
    watch: bool = False,
    poll_s: float = 1.0,
    skip: Callable[[Path], bool] | None = None,
    stop: threading.Event | None = None,
) -> Iterator[Frame | Failure]:
    """Images in ``directory`` in name order; with ``watch``, keep polling for new ones
    until ``stop`` is set. ``skip(path)`` says a file was already processed (rerun).
    A file is taken once its size stops changing between two polls (copy finished)."""
    stop = stop or threading.Event()
    seen: set[str] = set()
    sizes: dict[str, int] = {}
    while True:
        ready = []
        for path in list_images(directory):
            if path.name in seen:
                continue
            size = path.stat().st_size
            if watch and sizes.get(path.name) != size:
                sizes[path.name] = size  # still being written? look again next poll
                continue
            ready.append(path)
        for path in ready:
            seen.add(path.name)
            if skip is not None and skip(path):
                log.debug("%s: already processed; skipped", path)
                continue
            yield _image_frame(path)
            if stop.is_set():
                return
        if not watch or stop.wait(poll_s):
            return


def capture_source(
    spec: str | int, name: str, every: int = 1, stop: threading.Event | None = None, live: bool = False
) -> Iterator[Frame | Failure]:
    """Frames from a video file or a camera/stream through OpenCV (every ``every``-th)."""
    import cv2

    stop = stop or threading.Event()
    cap = cv2.VideoCapture(spec)
    if not cap.isOpened():
        raise SednaSamError(f"{spec}: OpenCV cannot open this video/camera/stream")
    start = time.time()
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    index = 0
    failures = 0
    try:
        while not stop.is_set():
            ok, bgr = cap.read()
            if not ok:
                if live and failures < 5:  # a stream hiccup: try a few more reads
                    failures += 1
                    time.sleep(0.5)
                    continue
                break
            failures = 0
            if index % every == 0:
                t = time.time() if live or fps <= 0 else start + index / fps
                yield Frame(np.ascontiguousarray(bgr[:, :, ::-1]), f"{name}_f{index:06d}", t)
            index += 1
    finally:
        cap.release()


def check_source(spec: str) -> None:
    """Fail early (before loading a model) when ``spec`` cannot be a frame source."""
    if spec.isdigit() or spec.startswith(STREAM_SCHEMES):
        return
    if not Path(spec).expanduser().exists():
        raise SednaSamError(f"{spec}: no such file, directory, camera index or stream URL")


def open_source(
    spec: str,
    watch: bool = False,
    poll_s: float = 1.0,
    every: int = 1,
    skip: Callable[[Path], bool] | None = None,
    stop: threading.Event | None = None,
) -> Iterator[Frame | Failure]:
    """Frames from ``spec``:

    - a directory: its images (``watch`` keeps polling for new ones);
    - an image file, or a ``.txt`` file listing image paths (one a line): those images;
    - a video file: its frames (``every``-th);
    - a camera index (``0``) or an ``rtsp://``/``http(s)://`` URL: a live stream.
    """
    if spec.isdigit():
        return capture_source(int(spec), f"cam{spec}", every, stop, live=True)
    if spec.startswith(STREAM_SCHEMES):
        return capture_source(spec, "stream", every, stop, live=True)
    path = Path(spec).expanduser()
    if path.is_dir():
        return directory_source(path, watch, poll_s, skip, stop)
    if not path.exists():
        raise SednaSamError(f"{spec}: no such file, directory, camera index or stream URL")
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        return capture_source(str(path), image_stem(path), every, stop)
    if path.suffix.lower() == ".txt":
        base = path.parent
        items = [line.strip() for line in path.read_text("utf-8").splitlines()]
        paths = [
            (base / p) if not Path(p).is_absolute() else Path(p) for p in items if p and not p.startswith("#")
        ]
        return files_source(paths)
    if is_image_file(path):
        return files_source([path])
    raise SednaSamError(
        f"{spec}: not an image, image list (.txt), video ({', '.join(sorted(VIDEO_EXTENSIONS))}) or directory"
    )
