"""A person's view: headless Chromium logs in to the real Label Studio, opens a pushed
task, and the editor lists our predicted regions over the image served from local files.

Uses Debian's ``/usr/bin/chromium`` through the ``playwright`` package
(tests/fixtures_browser.py). The screenshot is kept under ``test-artifacts/``.
"""

from __future__ import annotations

import pytest
from fixtures_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, browser_or_skip
from fixtures_labelstudio import W, new_dataset

from sedna_sam.labelstudio.api import LabelStudioClient
from sedna_sam.labelstudio.client import push_dataset


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.labelstudio
def test_editor_shows_predicted_regions(ls_server, labels, tmp_path):
    sync_playwright = browser_or_skip()
    dataset, title = new_dataset(ls_server, n=1)
    with LabelStudioClient(ls_server.url, ls_server.token) as client:
        push_dataset(dataset, labels, project=title, client=client, document_root=ls_server.document_root)
        project = client.find_project(title)
        (task,) = list(client.iter_tasks(project["id"]))
    expected = sorted(r["value"]["polygonlabels"][0] for r in task["predictions"][0]["result"])
    assert len(expected) == 3

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "labelstudio-editor.png"
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # fresh user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 720},
        )
        try:
            page = context.new_page()
            page.goto(f"{ls_server.url}/user/login/")
            page.fill("input[name=email]", ls_server.username)
            page.fill("input[name=password]", ls_server.password)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/user/login" not in url, timeout=60_000)

            page.goto(f"{ls_server.url}/projects/{project['id']}/data?task={task['id']}")
            items = page.locator(".lsf-outliner-item__title")
            items.first.wait_for(timeout=90_000)
            image_src = task["data"]["image"]
            page.wait_for_function(
                "src => [...document.images].some(i => i.src.endsWith(src) && i.complete && i.naturalWidth > 0)",
                arg=image_src,
                timeout=60_000,
            )
            page.screenshot(path=str(shot))
            titles = sorted(t.strip() for t in items.all_inner_texts())
            widths = page.eval_on_selector_all(
                "img",
                "(els, src) => els.filter(i => i.src.endsWith(src)).map(i => i.naturalWidth)",
                image_src,
            )
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "labelstudio-editor-failure.png"))
            raise
        finally:
            context.close()
    assert titles == expected
    assert widths and all(w == W for w in widths)
    assert shot.stat().st_size > 0
