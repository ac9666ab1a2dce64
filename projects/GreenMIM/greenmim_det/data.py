"""COCO-format datasets for detectron2, with one-line errors for the usual mistakes.

Built-in names (coco_2017_train, coco_2017_val, ...) are detectron2's, found under
$DETECTRON2_DATASETS (default ./datasets) as detectron2 lays them out. Any other COCO json +
image folder is registered on the fly when a config passes ``json_file`` and ``image_root``:

    dataloader.train.dataset.names=my_train
    dataloader.train.dataset.json_file=/data/my/annotations/train.json
    dataloader.train.dataset.image_root=/data/my/train

Errors (missing or malformed json, entries without required fields, unknown category ids,
unknown dataset name, empty dataset) are raised as `DatasetError` whose message is a single line
that names the dataset, the file and the fix. Recoverable problems are skipped and counted in one
warning line per dataset: annotations with an empty box (w or h <= 0), images whose file is
absent; detectron2 itself drops (and counts) instances whose polygons are all broken (< 3 points).
Reading the images themselves robustly is greenmim_det.mapper's job.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Dict, List, Optional, Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.data.datasets import register_coco_instances

logger = logging.getLogger(__name__)

__all__ = [
    "DatasetError",
    "register_coco_dataset",
    "ensure_dataset",
    "get_coco_dataset_dicts",
    "dataset_thing_classes",
]

_COCO_KEYS = ("images", "annotations", "categories")


class DatasetError(ValueError):
    """A dataset that cannot be used; the message is one line."""


def single_line(text: str) -> str:
    """text with every run of whitespace (newlines included) as one space: a message of one line."""
    return " ".join(str(text).split())


def check_coco_json(json_file: str, name: str = "") -> None:
    """Raises DatasetError unless json_file exists and is a COCO instances file.

    The whole file is parsed here only when it is small (< 64 MB); big files (COCO train is
    ~450 MB) are only checked to exist, and parse errors surface from `get_coco_dataset_dicts`.
    """
    label = f"dataset '{name}': " if name else ""
    if not json_file:
        raise DatasetError(f"{label}no COCO json file given (set json_file=...)")
    if not os.path.isfile(json_file):
        hint = (
            " (set DETECTRON2_DATASETS to the folder that holds coco/, or pass json_file=... image_root=...)"
            if name.startswith(("coco_", "keypoints_coco_"))
            else ""
        )
        raise DatasetError(f"{label}COCO json not found: {json_file}{hint}")
    if os.path.getsize(json_file) > 64 * 2 ** 20:
        return
    try:
        with open(json_file, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{label}malformed COCO json {json_file}: {single_line(e)}") from None
    if not isinstance(data, dict):
        raise DatasetError(
            f"{label}malformed COCO json {json_file}: top level is a {type(data).__name__}, "
            f"expected an object with {list(_COCO_KEYS)}"
        )
    missing = [k for k in _COCO_KEYS if not isinstance(data.get(k), list)]
    if missing:
        raise DatasetError(f"{label}malformed COCO json {json_file}: missing or non-list keys {missing}")
    _check_entries(data, f"{label}COCO json {json_file}")


_REQUIRED = {
    "images": ("id", "file_name", "height", "width"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


def _check_entries(data: dict, where: str) -> None:
    """Required fields of every entry, 4-number boxes, category ids that exist; one line each."""
    for section, fields in _REQUIRED.items():
        for i, entry in enumerate(data[section]):
            lacking = [f for f in fields if not isinstance(entry, dict) or f not in entry]
            if lacking:
                ident = entry.get("id", f"#{i}") if isinstance(entry, dict) else f"#{i}"
                n = sum(1 for e in data[section] if not isinstance(e, dict) or any(f not in e for f in fields))
                raise DatasetError(
                    f"{where}: {n} {section} entries lack required fields, e.g. {section[:-1]} {ident} "
                    f"has no {lacking}; every {section[:-1]} needs {list(fields)}")
    cat_ids = {c["id"] for c in data["categories"]}
    for a in data["annotations"]:
        box = a["bbox"]
        if not (isinstance(box, (list, tuple)) and len(box) == 4
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
            raise DatasetError(f"{where}: annotation {a['id']} has bbox {box!r}; a bbox is 4 finite numbers "
                               "[x, y, width, height]")
        if a["category_id"] not in cat_ids:
            raise DatasetError(
                f"{where}: annotation {a['id']} (image {a['image_id']}) has category_id {a['category_id']}, "
                f"which is not among the categories' ids {sorted(cat_ids)[:10]}; fix the annotation or add "
                "the category")


def register_coco_dataset(name: str, json_file: str, image_root: str, *, check: bool = True) -> str:
    """Registers a COCO instances json + image folder under `name` (idempotent for equal paths)."""
    if not isinstance(name, str) or not name:
        raise DatasetError(f"dataset name must be a non-empty string, got {name!r}")
    if check:
        check_coco_json(json_file, name)
        if not image_root or not os.path.isdir(image_root):
            raise DatasetError(f"dataset '{name}': image folder not found: {image_root}")
    if name in DatasetCatalog.list():
        old = getattr(MetadataCatalog.get(name), "json_file", None)
        if old is not None and os.path.abspath(old) == os.path.abspath(json_file):
            return name
        raise DatasetError(
            f"dataset '{name}' is already registered with json {old}; pick another name for {json_file}"
        )
    register_coco_instances(name, {}, json_file, image_root)
    return name


def ensure_dataset(name: str, json_file: Optional[str] = None, image_root: Optional[str] = None) -> str:
    """Makes sure `name` can be loaded: registers it when json_file is given, else checks that it
    is registered and, for COCO-style entries, that its json exists. Returns the name."""
    if json_file:
        return register_coco_dataset(name, json_file, image_root or "")
    if name not in DatasetCatalog.list():
        known = sorted(n for n in DatasetCatalog.list() if n.startswith("coco_20"))
        raise DatasetError(
            f"unknown dataset '{name}': it is not registered; pass json_file=... image_root=... to "
            f"register a COCO-format dataset under this name, or use a built-in one such as "
            f"{', '.join(known[:4])} ({len(DatasetCatalog.list())} registered)"
        )
    meta_json = getattr(MetadataCatalog.get(name), "json_file", None)
    if meta_json is not None:
        check_coco_json(meta_json, name)
    return name


def get_coco_dataset_dicts(
    names: Union[str, Sequence[str]],
    json_file: Optional[str] = None,
    image_root: Optional[str] = None,
    filter_empty: bool = True,
) -> List[Dict]:
    """detectron2's `get_detection_dataset_dicts` with validation and one-line errors.

    Args:
        names: a dataset name or a list of names (registered, or registered here from json_file).
        json_file, image_root: a COCO instances json and its image folder, registered as `names`
            (which must then be a single name).
        filter_empty: drop images without (non-crowd) annotations (training).
    """
    name_list = [names] if isinstance(names, str) else list(names)
    if not name_list:
        raise DatasetError("no dataset names given")
    if json_file and len(name_list) != 1:
        raise DatasetError(f"json_file={json_file} needs exactly one dataset name, got {name_list}")
    for name in name_list:
        ensure_dataset(name, json_file, image_root)
    try:
        dicts = get_detection_dataset_dicts(name_list, filter_empty=filter_empty)
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError, FileNotFoundError) as e:
        files = [getattr(MetadataCatalog.get(n), "json_file", n) for n in name_list]
        raise DatasetError(
            f"cannot load dataset {name_list} from {files}: {type(e).__name__}: {single_line(e)}"
        ) from None
    dicts = _drop_absent_images(dicts, name_list)
    dicts = _drop_empty_boxes(dicts, name_list, filter_empty)
    if not dicts:
        raise DatasetError(f"dataset {name_list} has no usable images (filter_empty={filter_empty})")
    return dicts


def _drop_absent_images(dicts: List[Dict], names: List[str]) -> List[Dict]:
    """Images whose file does not exist are dropped with one warning (all absent: an error)."""
    absent = [d["file_name"] for d in dicts if not os.path.isfile(d["file_name"])]
    if not absent:
        return dicts
    if len(absent) == len(dicts):
        raise DatasetError(f"dataset {names}: none of its {len(dicts)} image files exist (e.g. {absent[0]}); "
                           "check image_root")
    logger.warning("dataset %s: skipped %d of %d images whose file is absent (e.g. %s); restore them or "
                   "remove them from the json", names, len(absent), len(dicts), absent[0])
    gone = set(absent)
    return [d for d in dicts if d["file_name"] not in gone]


def _drop_empty_boxes(dicts: List[Dict], names: List[str], filter_empty: bool) -> List[Dict]:
    """Annotations whose box has no area (w or h <= 0) would give NaN box-regression targets;
    they are dropped with one warning, and images left without annotations follow filter_empty."""
    from detectron2.structures import BoxMode

    dropped, example, out = 0, None, []
    for d in dicts:
        anns = d.get("annotations")
        if anns:
            keep = []
            for a in anns:
                x0, y0, x1, y1 = BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
                if x1 - x0 > 0 and y1 - y0 > 0:
                    keep.append(a)
                else:
                    dropped += 1
                    example = example or os.path.basename(d["file_name"])
            if len(keep) != len(anns):
                d = dict(d, annotations=keep)
                if filter_empty and not any(not a.get("iscrowd", 0) for a in keep):
                    continue
        out.append(d)
    if dropped:
        logger.warning("dataset %s: skipped %d annotations with an empty box (width or height <= 0; e.g. "
                       "in %s)", names, dropped, example)
    return out


def dataset_thing_classes(name: str) -> Optional[List[str]]:
    """Class names of a registered dataset (loads it if its metadata has none yet)."""
    meta = MetadataCatalog.get(name)
    if not hasattr(meta, "thing_classes"):
        DatasetCatalog.get(name)  # load_coco_json fills the metadata
    return list(getattr(meta, "thing_classes", []) or []) or None
