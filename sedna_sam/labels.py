"""Label sets: id -> name, colours, and the Label Studio labeling config built from them.

A labels config file is JSON in one of these shapes (all accepted, so a Hugging Face
model's ``config.json`` works as a labels config too)::

    {"0": "road", "1": "sidewalk", ...}
    {"id2label": {"0": "road", ...}, "palette": {"0": [128, 64, 128], ...}}

Ids are train ids: the pixel values of a TrainIds PNG. 255 is reserved for "ignore".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from sedna_sam.errors import InputError

IGNORE_ID = 255


def config_file(name: str):
    """A file shipped in ``config/`` (installed as the package data ``sedna_sam.config``),
    as an :mod:`importlib.resources` Traversable (``read_text``, ``is_file``)."""
    from importlib.resources import files

    try:
        return files("sedna_sam.config") / name
    except ModuleNotFoundError:  # the source tree on sys.path without an install
        return Path(__file__).resolve().parent.parent / "config" / name


# The 19 Cityscapes train ids and the colours of the official palette.
CITYSCAPES_CLASSES: list[tuple[str, tuple[int, int, int]]] = [
    ("road", (128, 64, 128)),
    ("sidewalk", (244, 35, 232)),
    ("building", (70, 70, 70)),
    ("wall", (102, 102, 156)),
    ("fence", (190, 153, 153)),
    ("pole", (153, 153, 153)),
    ("traffic light", (250, 170, 30)),
    ("traffic sign", (220, 220, 0)),
    ("vegetation", (107, 142, 35)),
    ("terrain", (152, 251, 152)),
    ("sky", (70, 130, 180)),
    ("person", (220, 20, 60)),
    ("rider", (255, 0, 0)),
    ("car", (0, 0, 142)),
    ("truck", (0, 0, 70)),
    ("bus", (0, 60, 100)),
    ("train", (0, 80, 100)),
    ("motorcycle", (0, 0, 230)),
    ("bicycle", (119, 11, 32)),
]

# ADE20K scene-parsing benchmark, 150 classes in train-id order.
ADE20K_CLASSES: list[str] = (
    "wall,building,sky,floor,tree,ceiling,road,bed,windowpane,grass,cabinet,sidewalk,"
    "person,earth,door,table,mountain,plant,curtain,chair,car,water,painting,sofa,shelf,"
    "house,sea,mirror,rug,field,armchair,seat,fence,desk,rock,wardrobe,lamp,bathtub,"
    "railing,cushion,base,box,column,signboard,chest of drawers,counter,sand,sink,"
    "skyscraper,fireplace,refrigerator,grandstand,path,stairs,runway,case,pool table,"
    "pillow,screen door,stairway,river,bridge,bookcase,blind,coffee table,toilet,flower,"
    "book,hill,bench,countertop,stove,palm,kitchen island,computer,swivel chair,boat,bar,"
    "arcade machine,hovel,bus,towel,light,truck,tower,chandelier,awning,streetlight,booth,"
    "television receiver,airplane,dirt track,apparel,pole,land,bannister,escalator,ottoman,"
    "bottle,buffet,poster,stage,van,ship,fountain,conveyer belt,canopy,washer,plaything,"
    "swimming pool,stool,barrel,basket,waterfall,tent,bag,minibike,cradle,oven,ball,food,"
    "step,tank,trade name,microwave,pot,animal,bicycle,lake,dishwasher,screen,blanket,"
    "sculpture,hood,sconce,vase,traffic light,tray,ashcan,fan,pier,crt screen,plate,"
    "monitor,bulletin board,shower,radiator,glass,clock,flag"
).split(",")

# Dataset names accepted wherever a labels config is expected (SSA's --dataset values).
DATASET_CONFIGS = {
    "cityscapes": "cityscapes_id2label.json",
    "foggy_driving": "cityscapes_id2label.json",
    "ade20k": "ade20k_id2label.json",
}


def stable_colour(name: str) -> tuple[int, int, int]:
    """A deterministic colour for a class without a palette entry."""
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    return (digest[0], digest[1], digest[2])


@dataclass(frozen=True)
class LabelSet:
    """Class ids, names and colours. ``id2label`` keys are train ids (0..254)."""

    id2label: dict[int, str]
    palette: dict[int, tuple[int, int, int]]
    source: str = "<memory>"

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}

    @property
    def ids(self) -> list[int]:
        return sorted(self.id2label)

    @property
    def names(self) -> list[str]:
        return [self.id2label[i] for i in self.ids]

    def __len__(self) -> int:
        return len(self.id2label)

    def colour(self, class_id: int) -> tuple[int, int, int]:
        return self.palette.get(class_id) or stable_colour(self.id2label.get(class_id, str(class_id)))

    def colour_table(self):
        """(256, 3) uint8 lookup table: train id -> RGB; unknown ids and 255 are black."""
        import numpy as np

        table = np.zeros((256, 3), dtype=np.uint8)
        for i in self.id2label:
            table[i] = self.colour(i)
        return table

    def to_json(self) -> dict:
        return {
            "id2label": {str(i): n for i, n in sorted(self.id2label.items())},
            "palette": {str(i): list(self.colour(i)) for i in sorted(self.id2label)},
        }

    @classmethod
    def from_names(cls, names: list[str], palette: list[tuple[int, int, int]] | None = None) -> LabelSet:
        pal = {i: tuple(c) for i, c in enumerate(palette)} if palette else {}
        return cls({i: n for i, n in enumerate(names)}, pal)  # type: ignore[arg-type]


def cityscapes() -> LabelSet:
    return LabelSet.from_names([n for n, _ in CITYSCAPES_CLASSES], [c for _, c in CITYSCAPES_CLASSES])


def labels_from_dict(data: dict, source: str = "<memory>") -> LabelSet:
    """Build a :class:`LabelSet` from any of the accepted JSON shapes (see module doc)."""
    raw = data.get("id2label", data) if isinstance(data, dict) else None
    if not isinstance(raw, dict) or not raw:
        raise InputError(f'{source}: no id2label mapping found (expected {{"0": "road", ...}})')
    id2label: dict[int, str] = {}
    for key, name in raw.items():
        try:
            class_id = int(key)
        except (TypeError, ValueError):
            raise InputError(f"{source}: class id {key!r} is not an integer") from None
        if not 0 <= class_id < IGNORE_ID:
            raise InputError(f"{source}: class id {class_id} is outside 0..254 (255 means ignore)")
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{source}: class {class_id} has no name")
        id2label[class_id] = name
    dupes = {n for n in id2label.values() if list(id2label.values()).count(n) > 1}
    if dupes:
        raise InputError(f"{source}: class names must be unique, repeated: {sorted(dupes)}")
    palette: dict[int, tuple[int, int, int]] = {}
    for key, rgb in (data.get("palette") or {}).items() if isinstance(data.get("palette"), dict) else []:
        if len(rgb) != 3:
            raise InputError(f"{source}: palette entry {key} must be [r, g, b]")
        palette[int(key)] = (int(rgb[0]), int(rgb[1]), int(rgb[2]))
    return LabelSet(id2label, palette, source)


def load_labels(spec: str | Path | None) -> LabelSet:
    """Load a labels config from a JSON path or a dataset name (cityscapes, foggy_driving,
    ade20k). ``None`` means Cityscapes."""
    if spec is None:
        spec = "cityscapes"
    if str(spec) in DATASET_CONFIGS:
        shipped = config_file(DATASET_CONFIGS[str(spec)])
        return labels_from_dict(
            json.loads(shipped.read_text(encoding="utf-8")), f"sedna_sam.config/{shipped.name}"
        )
    path = Path(spec)
    if not path.is_file():
        raise InputError(
            f"labels config {str(path)!r} not found; pass a JSON file or one of {sorted(DATASET_CONFIGS)}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    return labels_from_dict(data, str(path))


def labeling_config_xml(labels: LabelSet, from_name: str = "label", to_name: str = "image") -> str:
    """Label Studio labeling config: PolygonLabels over one Image, a Label per class."""
    lines = [
        "<View>",
        f'  <Image name={quoteattr(to_name)} value="$image" zoom="true" zoomControl="true"/>',
        f"  <PolygonLabels name={quoteattr(from_name)} toName={quoteattr(to_name)}"
        ' strokeWidth="2" pointSize="small" opacity="0.5">',
    ]
    for class_id in labels.ids:
        r, g, b = labels.colour(class_id)
        lines.append(
            f'    <Label value={quoteattr(labels.id2label[class_id])} background="#{r:02x}{g:02x}{b:02x}"/>'
        )
    lines += ["  </PolygonLabels>", "</View>"]
    return "\n".join(lines) + "\n"


def labels_for_model(id2label: dict[int, str]) -> LabelSet:
    """A model's own class names, in Cityscapes colours where the names match (others get
    a stable colour of their own)."""
    city = cityscapes()
    by_name = {n: city.colour(i) for i, n in city.id2label.items()}
    return LabelSet(dict(id2label), {i: by_name[n] for i, n in id2label.items() if n in by_name})
