"""``sedna-sam doctor``: check that this node or pod can run a role, and say what to fix."""

from __future__ import annotations

import argparse
import os

DESCRIPTION = """\
Check that this node or pod can run one sedna-sam role and print a table of
OK / WARN / FAIL rows, each failure with what to fix. Exit status 1 when a check fails.

roles and what they check:
  edge   Sedna worker env, Sedna lib, unseen/result dirs writable, model readable, store writable, CPU/GPU
  cloud  SAM checkpoints in $SEDNA_SAM_MODELS_DIR (size, --verify-hash: sha256), Label Studio
         reachable with the token, store writable, GPU visible
  train  Sedna worker env, Sedna lib, output dir writable, store writable, GPU visible
  eval   Sedna worker env, Sedna lib, output dir writable, MODEL_URLS readable, GPU visible

In a pod:  kubectl exec deploy/sedna-sam-annotation -- sedna-sam doctor --role cloud
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check a node or pod (env, models, Label Studio, store, GPU) and say what to fix",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--role", choices=["edge", "cloud", "train", "eval"], default="cloud", help="default: cloud"
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="PATH",
        help="a model file or directory that must be readable (repeatable); MODEL_URLS is added for edge/eval",
    )
    parser.add_argument("--ls-url", default=None, help="Label Studio URL (default $LABEL_STUDIO_URL)")
    parser.add_argument(
        "--store",
        default=os.environ.get("SEDNA_SAM_STORE"),
        help="store directory or s3:// URL to probe for writes (default $SEDNA_SAM_STORE)",
    )
    parser.add_argument(
        "--verify-hash",
        action="store_true",
        help="also check the sha256 of official SAM checkpoints (about 1 s per 100 MB; size is always checked)",
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="network timeout per request, s (default 5)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sedna_sam.doctor import DoctorContext, exit_code, format_json, format_table, run_checks

    ctx = DoctorContext(
        role=args.role,
        model_paths=list(args.model),
        ls_url=args.ls_url,
        store_url=args.store,
        timeout_s=args.timeout,
        verify_hash=args.verify_hash,
    )
    results = run_checks(ctx)
    print(format_json(results) if args.json else format_table(results))
    return exit_code(results)
