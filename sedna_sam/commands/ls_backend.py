"""``sedna-sam ls backend``: serve interactive SAM to Label Studio (mounted under ``ls``)."""

from __future__ import annotations

import argparse
import logging
import os

log = logging.getLogger("sedna_sam.ls.backend")

DESCRIPTION = """\
Serve Label Studio's ML-backend protocol (/health, /setup, /predict, /webhook) with SAM:
a click (smart KeyPointLabels; Alt+click for a negative point) or a box (smart
RectangleLabels) in the editor comes back as an editable polygon with the chosen label.
The SAM image embedding is cached per image (LRU, --cache-size), so only the first click on
an image runs the image encoder.

The project needs the interactive labeling config (PolygonLabels + smart KeyPointLabels +
RectangleLabels): `sedna-sam ls push --connect-backend URL` sets it up and connects this
backend; or in the UI: Settings > Model > Connect model, URL of this server, "Interactive
preannotations" on.

Credentials (required; from env / a Secret, never on the command line): every route but
/health needs HTTP basic auth with $SEDNA_SAM_BACKEND_USER / $SEDNA_SAM_BACKEND_PASSWORD
(what Label Studio's model connection sends; `ls push --connect-backend` sets them there)
or "Authorization: Bearer $SEDNA_SAM_BACKEND_TOKEN". Anything else gets 401.

Images: /data/local-files/?d=<relative path> is read from under --document-root (realpath,
never outside it) when the file is there, otherwise fetched from Label Studio
(--label-studio-url, token $LABEL_STUDIO_API_KEY); other URLs only from that same Label
Studio origin. Absolute paths, file://, s3:// and other hosts are refused. The URL and the
token Label Studio sends at /setup are ignored; the token is never logged. Images over
$SEDNA_SAM_MAX_IMAGE_PIXELS (default 50 MP) are refused from their header.

Listens on 127.0.0.1 unless --host says otherwise (a container: --host 0.0.0.0).
"""


def register_ls(ls_subparsers) -> None:
    """Add ``backend`` under the ``sedna-sam ls`` subcommands."""
    p = ls_subparsers.add_parser(
        "backend",
        help="serve interactive SAM (clicks/boxes -> polygons) as a Label Studio ML backend",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--ckpt-path",
        "--ckpt_path",
        "--sam-checkpoint",
        dest="ckpt_path",
        required=True,
        help="SAM checkpoint (.pth)",
    )
    p.add_argument(
        "--model-type", default=None, help="vit_h, vit_b, vit_l (default: inferred from the checkpoint)"
    )
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument(
        "--host",
        default=os.environ.get("BACKEND_HOST", "127.0.0.1"),
        help="listen address (default $BACKEND_HOST or 127.0.0.1; 0.0.0.0 in a container)",
    )
    p.add_argument(
        "--port", type=int, default=int(os.environ.get("BACKEND_PORT", "9090")), help="default 9090"
    )
    p.add_argument(
        "--cache-size", type=int, default=8, help="image embeddings kept in memory (LRU; default 8)"
    )
    p.add_argument(
        "--multimask",
        choices=["auto", "always", "never"],
        default="auto",
        help="ask SAM for 3 candidate masks (best predicted IoU wins): auto = for a single click only",
    )
    p.add_argument(
        "--tolerance-px", type=float, default=1.0, help="polygon simplification tolerance (pixels)"
    )
    p.add_argument("--min-area-px", type=int, default=25, help="drop mask parts smaller than this (pixels)")
    p.add_argument(
        "--label-studio-url", default=None, help="default $LABEL_STUDIO_URL (to fetch task images)"
    )
    p.add_argument(
        "--document-root",
        default=None,
        help="Label Studio's local-files document root, to read images directly "
        "(default $LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)",
    )
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=16 << 20,
        help="larger request bodies get HTTP 413 (default 16 MiB)",
    )
    p.add_argument(
        "--max-image-bytes",
        type=int,
        default=64 << 20,
        help="largest image fetched from Label Studio (default 64 MiB)",
    )
    p.add_argument(
        "--workers", type=int, default=4, help="requests served at once (default 4; 32 more may wait)"
    )
    p.set_defaults(func=run_backend)


def run_backend(args) -> int:
    from sedna_sam.labelstudio.backend import BackendAuth, SamBackend, make_backend_server
    from sedna_sam.labelstudio.image_source import image_source_from_env
    from sedna_sam.labelstudio.interactive import InteractiveSam
    from sedna_sam.models import load_sam

    auth = BackendAuth.from_env().require()  # no credentials: stop before loading SAM
    images = image_source_from_env(args.label_studio_url, None, args.document_root)
    images.max_bytes = args.max_image_bytes
    sam = load_sam(args.ckpt_path, model_type=args.model_type, device=args.device)
    engine = InteractiveSam(sam, cache_size=args.cache_size)
    version = f"sam-{os.path.splitext(os.path.basename(args.ckpt_path))[0]}"
    backend = SamBackend(
        engine,
        images,
        model_version=version,
        tolerance_px=args.tolerance_px,
        min_area_px=args.min_area_px,
        multimask=args.multimask,
    )
    server = make_backend_server(
        backend, args.host, args.port, auth=auth, max_body=args.max_request_bytes, workers=args.workers
    )
    host, port = server.server_address[:2]
    log.info("interactive SAM backend %s listening on http://%s:%d (Ctrl+C to stop)", version, host, port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
