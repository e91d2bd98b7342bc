"""The Sedna txt dataset index: one sample a line, ``<image path> <label path>``.

Sedna's local controller counts the lines of a Dataset's index file and starts training
when the count passes the LifelongLearningJob's trigger threshold, so appending a line
is how a labelled sample enters the loop. Sedna's own parser splits each line on
whitespace and resolves relative paths against the index's directory; we read and write
the same way.

Appends are atomic and idempotent: under an exclusive lock on ``<index>.lock`` the whole
file is rewritten to a temporary file and renamed into place, so a reader (the local
controller) or a killed writer sees either the old index or the new one, never half a
line, and a pair already present (same resolved image and label) is never added twice.

Paths with whitespace cannot survive Sedna's split; we write their whitespace (and any
``%``) percent-encoded and decode on read when the literal path does not exist.

This module stays free of torch: the cloud annotation service imports it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from sedna_sam.errors import InputError
from sedna_sam.storage import atomic_write_text

log = logging.getLogger(__name__)

_WHITESPACE = re.compile(r"\s")


@dataclass(frozen=True)
class LabelledSample:
    """One index line, paths resolved: ``label`` is None for an unlabelled (test) line."""

    image: Path
    label: Path | None
    line_no: int = 0  # 1-based line in the index it came from (0: not from an index)


# ----------------------------------------------------------------------------- paths in lines


def encode_path(path: str) -> str:
    """A path as one whitespace-free token (``%`` and whitespace percent-encoded only
    when the path has whitespace, so ordinary paths are written verbatim)."""
    if not _WHITESPACE.search(path):
        return path
    path = path.replace("%", "%25")
    return _WHITESPACE.sub(lambda m: f"%{ord(m.group(0)):02X}", path)


def _resolve_token(token: str, bases: Sequence[Path]) -> Path:
    """The file a token names: the first of (each base) x (literal, percent-decoded)
    that exists, else the literal token against the first base."""
    variants = [Path(token)] + ([Path(unquote(token))] if "%" in token else [])
    for base in bases:
        for path in variants:
            candidate = path if path.is_absolute() else base / path
            if candidate.exists():
                return candidate
    return variants[0] if variants[0].is_absolute() else bases[0] / variants[0]


def _line_token(path: Path, base: Path) -> str:
    """The token written for ``path``: relative to the index directory when inside it
    (the index and its files can then move together), absolute otherwise."""
    path = Path(os.path.abspath(path))
    try:
        rel = path.relative_to(base)
    except ValueError:
        return encode_path(str(path))
    return encode_path(rel.as_posix())


def parse_index_text(text: str, base: Path | Sequence[Path], source: str = "<index>") -> list[LabelledSample]:
    """Samples of an index's text; relative paths resolved against ``base`` (or the first
    of several bases where the file exists).

    Blank lines are skipped (Sedna skips them too); a line with more than two tokens is
    an error naming the index and line, since Sedna would silently drop the extra.
    """
    bases = [Path(base)] if isinstance(base, (str, Path)) else [Path(b) for b in base]
    samples = []
    for no, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) > 2:
            raise InputError(
                f"{source}:{no}: expected '<image path> <label path>', got {len(tokens)} fields "
                "(paths with spaces must be percent-encoded)"
            )
        image = _resolve_token(tokens[0], bases)
        label = _resolve_token(tokens[1], bases) if len(tokens) == 2 else None
        samples.append(LabelledSample(image, label, no))
    return samples


def index_base(index_path: str | Path) -> Path:
    """Directory relative index paths are resolved against (the index's own directory)."""
    return Path(os.path.abspath(index_path)).parent


def read_index(
    index_path: str | Path, missing_ok: bool = False, data_root: str | Path | None = None
) -> list[LabelledSample]:
    """All samples of a txt index, in file order. ``missing_ok``: a missing index is empty.

    Relative paths resolve against ``data_root`` when given and the file is there, else
    against the index's directory. Sedna's split indexes (TRAIN_DATASET_URL,
    TEST_DATASET_URL) live under the job's output directory while their relative paths
    stay relative to the original Dataset index, so the workers pass that one's
    directory as ``data_root`` (:func:`sedna_data_root`).
    """
    path = Path(index_path)
    if not path.is_file():
        if missing_ok:
            return []
        raise InputError(f"{path}: dataset index not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: dataset index is not UTF-8 text ({exc})") from None
    bases = ([Path(data_root)] if data_root else []) + [index_base(path)]
    return parse_index_text(text, bases, source=str(path))


def sedna_data_root(original_dataset_url: str | None) -> Path | None:
    """Directory relative sample paths are resolved against in a Sedna worker: that of
    ORIGINAL_DATASET_URL (the Dataset CR's index), as in Sedna's own examples."""
    return index_base(original_dataset_url) if original_dataset_url else None


def count_samples(index_path: str | Path) -> int:
    """Number of sample lines, what Sedna's ``num_of_samples`` trigger compares."""
    return len(read_index(index_path, missing_ok=True))


# ----------------------------------------------------------------------------- appending


@contextlib.contextmanager
def index_lock(index_path: str | Path) -> Iterator[None]:
    """Exclusive advisory lock for writers of one index (``<index>.lock`` beside it).

    Readers need no lock: writers only ever rename a complete file into place.
    """
    index_path = Path(os.path.abspath(index_path))
    index_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = index_path.with_name(index_path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _key(sample: LabelledSample) -> tuple[str, str]:
    return (os.path.abspath(sample.image), os.path.abspath(sample.label) if sample.label else "")


def append_index_lines(
    index_path: str | Path, pairs: Iterable[tuple[str | Path, str | Path | None]]
) -> list[LabelledSample]:
    """Append ``(image, label)`` pairs to a txt index, atomically and idempotently.

    Pairs already in the index (compared by resolved absolute paths, however they were
    written) and repeats within ``pairs`` are skipped. Existing lines are kept byte for
    byte; a missing final newline is added. Creates the index (and its directory) when
    missing. Returns the samples actually added (empty: nothing changed, file untouched).
    """
    index_path = Path(os.path.abspath(index_path))
    base = index_path.parent
    with index_lock(index_path):
        old_text = index_path.read_text(encoding="utf-8") if index_path.is_file() else ""
        present = {_key(s) for s in parse_index_text(old_text, base, source=str(index_path))}
        added: list[LabelledSample] = []
        new_lines: list[str] = []
        for image, label in pairs:
            sample = LabelledSample(
                Path(os.path.abspath(image)), Path(os.path.abspath(label)) if label else None
            )
            key = _key(sample)
            if key in present:
                continue
            present.add(key)
            tokens = [_line_token(sample.image, base)]
            if sample.label is not None:
                tokens.append(_line_token(sample.label, base))
            new_lines.append(" ".join(tokens))
            added.append(sample)
        if not new_lines:
            return []
        if old_text and not old_text.endswith("\n"):
            old_text += "\n"
        atomic_write_text(index_path, old_text + "\n".join(new_lines) + "\n")
    log.info("%s: %d line(s) added", index_path, len(added))
    return added


def append_index_line(index_path: str | Path, image: str | Path, label: str | Path) -> bool:
    """Append one ``<image> <label>`` line; False when it was already there."""
    return bool(append_index_lines(index_path, [(image, label)]))


def write_index(index_path: str | Path, samples: Iterable[LabelledSample | tuple[Path, Path | None]]) -> Path:
    """Write a whole index (replacing any old one) atomically, e.g. a train/test split."""
    index_path = Path(os.path.abspath(index_path))
    base = index_path.parent
    lines = []
    for s in samples:
        image, label = (s.image, s.label) if isinstance(s, LabelledSample) else s
        tokens = [_line_token(Path(image), base)] + ([_line_token(Path(label), base)] if label else [])
        lines.append(" ".join(tokens))
    with index_lock(index_path):
        atomic_write_text(index_path, "".join(line + "\n" for line in lines))
    return index_path


# ----------------------------------------------------------------------------- splitting


def split_samples(
    samples: Sequence[LabelledSample], train_prob: float, seed: int = 0
) -> tuple[list[LabelledSample], list[LabelledSample]]:
    """Split into (train, valid) like a LifelongLearningJob's ``trainProb``.

    Each sample's side comes from a hash of the last two parts of its image path (and
    ``seed``), not from its position or the mount prefix, so a sample stays on the same
    side as the index grows between rounds and wherever the dataset is mounted: no
    evaluation sample leaks into a later round's training set.
    """
    if not 0.0 <= train_prob <= 1.0:
        raise ValueError(f"trainProb must be in [0, 1], got {train_prob}")
    train, valid = [], []
    for s in samples:
        tail = "/".join(Path(s.image).parts[-2:])
        digest = hashlib.sha1(f"{seed}:{tail}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2.0**64
        (train if u < train_prob else valid).append(s)
    return train, valid


# ----------------------------------------------------------------------------- loading


def load_sample(sample: LabelledSample, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8 RGB, label (H, W) int64 train ids, 255 = ignore).

    Ids >= ``num_classes`` (other than 255) become 255 with a warning: a label set
    mismatch should not crash a training round, but must be visible in the log.
    Raises :class:`InputError` naming the files when they are unreadable or differ in size.
    """
    from sedna_sam.images import read_image_rgb, read_label_png
    from sedna_sam.labels import IGNORE_ID

    image = read_image_rgb(sample.image)
    if sample.label is None:
        raise InputError(f"{sample.image}: index line {sample.line_no} has no label path")
    if not sample.label.is_file():
        raise InputError(f"{sample.label}: label file not found (index line {sample.line_no})")
    label = read_label_png(sample.label).astype(np.int64)
    if label.shape != image.shape[:2]:
        raise InputError(
            f"{sample.label}: label size {label.shape[1]}x{label.shape[0]} differs from image "
            f"{sample.image} size {image.shape[1]}x{image.shape[0]}"
        )
    if num_classes is not None:
        bad = (label >= num_classes) & (label != IGNORE_ID)
        if bad.any():
            log.warning(
                "%s: %d pixel(s) with ids >= %d (ids %s) treated as ignore",
                sample.label,
                int(bad.sum()),
                num_classes,
                sorted(int(v) for v in np.unique(label[bad]))[:10],
            )
            label[bad] = IGNORE_ID
    return image, label
