"""``sedna-sam init-dirs``: make host directories writable for the non-root workers."""

from __future__ import annotations

import argparse

HELP = """\
Create each DIR (and missing parents) and give it, not its contents, to --owner. Run as root
in the init container of every pod template that writes to host paths: Sedna's local
controller and kubelet create those directories as root with mode 0755, and the workers
run as uid 10001. Example (what our LifelongLearningJob templates run):
  sedna-sam init-dirs --owner 10001:10001 /var/lib/sedna-sam/lifelong/train /var/lib/sedna-sam/lifelong/eval
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "init-dirs",
        help="create host directories and hand them to the workers' user (init container, as root)",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="directory to create / hand over")
    p.add_argument("--owner", default="10001:10001", help="numeric UID:GID (default 10001:10001)")
    p.add_argument("--mode", default="0755", help="mode of directories created (default 0755)")
    p.set_defaults(func=cmd_init_dirs)


def cmd_init_dirs(args) -> int:
    from sedna_sam.errors import SednaSamError
    from sedna_sam.hostdirs import parse_owner, prepare_dirs

    uid, gid = parse_owner(args.owner)
    try:
        mode = int(args.mode, 8)
    except ValueError:
        raise SednaSamError(f"--mode {args.mode!r}: expected octal such as 0755") from None
    for a in prepare_dirs(args.dirs, uid, gid, mode):
        print(f"{a.action:8s} {a.path}", flush=True)
    return 0
