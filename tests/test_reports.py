"""The pages people look at: the round report (eval's report.html) and the lifelong curve
(`sedna-sam report`), opened in headless Chromium, screenshots under test-artifacts/, and
every number on them checked against the JSON they were made from."""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fixtures_browser import chromium_page, images_loaded, screenshot


class Cells(HTMLParser):
    """Text of every element carrying data-* attributes, keyed by those attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[tuple, str] = {}
        self._open: tuple | None = None

    def handle_starttag(self, tag, attrs):
        data = tuple(sorted((k, v) for k, v in attrs if k.startswith("data-")))
        self._open = data if data else None

    def handle_data(self, text):
        if self._open is not None:
            self.cells[self._open] = self.cells.get(self._open, "") + text

    def handle_endtag(self, tag):
        self._open = None


def cells(page_html: str) -> dict[tuple, str]:
    parser = Cells()
    parser.feed(page_html)
    return parser.cells


def fmt(x):
    return "n/a" if x is None else f"{x:.4f}"


@pytest.fixture(scope="module")
def evaluated(two_domains, tmp_path_factory, labels):
    """A gated evaluation of two tiny models on both domains (the standalone eval worker)."""
    from sedna_sam.lifelong.eval_worker import EvalOptions, run_eval_worker
    from sedna_sam.segformer import build_tiny_segformer

    out = tmp_path_factory.mktemp("round") / "eval"
    other = build_tiny_segformer(out.parent / "other-model", labels, seed=3, input_size=(64, 128))
    options = EvalOptions(
        models=[str(two_domains.base_model), str(other)],
        test_index=str(two_domains.b_test),
        old_test_index=str(two_domains.a_test),
        output=str(out),
        gate=True,
        max_old_drop=0.5,
        device="cpu",
        progress=False,
    )
    run_eval_worker(options)
    return out


def test_round_report_has_the_figures_and_the_numbers(evaluated):
    page = (evaluated / "report.html").read_text()
    for name in ("per_class_iou_new.png", "per_class_iou_old.png", "confusion_change.png", "examples.png"):
        assert (evaluated / name).stat().st_size > 1000, name
        assert f'data-file="{name}"' in page, f"{name} is not inline in the page"
    assert 'src="http' not in page and "<link" not in page, "the page must be self-contained"
    metrics = json.loads((evaluated / "metrics.json").read_text())
    gate = json.loads((evaluated / "gate.json").read_text())
    got = cells(page)
    for role, model in (("baseline", gate["baseline"]), ("candidate", gate["candidate"])):
        for domain in ("new", "old"):
            key = (("data-domain", domain), ("data-metric", "mIoU"), ("data-model", role))
            assert got[key] == fmt(metrics["models"][model][domain]["mIoU"])
            for name, iou in metrics["models"][model][domain]["per_class_iou"].items():
                assert got[(("data-class", name), ("data-domain", domain), ("data-role", role))] == fmt(iou)
    assert (
        got[(("data-accept", str(gate["accept"]).lower()),)].strip()
        == f"Gate: {'ACCEPT' if gate['accept'] else 'REJECT'}"
    )
    assert all(html.escape(r) in page for r in gate["reasons"])
    # the examples are the images whose mIoU changed most
    per_b = metrics["models"][gate["baseline"]]["new"]["per_image_mIoU"]
    per_c = metrics["models"][gate["candidate"]]["new"]["per_image_mIoU"]
    assert set(per_b) == set(per_c) and len(per_c) == 6


@pytest.mark.browser
def test_round_report_in_a_browser(evaluated, tmp_path):
    with chromium_page(tmp_path / "profile") as page:
        page.goto((evaluated / "report.html").as_uri())
        widths = images_loaded(page)
        shot = screenshot(page, "round-report.png")
        decision = page.inner_text("#decision")
        rows = page.eval_on_selector_all("#classes-new tr", "rows => rows.length")
    assert len(widths) == 4 and all(w > 100 for w in widths), widths
    assert decision.startswith("Gate:") and rows == 1 + 19 and shot.stat().st_size > 0


def write_partial_job(root: Path, evaluated: Path) -> Path:
    """A job's outputDir after round 1 (deployed), round 2 (rejected), round 3 (trained,
    not evaluated yet) and round 4 (its data written, training still running)."""
    out = root / "lifelong"
    for n, lines in ((1, 8), (2, 5), (3, 6), (4, 7)):
        d = out / "data" / "train" / str(n)
        d.mkdir(parents=True)
        (d / "data.txt").write_text("".join(f"a/{n}_{i}.png a/{n}_{i}_L.png\n" for i in range(lines)))
        e = out / "data" / "eval" / str(n)
        e.mkdir(parents=True)
        (e / "data.txt").write_text("x.png y.png\nx.png y.png\nz.png w.png\n")  # Sedna repeats eval lines
    for n, seconds, replay in ((1, 12.5, 0), (2, 9.0, 8), (3, 7.25, 13)):
        t = out / "train" / str(n)
        t.mkdir(parents=True)
        (t / "train_report.json").write_text(json.dumps({"seconds": seconds, "replay_samples": replay}))
    gate = json.loads((evaluated / "gate.json").read_text())
    for n, accept in ((1, True), (2, False)):
        e = out / "eval" / str(n)
        e.mkdir(parents=True)
        (e / "metrics.json").write_text((evaluated / "metrics.json").read_text())
        (e / "gate.json").write_text(json.dumps({**gate, "accept": accept}))
    return out


def test_lifelong_page_of_a_partial_job(evaluated, tmp_path):
    out = write_partial_job(tmp_path, evaluated)
    run = subprocess.run(
        [sys.executable, "-m", "sedna_sam", "report", "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    page = (out / "lifelong.html").read_text()
    data = json.loads((out / "lifelong.json").read_text())
    assert [r["status"] for r in data] == ["deployed", "rejected", "trained", "training"]
    metrics = json.loads((evaluated / "metrics.json").read_text())
    gate = json.loads((evaluated / "gate.json").read_text())
    cand = metrics["models"][gate["candidate"]]
    assert data[0]["new_miou"] == pytest.approx(cand["new"]["mIoU"])
    assert data[0]["backward_transfer"] == pytest.approx(gate["backward_transfer"])
    assert [r["train_samples"] for r in data] == [8, 5, 6, 7] and data[0]["eval_samples"] == 2
    assert [r["replay_samples"] for r in data] == [0, 8, 13, None]
    got = cells(page)
    assert got[(("data-key", "new_miou"),)]  # the first row's cells come first
    rows = re.findall(r'<tr class="(\w+)" data-round="(\d+)"', page)
    assert rows == [("deployed", "1"), ("rejected", "2"), ("trained", "3"), ("training", "4")]
    assert "deployed: 1." in page and (out / "lifelong.png").stat().st_size > 1000
    assert "round" in run.stdout and "deployed" in run.stdout


@pytest.mark.browser
def test_lifelong_page_in_a_browser(evaluated, tmp_path):
    out = write_partial_job(tmp_path, evaluated)
    from sedna_sam.lifelong.curve import write_lifelong_page

    write_lifelong_page(out)
    with chromium_page(tmp_path / "profile") as page:
        page.goto((out / "lifelong.html").as_uri())
        widths = images_loaded(page)
        screenshot(page, "lifelong.png")
        statuses = page.eval_on_selector_all("#rounds tr[data-round]", "rows => rows.map(r => r.className)")
        new_miou = page.inner_text('#rounds tr[data-round="1"] td[data-key="new_miou"]')
    data = json.loads((out / "lifelong.json").read_text())
    assert widths and all(w > 100 for w in widths)
    assert statuses == ["deployed", "rejected", "trained", "training"]
    assert new_miou == f"{data[0]['new_miou']:.4f}"
