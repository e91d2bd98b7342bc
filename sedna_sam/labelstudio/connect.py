"""Connect the interactive backend to a Label Studio project (``ls push --connect-backend``,
``ls connect-backend``): the smart tools in the project's labeling config, then an ML
backend connection with the backend's basic-auth credentials. Calls go through
:class:`~sedna_sam.labelstudio.api.LabelStudioClient` (the one HTTP stack); Label Studio's
answers about the backend are worded here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sedna_sam.errors import SednaSamError
from sedna_sam.labels import LabelSet
from sedna_sam.labelstudio.api import LabelStudioClient
from sedna_sam.labelstudio.backend import BACKEND_PASSWORD_ENV, BACKEND_USER_ENV, BackendAuth
from sedna_sam.labelstudio.label_config import (
    Controls,
    controls_from_config,
    interactive_labeling_config_xml,
    parse_label_config,
)

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)


def auth_fields(auth: BackendAuth) -> dict:
    """The model connection's authentication, as Label Studio's ML API takes it."""
    if not auth.basic:
        raise SednaSamError(
            f"Label Studio connects to ML backends with HTTP basic auth: set {BACKEND_USER_ENV} and {BACKEND_PASSWORD_ENV} "
            "(the same values the backend runs with)"
        )
    return {"auth_method": "BASIC_AUTH", "basic_auth_user": auth.username, "basic_auth_pass": auth.password}


def connect_backend(
    ls_url: str,
    token: str,
    project_id: int,
    backend_url: str,
    title: str = "sedna-sam interactive SAM",
    *,
    auth: BackendAuth,
) -> dict:
    """Connect an ML backend to a Label Studio project as interactive, with the backend's
    basic-auth credentials (idempotent: an existing connection with the same URL gets the
    credentials and the interactive flag set again). Label Studio calls the backend's
    /health and /setup while connecting, so it must be running."""
    fields = auth_fields(auth)
    with LabelStudioClient(ls_url, token) as client:
        resp = _call(
            client,
            "GET",
            "/api/ml",
            f"listing ML backends of project {project_id}",
            params={"project": project_id},
            timeout=30,
        )
        for backend in resp.json():
            if backend.get("url", "").rstrip("/") == backend_url.rstrip("/"):
                # The password is write-only in Label Studio's API: set it every time.
                # Label Studio re-validates the connection (health, setup) from these fields.
                body = {"project": project_id, "url": backend["url"], "is_interactive": True, **fields}
                return _call(
                    client,
                    "PATCH",
                    f"/api/ml/{backend['id']}",
                    "updating the ML backend connection",
                    json=body,
                    timeout=60,
                ).json()
        body = {"project": project_id, "url": backend_url, "title": title, "is_interactive": True, **fields}
        return _call(
            client,
            "POST",
            "/api/ml",
            f"connecting ML backend {backend_url} to project {project_id}",
            json=body,
            timeout=60,
        ).json()


def connect_interactive(
    ls_url: str,
    token: str,
    project_id: int,
    backend_url: str,
    labels: LabelSet,
    title: str = "sedna-sam interactive SAM",
    *,
    auth: BackendAuth,
) -> dict:
    """What ``ls push --connect-backend`` does: give the project the interactive labeling
    config (its PolygonLabels/Image names kept, smart KeyPointLabels + RectangleLabels
    added) unless it already has smart tools, then :func:`connect_backend` with ``auth``."""
    auth_fields(auth)  # no credentials: stop before changing the project
    with LabelStudioClient(ls_url, token) as client:
        resp = _call(
            client, "GET", f"/api/projects/{project_id}", f"reading project {project_id}", timeout=30
        )
        config = resp.json().get("label_config") or ""
        root = (
            parse_label_config(config, f"project {project_id}'s labeling config") if config.strip() else None
        )
        smart = root is not None and any(
            el.get("smart") == "true"
            for tag in ("KeyPointLabels", "RectangleLabels")
            for el in root.iter(tag)
        )
        if not smart:
            controls = (
                controls_from_config(config) if root is not None else Controls("label", "image", "image", ())
            )
            xml = interactive_labeling_config_xml(
                labels, from_name=controls.polygon_from, to_name=controls.image_to
            )
            _call(
                client,
                "PATCH",
                f"/api/projects/{project_id}",
                f"adding the smart tools to project {project_id}'s labeling config",
                json={"label_config": xml},
                timeout=60,
            )
            log.info(
                "project %s: labeling config now has smart keypoint/box tools for the backend", project_id
            )
    return connect_backend(ls_url, token, project_id, backend_url, title, auth=auth)


def _call(client: LabelStudioClient, method: str, path: str, doing: str, **kw) -> httpx.Response:
    """One call (with the client's retries); an error answer raises with what it means here."""
    resp = client.send(method, path, **kw)
    _raise_for(resp, doing)
    return resp


def _raise_for(resp: httpx.Response, doing: str) -> None:
    if resp.status_code == 403 and "reserved network address" in resp.text:
        # Label Studio 1.23 refuses ML backends (and the webhook it adds for them) on
        # loopback/private addresses unless both switches are off.
        raise SednaSamError(
            f"{doing}: Label Studio refuses ML backends on local/private addresses (this machine, a "
            "cluster Service); start it with ML_BLOCK_LOCAL_IP=false and SSRF_PROTECTION_ENABLED=false"
        )
    text = resp.text.lower()
    if resp.status_code == 400 and ("authentication" in text or "401 client error" in text):
        raise SednaSamError(
            f"{doing}: the backend refused the credentials Label Studio sent; set {BACKEND_USER_ENV} and "
            f"{BACKEND_PASSWORD_ENV} to the values the backend runs with"
        )
    if resp.status_code in (401, 403):
        raise SednaSamError(f"{doing}: Label Studio refused the token (HTTP {resp.status_code})")
    if resp.status_code >= 400:
        raise SednaSamError(f"{doing}: HTTP {resp.status_code}: {resp.text[:500]}")
