"""``sedna-sam models list|download``: the official SAM checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from sedna_sam.errors import SednaSamError


def _models_list(args: argparse.Namespace) -> int:
    from sedna_sam.models import CHECKPOINTS, verify_checkpoint

    directory = Path(args.dir) if args.dir else None
    print(f"{'name':6} {'file':22} {'bytes':>14}  {'sha256':64}" + ("  status" if directory else ""))
    for c in CHECKPOINTS.values():
        line = f"{c.name:6} {c.filename:22} {c.size:>14,}  {c.sha256 or '(unknown: size check only)':64}"
        if directory is not None:
            path = directory / c.filename
            if not path.exists():
                partial = path.with_name(path.name + ".part").exists()
                status = "missing" + (" (partial download: rerun download to resume)" if partial else "")
            else:
                try:
                    verify_checkpoint(path, c, check_hash=args.verify)
                    status = "present, " + ("sha256 ok" if args.verify else "size ok")
                except SednaSamError as exc:
                    status = f"BAD: {exc}"
            line += f"  {status}"
        print(line)
    return 0


def _models_download(args: argparse.Namespace) -> int:
    from sedna_sam.models import download_checkpoint

    path = download_checkpoint(args.name, args.dir, url=args.url, progress=not args.no_progress)
    print(path)
    return 0


def _register_models(subparsers) -> None:
    p = subparsers.add_parser("models", help="official SAM checkpoints: list, download")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="names, files, sizes, sha256; with --dir, what is present")
    ls.add_argument("--dir", default=None, help="checkpoint directory to check")
    ls.add_argument("--verify", action="store_true", help="hash present files (slow for vit_h)")
    ls.set_defaults(func=_models_list)
    dl = sub.add_parser(
        "download",
        help="download a checkpoint (resumes, verifies sha256)",
        description="Download vit_h, vit_l or vit_b from dl.fbaipublicfiles.com into --dir. An interrupted "
        "download resumes from its .part file (HTTP Range); the file is renamed into place only after its "
        "size and sha256 match. Offline, the error says which file to put where.",
    )
    dl.add_argument("name", help="vit_h, vit_l or vit_b")
    dl.add_argument("--dir", default="models", help="destination directory (default ./models)")
    dl.add_argument("--url", default=None, help="mirror URL of the same file (default: the official URL)")
    dl.add_argument("--no-progress", action="store_true")
    dl.set_defaults(func=_models_download)


def register(subparsers) -> None:
    _register_models(subparsers)
