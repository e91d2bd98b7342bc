"""``sedna-sam edge run|calibrate|ship``: the edge inference worker and its helpers."""

from __future__ import annotations

import argparse
import logging
import re
import signal
import threading

from sedna_sam.errors import SednaSamError

log = logging.getLogger("sedna_sam.edge")

RUN_HELP = """\
Segment every frame from --source with the deployed Segformer, write TrainIds PNGs (and
overlays) to the result dir, score each frame for "corner case" and keep flagged frames
with a metadata JSON in the unseen-sample buffer. With --store (or $SEDNA_SAM_STORE) a
shipper thread uploads them to the cloud store, surviving outages and restarts.

Run by Sedna (LifelongLearningJob deploySpec) the defaults come from its env:
  MODEL_URLS                 the model (a Segformer directory, a file in it, or deploy/index.pkl)
  INFERENCE_RESULT_DIR       result dir (default ./inference_results)
  unseen_save_url            buffer of flagged samples (default ./unseen_samples)
  MODEL_POLL_PERIOD_SECONDS  how often the model is checked for a new version (default 30)
  SEDNA_SAM_STORE            cloud store URL (directory, file://, s3://)
  S3_ENDPOINT_URL, ACCESS_KEY_ID, SECRET_ACCESS_KEY   for s3:// stores
  NODE_NAME                  node name in the metadata (default: host name)
The threshold comes from <model>/sedna_sam_edge.json (`sedna-sam edge calibrate`).
"""


def _byte_size(text: str) -> int:
    """Bytes from ``500M``, ``2G``, ``2GiB`` or a plain number."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 500M, 2G, 1048576)")
    return int(
        float(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)]
    )


def register(subparsers) -> None:
    edge = subparsers.add_parser(
        "edge", help="edge inference worker: run, calibrate the corner-case threshold, ship samples"
    )
    sub = edge.add_subparsers(dest="edge_command", metavar="SUBCOMMAND")
    edge.set_defaults(func=lambda args: (edge.print_help(), 2)[1])

    run = sub.add_parser(
        "run",
        help="segment frames, flag corner cases, buffer and ship them",
        description=RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--model", default=None, help="Segformer directory (default: $MODEL_URLS)")
    run.add_argument(
        "--source",
        required=True,
        help="frames: a directory (see --watch), an image, a .txt list of images, a video file, "
        "a camera index (0) or an rtsp:// / http(s):// stream URL",
    )
    run.add_argument("--watch", action="store_true", help="keep watching the source directory for new images")
    run.add_argument(
        "--every", type=int, default=1, help="video/stream: process every N-th frame (default 1)"
    )
    run.add_argument(
        "--result-dir", default=None, help="TrainIds/overlay output (default: $INFERENCE_RESULT_DIR)"
    )
    run.add_argument("--unseen-dir", default=None, help="flagged-sample buffer (default: $unseen_save_url)")
    run.add_argument(
        "--scorer", default=None, help="msp, entropy, energy, lowconf (default: the model's config, else msp)"
    )
    run.add_argument("--threshold", type=float, default=None, help="override the calibrated threshold")
    run.add_argument("--overlay", action="store_true", help="also write a colour overlay per frame")
    run.add_argument(
        "--max-fps", type=float, default=None, help="frame-rate cap (default: as fast as possible)"
    )
    run.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    run.add_argument(
        "--reload-every",
        type=float,
        default=None,
        dest="poll_s",
        help="seconds between model-change checks (default: $MODEL_POLL_PERIOD_SECONDS or 30)",
    )
    run.add_argument("--buffer-max-bytes", type=_byte_size, default="2G", help="buffer size cap (default 2G)")
    run.add_argument("--buffer-max-count", type=int, default=10_000, help="buffer sample cap (default 10000)")
    run.add_argument(
        "--store",
        default=None,
        help="ship flagged samples to this store (default: $SEDNA_SAM_STORE; none = keep)",
    )
    run.add_argument(
        "--node",
        default=None,
        help="node name in metadata and store paths (default: $NODE_NAME or host name)",
    )
    run.add_argument(
        "--timing-log", default=None, help="append one JSON line of timings per frame to this file"
    )
    run.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    run.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus /metrics on this port (frames, flags per scorer, buffer, shipper, model)",
    )
    run.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address for /metrics (in a pod: 0.0.0.0; default 127.0.0.1)",
    )
    run.add_argument(
        "--no-sedna-lib", action="store_true", help="do not use the Sedna lib even when it is installed"
    )
    run.set_defaults(func=cmd_run)

    cal = sub.add_parser(
        "calibrate",
        help="set corner-case thresholds from known data (writes <model>/sedna_sam_edge.json)",
        description="Score every image in --data with every scorer and set each threshold so that "
        "about --target-rate of such frames get flagged; the chosen --scorer becomes the worker's.",
    )
    cal.add_argument("--model", default=None, help="Segformer directory (default: $MODEL_URLS)")
    cal.add_argument("--data", required=True, help="directory of images the model is known to handle")
    cal.add_argument(
        "--target-rate", type=float, default=0.05, help="fraction of known frames to flag (default 0.05)"
    )
    cal.add_argument("--scorer", default=None, help="scorer the worker will use (default: keep, else msp)")
    cal.add_argument("--device", default=None)
    cal.add_argument("--max-frames", type=int, default=None, help="use at most N images")
    cal.set_defaults(func=cmd_calibrate)

    ship = sub.add_parser(
        "ship",
        help="upload buffered samples to the cloud store (verifies, resumes, never duplicates)",
        description="Upload <buffer>/<id>.<ext> + <id>.json to <store>/flagged/<node>/ (image first, "
        "JSON last), verify size and sha256, then delete the local copy.",
    )
    ship.add_argument("--unseen-dir", default=None, help="buffer directory (default: $unseen_save_url)")
    ship.add_argument(
        "--store", default=None, help="store URL: directory, file://, s3:// (default: $SEDNA_SAM_STORE)"
    )
    ship.add_argument("--node", default=None, help="node name (default: $NODE_NAME or host name)")
    ship.add_argument(
        "--follow", action="store_true", help="keep running and ship new samples as they arrive"
    )
    ship.add_argument(
        "--backoff", type=float, default=1.0, help="first retry delay in seconds when unreachable"
    )
    ship.add_argument("--max-backoff", type=float, default=60.0, help="longest retry delay (default 60)")
    ship.add_argument(
        "--give-up-after",
        type=float,
        default=None,
        help="without --follow: stop retrying after this many seconds unreachable (default 300; "
        "with --follow: retry forever)",
    )
    ship.set_defaults(func=cmd_ship)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    return stop


def _store(args) -> str | None:
    from sedna_sam import sedna_compat

    return args.store or sedna_compat.get_param("SEDNA_SAM_STORE")


def cmd_run(args) -> int:
    from sedna_sam import sedna_compat
    from sedna_sam.edge.worker import WorkerSettings
    from sedna_sam.sedna_lib import sedna_available

    settings = WorkerSettings.from_env(
        model=args.model,
        source=args.source,
        result_dir=args.result_dir,
        unseen_dir=args.unseen_dir,
        scorer=args.scorer,
        threshold=args.threshold,
        overlay=args.overlay,
        max_fps=args.max_fps,
        device=args.device,
        poll_s=args.poll_s,
        watch=args.watch,
        every=args.every,
        buffer_max_bytes=args.buffer_max_bytes,
        buffer_max_count=args.buffer_max_count,
        node=args.node,
        timing_log=args.timing_log,
        max_frames=args.max_frames,
    )
    log.info("edge worker env: %s", sedna_compat.redacted(sedna_compat.read_role_env("inference")))
    stop = _stop_on_signals()
    use_lib = sedna_available() and sedna_compat.under_sedna() and not args.no_sedna_lib
    if not use_lib:
        return _run_frames(args, settings, stop, use_lib=False)
    # Sedna's lib leaves non-daemon threads running: end the process once our work is done.
    from sedna_sam.sedna_job.runtime import hard_exit

    code = 1
    try:
        code = _run_frames(args, settings, stop, use_lib=True)
    except SednaSamError as exc:
        log.error("%s", exc)
        code = 2
    except BaseException:
        log.exception("edge worker failed")
    hard_exit(code)
    return code  # not reached


FINAL_PASS_S = 30.0  # last shipping pass when the source is done
FINAL_PASS_ON_STOP_S = 4.0  # ... and after SIGTERM (Sedna's worker must end within 10 s)


def _run_frames(args, settings, stop: threading.Event, use_lib: bool) -> int:
    """The frame loop (plain, or through Sedna's lib) with the supervised shipper beside it.
    The summary and the exit status include the shipping: samples left in the buffer and
    shipper crashes fail the run."""
    from sedna_sam.edge.buffer import SampleBuffer
    from sedna_sam.edge.shipper import Shipper
    from sedna_sam.edge.supervisor import SupervisedShipper
    from sedna_sam.edge.worker import EdgeWorker

    metrics = None
    if args.metrics_port is not None:
        from sedna_sam.edge.metrics import EdgeMetrics

        metrics = EdgeMetrics(settings.node)
        metrics.serve(args.metrics_port, args.metrics_host)
    worker = None if use_lib else EdgeWorker(settings, metrics=metrics)
    store = _store(args)
    shipping: SupervisedShipper | None = None
    if store:
        buffer = worker.buffer if worker else SampleBuffer(settings.unseen_dir)
        shipping = SupervisedShipper(Shipper(buffer, store, settings.node)).start()
        if metrics is not None:
            metrics.shipper = shipping
    report = None
    try:
        if use_lib:
            from sedna_sam.edge.sedna_inference import run_with_sedna_lib

            report = run_with_sedna_lib(settings, stop, metrics)
        else:
            report = worker.run(stop)
    finally:
        if metrics is not None:
            metrics.close()
        if shipping is not None:
            if stop.is_set():  # SIGTERM: one short last pass, then go
                shipping.stop(FINAL_PASS_ON_STOP_S, join_s=FINAL_PASS_ON_STOP_S + 1)
            else:
                shipping.stop(FINAL_PASS_S)
            if report is not None:
                _report_shipping(report, shipping, store)
    print(report.summary(), flush=True)
    return report.exit_code


def _report_shipping(report, shipping, store: str) -> None:
    """Shipping outcome into the run's report: counts, and a failure for what is left."""
    stats = shipping.stats
    left = len(shipping.shipper.buffer.samples())
    report.count("samples shipped", stats.shipped)
    if stats.already_there:
        report.count("samples already in the store", stats.already_there)
    if stats.retries:
        report.count("store errors retried", stats.retries)
    if shipping.crashes:
        report.fail(
            "shipper",
            f"the shipper failed {shipping.crashes} time(s) and was restarted; last: {shipping.last_error}",
        )
    if left:
        why = f" (last store error: {stats.last_store_error})" if stats.last_store_error else ""
        report.fail(
            "shipper",
            f"{left} flagged sample(s) not shipped to {store}, kept in {shipping.shipper.buffer.root}{why}; "
            "the next `edge run` or `sedna-sam edge ship` sends them",
        )


def cmd_calibrate(args) -> int:
    from sedna_sam import sedna_compat
    from sedna_sam.edge.calibrate import calibrate, edge_config_path
    from sedna_sam.edge.model import resolve_model_dir

    model = args.model or sedna_compat.get_param("MODEL_URLS")
    if not model:
        raise SednaSamError("no model: pass --model DIR or set MODEL_URLS")
    config, report = calibrate(model, args.data, args.target_rate, args.scorer, args.device, args.max_frames)
    for name, entry in sorted(config["scorers"].items()):
        mark = "*" if name == config["scorer"] else " "
        print(
            f"{mark} {name:8s} threshold {entry['threshold']:.6g}  (flags {entry['flag_rate_on_known']:.1%} of known frames)"
        )
    print(f"written to {edge_config_path(resolve_model_dir(model))}")
    print(report.summary())
    return report.exit_code


def cmd_ship(args) -> int:
    from sedna_sam import sedna_compat
    from sedna_sam.edge.buffer import SampleBuffer
    from sedna_sam.edge.shipper import Shipper
    from sedna_sam.edge.supervisor import SupervisedShipper

    store = _store(args)
    if not store:
        raise SednaSamError("no store: pass --store URL or set SEDNA_SAM_STORE")
    unseen = args.unseen_dir or sedna_compat.get_param("unseen_save_url")
    if not unseen:
        raise SednaSamError("no buffer: pass --unseen-dir DIR or set unseen_save_url")
    node = args.node or sedna_compat.node_name()
    shipper = Shipper(SampleBuffer(unseen), store, node, args.backoff, args.max_backoff)
    give_up = args.give_up_after if args.give_up_after is not None else (None if args.follow else 300.0)
    stop = _stop_on_signals()
    crashes = 0
    if args.follow:  # store errors are retried inside; anything else restarts the shipper
        supervised = SupervisedShipper(
            shipper, restart_backoff_s=args.backoff, max_backoff_s=args.max_backoff
        )
        stop_watch = threading.Thread(
            target=lambda: (stop.wait(), supervised.request_stop(FINAL_PASS_S)), daemon=True
        )
        stop_watch.start()
        supervised.run_forever()  # until SIGTERM/SIGINT, then one last pass
        crashes = supervised.crashes
        stats = supervised.stats
    else:
        stats = shipper.run(stop, once=True, give_up_after_s=give_up)
    left = len(shipper.buffer.samples())
    print(
        f"{stats.shipped} shipped, {stats.already_there} already in the store, {stats.failed} failed, "
        f"{stats.retries} retries, {left} left in the buffer"
        + (f", shipper restarted {crashes} time(s)" if crashes else "")
        + (f"; last store error: {stats.last_store_error}" if left and stats.last_store_error else "")
    )
    return 0 if left == 0 and not crashes else 1
