"""``sedna-sam ls up|down|push|pull`` (and ``ls backend`` when that module is present)."""

from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

from sedna_sam.commands import add_config_path, add_dataset_dir, finish
from sedna_sam.errors import SednaSamError

log = logging.getLogger(__name__)


def _credentials(args: argparse.Namespace) -> tuple[str, str]:
    from sedna_sam.labelstudio.http import resolve_credentials

    token = None
    if getattr(args, "token_file", None):
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise SednaSamError(f"{args.token_file}: cannot read the token file ({exc.strerror})") from None
    return resolve_credentials(args.url, token)


def _add_connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="Label Studio URL (default $LABEL_STUDIO_URL)")
    parser.add_argument(
        "--token-file",
        default=None,
        help="file holding the API token (default: $LABEL_STUDIO_API_KEY); the token is never printed",
    )
    parser.add_argument("--project", default="sedna-sam", help="project title (>= 3 characters) or id")


# ------------------------------------------------------------------------------ up / down


def _up(args: argparse.Namespace) -> int:
    from sedna_sam.labelstudio.server import LOCAL_URL_ENV, start_server

    server = start_server(
        args.data_dir,
        document_root=args.document_root,
        port=args.port,
        host=args.host,
        username=args.username,
        executable=args.label_studio,
        wait_s=args.wait,
        extra_env=LOCAL_URL_ENV if args.allow_local_urls else None,
    )
    print(
        f"Label Studio is running at {server.url} (pid {server.pid}, log {server.log_path})\n"
        f"  log in:     {server.username}, password in {server.password_file}\n"
        f"  API token:  in {server.token_file}; for the other commands:\n"
        f"              export LABEL_STUDIO_URL={server.url}\n"
        f'              export LABEL_STUDIO_API_KEY="$(cat {server.token_file})"\n'
        f"              export LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={server.document_root}\n"
        f"  images must lie under the document root {server.document_root}\n"
        f"  data dir {server.data_dir} is private (0700); Label Studio's error reporting to Sentry and\n"
        f"  its usage analytics are off (SENTRY_DSN, FRONTEND_SENTRY_DSN empty, COLLECT_ANALYTICS=false)\n"
        f"  stop it:    sedna-sam ls down --data-dir {server.data_dir}"
    )
    return 0


def _down(args: argparse.Namespace) -> int:
    from sedna_sam.labelstudio.server import stop_data_dir

    if stop_data_dir(args.data_dir):
        print(f"stopped Label Studio of {args.data_dir}")
    else:
        print(f"no Label Studio running for {args.data_dir}")
    return 0


# ------------------------------------------------------------------------------ push / pull


def _push(args: argparse.Namespace) -> int:
    from sedna_sam.labels import load_labels
    from sedna_sam.labelstudio.api import LabelStudioClient
    from sedna_sam.labelstudio.client import project_url, push_dataset

    labels = load_labels(args.config_path or "cityscapes")
    url, token = _credentials(args)
    if args.connect_backend:  # missing backend credentials stop the command before it pushes
        from sedna_sam.labelstudio.backend import BackendAuth
        from sedna_sam.labelstudio.connect import auth_fields

        auth_fields(BackendAuth.from_env())
    with LabelStudioClient(url, token) as client:
        report = push_dataset(
            args.dataset_dir,
            labels,
            project=args.project,
            batch_size=args.batch_size,
            on_new_version=args.on_new_version,
            document_root=args.document_root,
            client=client,
        )
    print(f"project: {project_url(url, report.project['id'])}")
    if args.connect_backend:
        from sedna_sam.labelstudio.backend import BackendAuth
        from sedna_sam.labelstudio.connect import connect_interactive

        ml = connect_interactive(
            url, token, report.project["id"], args.connect_backend, labels, auth=BackendAuth.from_env()
        )
        print(f"interactive backend {args.connect_backend} connected (ML backend id {ml['id']})")
    return finish(report)


def _connect_backend(args: argparse.Namespace) -> int:
    """Connect a running `ls backend` to a project that may not exist yet (the annotation
    service creates it): wait for both, up to --wait."""
    import time

    from sedna_sam.labels import load_labels
    from sedna_sam.labelstudio.api import LabelStudioClient
    from sedna_sam.labelstudio.backend import BackendAuth
    from sedna_sam.labelstudio.connect import connect_interactive

    labels = load_labels(args.config_path or "cityscapes")
    url, token = _credentials(args)
    auth = BackendAuth.from_env()
    deadline = time.monotonic() + args.wait
    last = ""
    while True:
        try:
            with LabelStudioClient(url, token) as client:
                project = client.get_project(args.project)
            ml = connect_interactive(url, token, project["id"], args.backend_url, labels, auth=auth)
        except (SednaSamError, OSError) as exc:  # Label Studio errors are SednaSamErrors
            last = str(exc)
            if time.monotonic() >= deadline:
                raise SednaSamError(
                    f"could not connect {args.backend_url} to project {args.project!r} within {args.wait:.0f} s: {last}"
                ) from None
            log.info("not yet (%s); trying again in %.0f s", last, args.interval)
            time.sleep(args.interval)
            continue
        print(
            f"interactive backend {args.backend_url} connected to project {project['id']} (ML backend {ml['id']})"
        )
        return 0


def _pull(args: argparse.Namespace) -> int:
    from sedna_sam.labels import load_labels
    from sedna_sam.labelstudio.api import LabelStudioClient
    from sedna_sam.labelstudio.client import pull_dataset

    labels = load_labels(args.config_path or "cityscapes")
    url, token = _credentials(args)
    with LabelStudioClient(url, token) as client:
        report = pull_dataset(
            client,
            args.project,
            args.dataset_dir,
            labels,
            export_format=args.format,
            only_new=args.only_new,
            preview=args.preview,
            ignore_unknown_labels=args.ignore_unknown_labels,
        )
    print(f"export saved to {report.export_path}")
    return finish(report)


# ------------------------------------------------------------------------------ register


def register(subparsers) -> None:
    from sedna_sam.labelstudio.api import EXPORT_FORMATS
    from sedna_sam.labelstudio.client import NEW_VERSION_CHOICES

    ls = subparsers.add_parser(
        "ls",
        help="Label Studio: start a local server, push pre-annotations, pull corrections",
        description="Label Studio without clicking: `ls up` starts a local server, `ls push` creates the "
        "project + image storage and imports tasks with polygon predictions, `ls pull` exports the "
        "corrected annotations and writes TrainIds. URL/token from --url/--token-file or "
        "$LABEL_STUDIO_URL/$LABEL_STUDIO_API_KEY (the token is never printed).",
    )
    sub = ls.add_subparsers(dest="ls_command", metavar="LS_COMMAND")

    up = sub.add_parser("up", help="start a local Label Studio (own venv) and print how to log in")
    up.add_argument("--data-dir", required=True, help="server state: database, api-token, password, log")
    up.add_argument(
        "--document-root",
        default=None,
        help="local-files document root: datasets must lie under it (default DATA_DIR/files)",
    )
    up.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    up.add_argument("--username", default="admin@example.com", help="login e-mail of the first user")
    up.add_argument(
        "--label-studio",
        default=None,
        help="label-studio executable (default $SEDNA_SAM_LABEL_STUDIO, PATH, ./.venv-ls/bin/label-studio)",
    )
    up.add_argument("--wait", type=float, default=180.0, help="seconds to wait for /health (default 180)")
    up.add_argument(
        "--allow-local-urls",
        action="store_true",
        help="let Label Studio call ML backends/webhooks on localhost (turns its SSRF protection off)",
    )
    up.set_defaults(func=_up)

    down = sub.add_parser("down", help="stop the Label Studio started by `ls up` for a data dir")
    down.add_argument("--data-dir", required=True)
    down.set_defaults(func=_down)

    push = sub.add_parser(
        "push",
        help="create project + storage if missing, import ls_data/tasks.json (idempotent)",
        description="Create the project if missing (labeling config from the labels), connect a "
        "local-files storage over DATASET/raw_data, import DATASET/ls_data/tasks.json (converted from "
        "ssa_output/ first when missing) in batches. Rerunning never duplicates tasks.",
    )
    add_dataset_dir(push)
    add_config_path(push)
    _add_connection(push)
    push.add_argument("--batch-size", type=int, default=100, help="tasks per import request (default 100)")
    push.add_argument(
        "--on-new-version",
        choices=NEW_VERSION_CHOICES,
        default="replace",
        help="a task already in the project with predictions of another model version: replace them "
        "(default), add the new ones beside them, or keep the old",
    )
    push.add_argument(
        "--document-root",
        default=None,
        help="the server's local-files document root (default $LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)",
    )
    push.add_argument(
        "--connect-backend",
        metavar="URL",
        default=None,
        help="also connect a running `sedna-sam ls backend` at URL as the project's interactive ML "
        "backend (adds smart keypoint/box tools to the labeling config; basic auth from "
        "$SEDNA_SAM_BACKEND_USER / $SEDNA_SAM_BACKEND_PASSWORD)",
    )
    push.set_defaults(func=_push)

    connect = sub.add_parser(
        "connect-backend",
        help="connect a running `sedna-sam ls backend` to a project as its interactive ML backend",
        description="Wait until Label Studio, the project (made by the annotation service or `ls push`) and the "
        "backend answer, then connect the backend as the project's interactive ML backend (smart keypoint/box "
        "tools added to its labeling config). Idempotent: run it again after either restarts. Basic auth "
        "from $SEDNA_SAM_BACKEND_USER / $SEDNA_SAM_BACKEND_PASSWORD.",
    )
    _add_connection(connect)
    add_config_path(connect)
    connect.add_argument("--backend-url", required=True, help="the backend as Label Studio reaches it")
    connect.add_argument(
        "--wait", type=float, default=600.0, help="give up after this many seconds (default 600)"
    )
    connect.add_argument("--interval", type=float, default=10.0, help="seconds between tries (default 10)")
    connect.set_defaults(func=_connect_backend)

    pull_p = sub.add_parser(
        "pull",
        help="export annotations into ls_data/ and write train_ids/*_TrainIds.png",
    )
    add_dataset_dir(pull_p)
    add_config_path(pull_p)
    _add_connection(pull_p)
    pull_p.add_argument("--format", choices=EXPORT_FORMATS, default="JSON_MIN", help="export format")
    pull_p.add_argument(
        "--only-new", action="store_true", help="convert only annotations changed since the last pull"
    )
    pull_p.add_argument("--preview", action="store_true", help="also write colour previews")
    pull_p.add_argument(
        "--ignore-unknown-labels", action="store_true", help="skip polygons whose label the config lacks"
    )
    pull_p.set_defaults(func=_pull)

    if importlib.util.find_spec("sedna_sam.commands.ls_backend") is not None:
        from sedna_sam.commands.ls_backend import register_ls

        register_ls(sub)
    ls.set_defaults(func=lambda args: (ls.print_help(), 2)[1])
