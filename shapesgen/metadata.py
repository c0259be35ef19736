"""What dataset hubs read about an export: its licence, a Croissant JSON-LD description
(``croissant.json``) and the Hugging Face dataset-card header (YAML front matter).

Pure functions of what the export writes, so their bytes are as reproducible as the
export's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shapesgen.errors import ConfigError, shown


@dataclass(frozen=True, kw_only=True)
class License:
    """A licence an export can carry: its Hugging Face id (the ``--license`` value), SPDX
    id, name and URL."""

    key: str
    spdx: str
    name: str
    url: str


LICENSES: dict[str, License] = {
    item.key: item
    for item in (
        License(
            key="cc0-1.0",
            spdx="CC0-1.0",
            name="Creative Commons Zero v1.0 Universal",
            url="https://creativecommons.org/publicdomain/zero/1.0/",
        ),
        License(
            key="cc-by-4.0",
            spdx="CC-BY-4.0",
            name="Creative Commons Attribution 4.0 International",
            url="https://creativecommons.org/licenses/by/4.0/",
        ),
        License(
            key="cc-by-sa-4.0",
            spdx="CC-BY-SA-4.0",
            name="Creative Commons Attribution Share Alike 4.0 International",
            url="https://creativecommons.org/licenses/by-sa/4.0/",
        ),
        License(
            key="cc-by-nc-4.0",
            spdx="CC-BY-NC-4.0",
            name="Creative Commons Attribution Non Commercial 4.0 International",
            url="https://creativecommons.org/licenses/by-nc/4.0/",
        ),
        License(
            key="cdla-permissive-2.0",
            spdx="CDLA-Permissive-2.0",
            name="Community Data License Agreement Permissive 2.0",
            url="https://cdla.dev/permissive-2-0/",
        ),
        License(
            key="odc-by",
            spdx="ODC-By-1.0",
            name="Open Data Commons Attribution License v1.0",
            url="https://opendatacommons.org/licenses/by/1-0/",
        ),
    )
}
DEFAULT_LICENSE = "cc0-1.0"


def license_of(key: object) -> License:
    """The licence with Hugging Face id ``key`` (one of :data:`LICENSES`)."""
    if not isinstance(key, str) or key not in LICENSES:
        raise ConfigError(f"license={shown(key)} is invalid: must be one of {', '.join(LICENSES)}", param="license")
    return LICENSES[key]


def size_category(count: int) -> str:
    """The Hugging Face ``size_categories`` bucket of ``count`` examples."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
    for bound, name in bounds:
        if count < bound:
            return name
    return "1M<n<10M" if count < 10_000_000 else "10M<n<100M"


TAGS = ("amodal-segmentation", "occlusion", "layered-masks", "synthetic", "shapesgen")


def hf_front_matter(
    *, license_key: str, pretty_name: str, split: str, num_images: int, style: str, layers_png: bool
) -> list[str]:
    """The YAML front matter of the card (Hugging Face dataset-card header), one line each.

    ``configs`` lets the Hub's JSON loader read ``annotations.json``: config
    ``annotations`` (the default) holds its ``annotations`` records, ``images`` its
    image entries, both under split ``split``.
    """
    lines = [
        "---",
        f"license: {license_key}",
        f"pretty_name: {json.dumps(pretty_name)}",
        "task_categories:",
        "- image-segmentation",
        "- object-detection",
        "task_ids:",
        "- instance-segmentation",
        "annotations_creators:",
        "- machine-generated",
        "source_datasets:",
        "- original",
        "size_categories:",
        f"- {size_category(num_images)}",
        "tags:",
        *[f"- {tag}" for tag in (*TAGS, f"{style}-layout", *(["layer-maps"] if layers_png else []))],
        "configs:",
    ]
    for name, default in (("annotations", True), ("images", False)):
        lines += [
            f"- config_name: {name}",
            "  data_files:",
            f"  - split: {split}",
            "    path: annotations.json",
            f"  field: {name}",
        ]
        if default:
            lines.append("  default: true")
    return [*lines, "---"]


CROISSANT_CONTEXT: dict[str, Any] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "cr": "http://mlcommons.org/croissant/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileObject": "cr:fileObject",
    "fileProperty": "cr:fileProperty",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}
CROISSANT_VERSION = "http://mlcommons.org/croissant/1.0"

# Per layout: the record fields of annotations.json's "annotations" described in croissant.json,
# (key, Croissant dataType, description); masks (RLE objects or polygons) are described in README.md.
_INSTANCE_EXTRAS = [
    ("instance_id", "sc:Integer", "the instance's value in the layer maps (index in the scene + 1)"),
    ("depth", "sc:Integer", "depth rank, 0 = front-most"),
    ("occlude_rate", "sc:Float", "fraction of the amodal area hidden by instances in front (exact geometry)"),
    ("pixel_occlude_rate", "sc:Float", "the same from the export's pixels (the evaluation bands)"),
    ("is_visible", "sc:Boolean", "at least one visible pixel at the export's resolution"),
]
_BOX = "amodal box (x, y, w, h), exact geometry"
_AREA = "amodal area, exact geometry"
ANNOTATION_FIELDS: dict[str, list[tuple[str, str, str]]] = {
    "coco": [("bbox", "cr:BoundingBox", _BOX), ("area", "sc:Float", _AREA), *_INSTANCE_EXTRAS],
    "kins": [("a_bbox", "cr:BoundingBox", _BOX), ("a_area", "sc:Float", _AREA), *_INSTANCE_EXTRAS],
    "aistron": [("amodal_bbox", "cr:BoundingBox", _BOX), ("amodal_area", "sc:Float", _AREA), *_INSTANCE_EXTRAS],
    "cocoa": [
        ("size", "sc:Integer", "number of regions (instances) of the image, in `regions` front to back"),
        ("depth_constraint", "sc:Text", "front-back pairs of 1-based positions in `regions`, e.g. 1-2,1-3"),
    ],
}


def _field(record_set: str, name: str, data_type: str, description: str, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "@type": "cr:Field",
        "@id": f"{record_set}/{name}",
        "name": name,
        "description": description,
        "dataType": data_type,
        "source": source,
    }


def _json_field(
    record_set: str, key: str, data_type: str, description: str, *, file_object: str, references: str | None = None
) -> dict[str, Any]:
    field = _field(
        record_set,
        key,
        data_type,
        description,
        {"fileObject": {"@id": file_object}, "extract": {"jsonPath": f"$.{record_set}[*].{key}"}},
    )
    if references is not None:
        field["references"] = {"field": {"@id": references}}
    return field


def _file_set_record(name: str, file_set: str, description: str, content: str) -> dict[str, Any]:
    source = {"fileSet": {"@id": file_set}}
    return {
        "@type": "cr:RecordSet",
        "@id": name,
        "name": name,
        "description": description,
        "field": [
            _field(
                name,
                "file_name",
                "sc:Text",
                "path of the PNG in the export folder",
                {**source, "extract": {"fileProperty": "fullpath"}},
            ),
            _field(name, content, "sc:ImageObject", "the PNG", {**source, "extract": {"fileProperty": "content"}}),
        ],
    }


def croissant(
    *,
    name: str,
    description: str,
    version: str,
    license_key: str,
    cite_as: str,
    style: str,
    digests: dict[str, str],
    categories: list[str],
    layers_png: bool,
    date_published: str | None = None,
) -> dict[str, Any]:
    """The export's Croissant 1.0 description.

    Files: ``annotations.json`` and ``config.json`` with their SHA-256 (``digests``), the
    PNG folders as file sets. Record sets: ``categories`` (inline, an enumeration),
    ``images`` and ``annotations`` (read from ``annotations.json`` by JSONPath), and the
    PNG files. ``annotations.json`` is declared twice, as ``annotations.json`` and
    ``image-index`` (same URL and digest): a Croissant reader reads one table per file
    object, and the images and the annotations are tables of different lengths.
    """
    json_files = (
        ("annotations.json", "annotations.json", f"the annotations, {style} layout"),
        ("image-index", "annotations.json", "annotations.json again, read for its image entries"),
        ("config.json", "config.json", "the generator config, seed included"),
    )
    distribution: list[dict[str, Any]] = [
        {
            "@type": "cr:FileObject",
            "@id": file_id,
            "name": file_id,
            "description": what,
            "contentUrl": url,
            "encodingFormat": "application/json",
            "sha256": digests[url],
        }
        for file_id, url, what in json_files
    ]
    file_sets = [("image-files", "images/*.png", "images/NNNNNN.png: scene NNNNNN")]
    if layers_png:
        file_sets.append(
            (
                "layer-files",
                "layers/*.png",
                "layers/NNNNNN_Lk.png: layer k (1 = front), 16-bit grey, pixel = instance_id of the k-th instance "
                "from the front (0 = none); read at 16 bits (a reader converting to 8 bits keeps ids up to 255)",
            )
        )
    distribution += [
        {
            "@type": "cr:FileSet",
            "@id": set_id,
            "name": set_id,
            "description": what,
            "encodingFormat": "image/png",
            "includes": pattern,
        }
        for set_id, pattern, what in file_sets
    ]

    def field(record_set: str, key: str, kind: str, what: str, **extra: Any) -> dict[str, Any]:
        source = "annotations.json" if record_set == "annotations" else "image-index"
        return _json_field(record_set, key, kind, what, file_object=source, **extra)

    annotations = [
        field("annotations", "id", "sc:Integer", "annotation id"),
        field("annotations", "image_id", "sc:Integer", "the image's id", references="images/id"),
    ]
    if style != "cocoa":
        annotations.append(field("annotations", "category_id", "sc:Integer", "class id (categories/id)"))
    annotations += [field("annotations", key, kind, what) for key, kind, what in ANNOTATION_FIELDS[style]]
    record_sets = [
        {
            "@type": "cr:RecordSet",
            "@id": "categories",
            "name": "categories",
            "description": "the shape classes (annotations.json's categories; supercategory shape)",
            "key": {"@id": "categories/id"},
            "field": [
                {"@type": "cr:Field", "@id": "categories/id", "name": "id", "dataType": "sc:Integer"},
                {"@type": "cr:Field", "@id": "categories/name", "name": "name", "dataType": "sc:Text"},
            ],
            "data": [{"categories/id": c + 1, "categories/name": name} for c, name in enumerate(categories)],
        },
        {
            "@type": "cr:RecordSet",
            "@id": "images",
            "name": "images",
            "description": "one entry per image (scene)",
            "key": {"@id": "images/id"},
            "field": [
                field("images", "id", "sc:Integer", "image id = scene index + 1"),
                field("images", "file_name", "sc:Text", "the PNG, relative to the export folder"),
                field("images", "height", "sc:Integer", "height in pixels"),
                field("images", "width", "sc:Integer", "width in pixels"),
                field("images", "scene_index", "sc:Integer", "0-based scene index in the source HDF5 file"),
            ],
        },
        {
            "@type": "cr:RecordSet",
            "@id": "annotations",
            "name": "annotations",
            "description": (
                "one record per image, its instances in `regions` (COCO-Amodal layout)"
                if style == "cocoa"
                else "one record per instance; its masks (RLE or polygon) are described in README.md"
            ),
            "key": {"@id": "annotations/id"},
            "field": annotations,
        },
        _file_set_record("image_files", "image-files", "the images as files", "image"),
    ]
    if layers_png:
        record_sets.append(_file_set_record("layer_files", "layer-files", "the N-layer maps as files", "layer_map"))
    document: dict[str, Any] = {
        "@context": CROISSANT_CONTEXT,
        "@type": "sc:Dataset",
        "conformsTo": CROISSANT_VERSION,
        "name": name,
        "description": description,
        "version": version,
        "license": LICENSES[license_key].url,
        "citeAs": cite_as,
        "keywords": list(TAGS),
        "distribution": distribution,
        "recordSet": record_sets,
    }
    if date_published is not None:  # a registered version's date; other data records no time
        document["datePublished"] = date_published
    return document
