"""`sedna-sam doctor`: each check against real things (files, a saved model, an S3-compatible
server over HTTP, the real Label Studio server); only the GPU is simulated (none exists here)."""

from __future__ import annotations

import argparse
import json
import socket
import sys

import pytest

from sedna_sam import doctor
from sedna_sam.commands import doctor as doctor_command
from sedna_sam.doctor import FAIL, OK, WARN, DoctorContext, run_checks

SEDNA_EDGE_ENV = {
    "NAMESPACE": "ns",
    "JOB_NAME": "job",
    "WORKER_NAME": "edge-1",
    "LC_SERVER": "http://127.0.0.1:9100",
}


def one(ctx: DoctorContext, check: str) -> doctor.CheckResult:
    results = doctor.CHECKS.get(check)(ctx)
    assert len(results) == 1, results
    return results[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- Sedna env + lib


def test_sedna_env_ok_fail_warn():
    train_env = {**SEDNA_EDGE_ENV, "TRAIN_DATASET_URL": "/d/index.txt", "OUTPUT_URL": "/out"}
    assert one(DoctorContext("train", env=train_env), "sedna-env").status == OK
    missing = dict(train_env)
    del missing["TRAIN_DATASET_URL"]
    result = one(DoctorContext("train", env=missing), "sedna-env")
    assert result.status == FAIL and "TRAIN_DATASET_URL" in result.detail and result.fix
    local = one(DoctorContext("eval", env={}), "sedna-env")  # a local run, not under Sedna
    assert local.status == WARN and "MODEL_URLS" in local.detail


def forget_sedna_modules(monkeypatch) -> None:
    """Make the next `import sedna...` look again (other tests imported the real lib)."""
    from sedna_sam import sedna_lib

    sedna_lib.sedna_lib.cache_clear()
    for name in [m for m in sys.modules if m == "sedna" or m.startswith("sedna.")]:
        monkeypatch.delitem(sys.modules, name)


@pytest.fixture
def lib_cache_reset():
    """The fake `sedna` packages of a test, and what sedna_lib() cached while they were on
    the path, must not outlive it: the real lib's modules come back afterwards."""
    from sedna_sam import sedna_lib

    before = {k: v for k, v in sys.modules.items() if k == "sedna" or k.startswith("sedna.")}
    yield
    for name in [m for m in sys.modules if m == "sedna" or m.startswith("sedna.")]:
        del sys.modules[name]
    sys.modules.update(before)
    sedna_lib.sedna_lib.cache_clear()


@pytest.mark.usefixtures("lib_cache_reset")
def test_sedna_lib_missing_or_the_wrong_package(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "sedna" not in p])
    forget_sedna_modules(monkeypatch)
    if doctor.importlib.util.find_spec("sedna") is None:
        assert one(DoctorContext("edge", env={}), "sedna-lib").status == WARN
    # The unrelated PyPI `sedna` is a plain module without sedna.core.
    (tmp_path / "sedna.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    forget_sedna_modules(monkeypatch)
    result = one(DoctorContext("edge", env={}), "sedna-lib")
    assert result.status == FAIL and "pip uninstall sedna" in result.fix
    # A package laid out like kubeedge/sedna's lib.
    pkg = tmp_path / "real" / "sedna" / "core" / "lifelong_learning"
    pkg.mkdir(parents=True)
    for d in (pkg.parent.parent, pkg.parent, pkg):
        (d / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "real"))
    forget_sedna_modules(monkeypatch)
    assert one(DoctorContext("edge", env={}), "sedna-lib").status == OK


# ---------------------------------------------------------------------------- dirs + models


def test_writable_dirs(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {"unseen_save_url": str(tmp_path / "unseen"), "INFERENCE_RESULT_DIR": str(blocker / "results")}
    by_name = {r.name: r for r in doctor.CHECKS.get("dirs")(DoctorContext("edge", env=env))}
    assert by_name["dir unseen_save_url"].status == OK and (tmp_path / "unseen").is_dir()
    assert by_name["dir INFERENCE_RESULT_DIR"].status == FAIL
    assert list((tmp_path / "unseen").iterdir()) == [], "the probe file is removed"


def test_models_real_checkpoint_dir_empty_and_missing(tmp_path, tiny_segformer_dir):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    ctx = DoctorContext(
        "eval",
        env={"MODEL_URLS": f"{tiny_segformer_dir};{tmp_path / 'missing.pth'}"},
        model_paths=[str(empty)],
    )
    results = doctor.CHECKS.get("models")(ctx)
    statuses = [r.status for r in results]
    assert statuses == [FAIL, OK, FAIL], results
    assert "empty" in results[0].detail and "does not exist" in results[2].detail
    not_a_model = tmp_path / "somedir"
    not_a_model.mkdir()
    assert doctor.probe_model(str(not_a_model)).status == FAIL
    assert one(DoctorContext("eval", env={}), "models").status == FAIL  # eval without a model
    assert one(DoctorContext("edge", env={}), "models").status == WARN  # before the first deploy


# ---------------------------------------------------------------------------- store


def test_store_local(tmp_path):
    assert one(DoctorContext("cloud", store_url=str(tmp_path / "store")), "store").status == OK
    assert not list((tmp_path / "store" / ".sedna-sam-doctor").iterdir())
    blocker = tmp_path / "f"
    blocker.write_text("x")
    assert one(DoctorContext("cloud", store_url=str(blocker / "store")), "store").status == FAIL
    assert one(DoctorContext("cloud"), "store").status == WARN


@pytest.fixture
def s3_server(monkeypatch):
    """A local S3-compatible server (moto) reached over HTTP, as a MinIO would be."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing")
    fs.mkdir("store-bucket")
    yield endpoint
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_store_s3(s3_server):
    result = one(DoctorContext("edge", store_url="s3://store-bucket/flagged"), "store")
    assert result.status == OK, result
    missing = one(DoctorContext("edge", store_url="s3://no-such-bucket/flagged"), "store")
    assert missing.status == FAIL and "S3_ENDPOINT_URL" in missing.fix


# ---------------------------------------------------------------------------- GPU (simulated)


def test_gpu_cpu_only_here_and_a_simulated_gpu(monkeypatch):
    import torch

    if not torch.cuda.is_available():
        assert one(DoctorContext("train"), "gpu").status == WARN
        assert one(DoctorContext("edge"), "gpu").status == OK
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "NVIDIA H100")
    result = one(DoctorContext("train"), "gpu")
    assert result.status == OK and "H100" in result.detail


# ---------------------------------------------------------------------------- Label Studio


def test_label_studio_unreachable_and_unset():
    result = one(
        DoctorContext("cloud", env={}, ls_url=f"http://127.0.0.1:{free_port()}", timeout_s=2), "label-studio"
    )
    assert result.status == FAIL and "not reachable" in result.detail
    assert one(DoctorContext("cloud", env={}), "label-studio").status == FAIL


def test_label_studio_without_httpx_is_a_finding(monkeypatch):
    monkeypatch.setitem(sys.modules, "httpx", None)  # `import httpx` now fails, as without the extra
    result = one(DoctorContext("cloud", env={}, ls_url="http://127.0.0.1:9"), "label-studio")
    assert result.status == FAIL and "httpx" in result.detail and "sedna-sam[ls]" in result.fix


@pytest.mark.labelstudio
def test_label_studio_real_server_token(ls_server):
    url, token = ls_server.url, ls_server.token
    ok = one(
        DoctorContext("cloud", env={"LABEL_STUDIO_URL": url, "LABEL_STUDIO_API_KEY": token}), "label-studio"
    )
    assert ok.status == OK, ok
    bad = one(
        DoctorContext("cloud", env={"LABEL_STUDIO_URL": url, "LABEL_STUDIO_API_KEY": "wrong-token"}),
        "label-studio",
    )
    assert bad.status == FAIL and "rejected the token" in bad.detail
    assert "wrong-token" not in bad.detail + bad.fix and token not in ok.detail, "never print a token"
    no_token = one(DoctorContext("cloud", env={"LABEL_STUDIO_URL": url}), "label-studio")
    assert no_token.status == FAIL and "no API token" in no_token.detail


# ---------------------------------------------------------------------------- command


def run_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    doctor_command.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_command_table_and_exit_codes(tmp_path, tiny_segformer_dir, monkeypatch, capsys):
    for name in list(SEDNA_EDGE_ENV) + ["MODEL_URLS", "unseen_save_url", "INFERENCE_RESULT_DIR"]:
        monkeypatch.delenv(name, raising=False)
    for name, value in SEDNA_EDGE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MODEL_URLS", str(tiny_segformer_dir))
    monkeypatch.setenv("unseen_save_url", str(tmp_path / "unseen"))
    monkeypatch.setenv("INFERENCE_RESULT_DIR", str(tmp_path / "results"))
    code = run_command(["doctor", "--role", "edge", "--store", str(tmp_path / "store")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.splitlines()[0].split() == ["CHECK", "STATUS", "DETAIL"]
    assert "sedna env" in out and "0 failure(s)" in out

    monkeypatch.setenv("MODEL_URLS", str(tmp_path / "gone.pth"))
    code = run_command(["doctor", "--role", "edge", "--store", str(tmp_path / "store"), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 1
    failed = [r for r in rows if r["status"] == FAIL]
    assert [r["name"] for r in failed] == ["model gone.pth"] and failed[0]["fix"]


def test_a_crashing_check_is_reported(monkeypatch):
    def boom(ctx):
        raise RuntimeError("kaput")

    monkeypatch.setitem(doctor.ROLE_CHECKS, "cloud", ["boom"])
    monkeypatch.setitem(doctor.CHECKS._items, "boom", boom)
    results = run_checks(DoctorContext("cloud"))
    assert results[0].status == FAIL and "kaput" in results[0].detail
    assert doctor.exit_code(results) == 1
    assert "-> fix:" in doctor.format_table(results)


def test_sam_checkpoints_in_the_models_dir(tmp_path):
    """The cloud role finds official SAM checkpoints in $SEDNA_SAM_MODELS_DIR and checks them
    against the registry: size always, sha256 with --verify-hash. A sparse file of the right
    size stands in for the 375 MB download (no network here)."""
    from sedna_sam.models import CHECKPOINTS

    vit_b = CHECKPOINTS["vit_b"]
    env = {"SEDNA_SAM_MODELS_DIR": str(tmp_path)}
    by_name = {r.name: r for r in doctor.CHECKS.get("models")(DoctorContext("cloud", env=env))}
    assert (
        by_name["sam checkpoints"].status == FAIL
        and "models download vit_h" in by_name["sam checkpoints"].fix
    )
    with open(tmp_path / vit_b.filename, "wb") as fh:
        fh.truncate(vit_b.size)
    results = doctor.CHECKS.get("models")(DoctorContext("cloud", env=env))
    assert [r.status for r in results] == [OK, OK], results
    assert "size (sha256: --verify-hash) of the official vit_b" in results[1].detail
    hashed = doctor.CHECKS.get("models")(DoctorContext("cloud", env=env, verify_hash=True))
    assert (
        hashed[1].status == FAIL and "sha256" in hashed[1].detail and "models download vit_b" in hashed[1].fix
    )
    with open(tmp_path / vit_b.filename, "wb") as fh:
        fh.truncate(1000)  # an interrupted copy
    truncated = doctor.CHECKS.get("models")(DoctorContext("cloud", env=env))
    assert truncated[1].status == FAIL and "expected" in truncated[1].detail
    assert one(DoctorContext("cloud", env={}), "models").status == WARN  # no models dir configured
