"""Label Studio labeling configs: parsed with the standard library's XML parser, written
from a :class:`~sedna_sam.labels.LabelSet`.

The base config (PolygonLabels on an Image) is :func:`sedna_sam.labels.labeling_config_xml`;
here are what the Label Studio side reads from a project's config (its label names, where a
polygon answer goes) and the interactive variant that makes Label Studio call the backend.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from sedna_sam.errors import InputError
from sedna_sam.labels import LabelSet, labeling_config_xml


def parse_label_config(label_config: str, what: str = "labeling config") -> ET.Element:
    """The root element of a labeling config; :class:`InputError` naming ``what`` and the
    parser's line and column when it is not well-formed XML."""
    if not label_config or not label_config.strip():
        raise InputError(f"{what} is empty")
    try:
        return ET.fromstring(label_config)
    except ET.ParseError as exc:
        raise InputError(f"{what} is not valid XML: {exc}") from None


def config_labels(label_config: str, what: str = "labeling config") -> set[str]:
    """Label names a labeling config offers (``value`` of every ``<Label>``, entities
    decoded); an empty config offers none."""
    if not (label_config or "").strip():
        return set()
    root = parse_label_config(label_config, what)
    return {value for label in root.iter("Label") if (value := label.get("value")) is not None}


def interactive_labeling_config_xml(
    labels: LabelSet,
    from_name: str = "label",
    to_name: str = "image",
    click_name: str = "click",
    box_name: str = "box",
) -> str:
    """The labeling config of :func:`sedna_sam.labels.labeling_config_xml` plus smart
    KeyPointLabels (``click_name``) and RectangleLabels (``box_name``) with the same labels
    on the same Image: the tools that make Label Studio call the backend."""
    root = ET.fromstring(labeling_config_xml(labels, from_name=from_name, to_name=to_name))
    polygons = root.find("PolygonLabels")
    assert polygons is not None
    for tag, name, extra in (
        ("KeyPointLabels", click_name, {"strokeWidth": "2"}),
        ("RectangleLabels", box_name, {"strokeWidth": "1"}),
    ):
        control = ET.SubElement(
            root, tag, {"name": name, "toName": to_name, "smart": "true", "smartOnly": "true"}
        )
        control.attrib.update(extra)
        for label in polygons.findall("Label"):
            ET.SubElement(control, "Label", dict(label.attrib))
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


@dataclass(frozen=True)
class Controls:
    """Where a polygon answer goes: the PolygonLabels name, its Image and the task data key
    holding the image reference (``$image`` -> ``image``)."""

    polygon_from: str
    image_to: str
    data_key: str
    labels: tuple[str, ...]


def controls_from_config(label_config: str) -> Controls:
    """Find the PolygonLabels control and its Image in a labeling config."""
    root = parse_label_config(label_config)
    images = {el.get("name"): el.get("value", "") for el in root.iter("Image")}
    for poly in root.iter("PolygonLabels"):
        to_name = poly.get("toName")
        if to_name in images:
            labels = tuple(lbl.get("value", "") for lbl in poly.iter("Label"))
            return Controls(poly.get("name", "label"), to_name, images[to_name].lstrip("$"), labels)  # type: ignore[arg-type]
    raise InputError(
        "labeling config has no PolygonLabels on an Image; use `interactive_labeling_config_xml`"
    )
