"""Directories on a node that non-root pods must write to, made writable once by root.

Sedna's local controller runs as root and creates ``<outputDir>/{data/train,data/eval,
train,eval}`` with mode 0755; kubelet creates ``DirectoryOrCreate`` hostPath volumes as
root 0755 too. Our workers run as uid 10001, and each round's worker creates its own
``<outputDir>/train/<round>`` (or ``eval/<round>``) directory inside those. So every
pod template that writes to the host starts with an init container running
``sedna-sam init-dirs --owner 10001:10001 DIR...`` as root: it creates what is missing
and hands each named directory (not its contents) to the worker's user. Nothing else
runs as root, and nothing is changed recursively.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sedna_sam.errors import SednaSamError


@dataclass(frozen=True)
class DirAction:
    path: Path
    action: str  # "created", "chowned", "ok", "skipped (...)"


def parse_owner(text: str) -> tuple[int, int]:
    """``UID:GID`` or ``UID`` (gid = uid), numeric: pods name users by number."""
    uid, _, gid = text.partition(":")
    try:
        return int(uid), int(gid or uid)
    except ValueError:
        raise SednaSamError(f"--owner {text!r}: expected numeric UID:GID such as 10001:10001") from None


def prepare_dirs(paths: list[str], uid: int, gid: int, mode: int = 0o755) -> list[DirAction]:
    """Make each directory exist and belong to ``uid:gid`` (created parents too, with the
    same owner, so a worker can create siblings); returns what was done per directory.
    URLs (``s3://...``: an outputDir in object storage) are skipped: nothing to prepare."""
    actions: list[DirAction] = []
    am_root = os.geteuid() == 0
    for given in paths:
        if "://" in str(given):
            actions.append(DirAction(Path(str(given)), "skipped (not a host path)"))
            continue
        path = Path(os.path.abspath(given))
        missing = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir(mode=mode)
            except PermissionError:
                raise SednaSamError(
                    f"{d}: cannot create it as uid {os.geteuid()}; run this as root (our manifests run it as an "
                    f"init container) or create it once on the node: sudo install -d -o {uid} -g {gid} {path}"
                ) from None
            os.chmod(d, mode)
            _chown(d, uid, gid, am_root)
            actions.append(DirAction(d, "created"))
        if not path.is_dir():
            raise SednaSamError(f"{path}: exists and is not a directory")
        if path in missing:
            continue
        st = path.stat()
        if (st.st_uid, st.st_gid) == (uid, gid):
            actions.append(DirAction(path, "ok"))
            continue
        _chown(path, uid, gid, am_root)
        actions.append(DirAction(path, "chowned"))
    return actions


def _chown(path: Path, uid: int, gid: int, am_root: bool) -> None:
    try:
        os.chown(path, uid, gid)
    except PermissionError:
        if am_root:
            raise
        raise SednaSamError(
            f"{path}: owned by uid {path.stat().st_uid}, and only root can give it to {uid}:{gid}; run this as "
            f"root (an init container) or once on the node: sudo chown {uid}:{gid} {path}"
        ) from None
