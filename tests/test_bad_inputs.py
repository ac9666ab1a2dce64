"""A clear answer to every bad input: one error line naming the input and the fix, or a counted
skip where skipping is the documented behaviour. Table-driven: each table row is one input.

Covered elsewhere (not repeated here): empty / missing image folder and unknown pretraining config
key (test_pretrain.py, test_data.py), palette / RGBA / LA images (test_data.py), a checkpoint of
another Swin architecture into a detector (test_detection.py), missing / malformed COCO json and
unknown dataset name (test_detection.py), pickled code in checkpoints (test_untrusted_checkpoints.py),
NaN / disk full / killed runs (test_faults_*.py).
"""
from __future__ import annotations

import io
import json
import logging
import uuid
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from greenmim.data.folder import ImageFolderDataset, UnreadableImageError, load_rgb
from greenmim.data.transforms import build_pretrain_transform
from greenmim.engine.pretrain import main as pretrain_main

from test_pretrain import TINY_CFG, tiny_overrides

pytest.importorskip("detectron2")

from greenmim_det import CheckpointError, DatasetError, GreenCheckpointer  # noqa: E402
from greenmim_det.data import get_coco_dataset_dicts  # noqa: E402
from greenmim_det.mapper import GreenDatasetMapper, read_image_any  # noqa: E402

from conftest import load_tool  # noqa: E402
from test_detection import T1X, TINY, _tiny_detector  # noqa: E402


def _rgb(h=40, w=50, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------- image files
# case -> (file name, content: bytes, a PIL image, or None = the file does not exist, outcome)
# "ok": read as 8-bit RGB; "skip": skipped with a warning naming the file and counted (strict, or
# evaluation in detectron2: one error line naming it)
IMAGES = {
    "corrupt_jpeg": ("a.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 2, "skip"),
    "truncated_png": ("a.png", _png(Image.fromarray(_rgb()))[:300], "skip"),
    "not_an_image": ("a.png", b"this is a text file, not a picture\n", "skip"),
    "very_large": ("a.png", Image.fromarray(_rgb(120, 120)), "skip"),  # over PIL's (lowered) pixel limit
    "one_pixel": ("a.png", Image.fromarray(_rgb(1, 1)), "ok"),
    "grayscale": ("a.png", Image.fromarray(_rgb()).convert("L"), "ok"),
    "cmyk": ("a.jpg", Image.fromarray(_rgb()).convert("CMYK"), "ok"),
    "png16": ("a.png", Image.fromarray(np.full((40, 50), 32768, np.uint16)), "ok"),
}
# detectron2 reads files named by the json: two more ways for them to be wrong
MAPPER_ONLY = {
    "absent": ("gone.png", None, "skip"),
    "size_differs_from_json": ("a.png", Image.fromarray(_rgb(30, 30)), "skip"),  # json: 40x50
}


def _write_case(folder, case, monkeypatch):
    name, content, outcome = {**IMAGES, **MAPPER_ONLY}[case]
    folder.mkdir(exist_ok=True)
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        content.save(path)
    Image.fromarray(_rgb(seed=1)).save(folder / "z.png")  # a readable neighbour
    if case == "very_large":  # a decompression bomb, without allocating gigabytes
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    return str(path), outcome


@pytest.mark.parametrize("case", sorted(IMAGES))
def test_pretraining_image_folder(case, tmp_path, monkeypatch):
    path, outcome = _write_case(tmp_path / "imgs", case, monkeypatch)
    ds = ImageFolderDataset(str(tmp_path / "imgs"), build_pretrain_transform(64))
    i = ds.samples.index(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = ds[i]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and torch.isfinite(x).all()
    if outcome == "ok":
        assert ds.num_skipped == 0 and not caught
        return
    assert ds.num_skipped == 1 and len(caught) == 1
    assert path in str(caught[0].message) and "skipping unreadable image" in str(caught[0].message)
    with pytest.raises(UnreadableImageError) as err:
        ImageFolderDataset(str(tmp_path / "imgs"), strict=True)[i]
    assert path in str(err.value) and "data.strict=false" in str(err.value) and "\n" not in str(err.value)


def _record(path, h=40, w=50):
    from detectron2.structures import BoxMode
    return {"file_name": path, "height": h, "width": w, "image_id": 1, "annotations": [
        {"bbox": [0, 0, w, h], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0,
         "segmentation": [[0, 0, w, 0, w, h, 0, h]]}]}


def _mapper(is_train):
    from detectron2.data import transforms as T
    return GreenDatasetMapper(is_train=is_train, augmentations=[T.ResizeShortestEdge(64, 64)],
                              image_format="BGR", use_instance_mask=True)


@pytest.mark.parametrize("case", sorted(IMAGES) + sorted(MAPPER_ONLY))
def test_detectron2_mapper(case, tmp_path, monkeypatch, caplog):
    path, outcome = _write_case(tmp_path / "imgs", case, monkeypatch)
    record = _record(path, 1, 1) if case == "one_pixel" else _record(path)
    if outcome == "ok":
        out = _mapper(True)(record)
        assert out["image"].dtype == torch.uint8 and out["image"].shape[0] == 3 and len(out["instances"]) == 1
        return
    mapper = _mapper(True)
    with caplog.at_level(logging.WARNING, logger="greenmim_det.mapper"):
        assert mapper(record) is None  # detectron2's MapDataset then draws another image
    assert mapper.skipped == 1
    assert any(path in r.getMessage() and "skipping unreadable image" in r.getMessage() for r in caplog.records)
    with pytest.raises(DatasetError) as err:  # evaluation needs every image
        _mapper(False)(record)
    assert path in str(err.value) and "\n" not in str(err.value)


def test_detectron2_mapper_stops_when_no_image_can_be_read(tmp_path, monkeypatch):
    # detectron2's MapDataset would retry other images forever: the mapper ends that, in one line
    monkeypatch.setattr(GreenDatasetMapper, "MAX_CONSECUTIVE_FAILURES", 3)
    mapper = _mapper(True)
    assert mapper(_record(str(tmp_path / "gone1.png"))) is None
    assert mapper(_record(str(tmp_path / "gone2.png"))) is None
    with pytest.raises(DatasetError, match="3 images in a row could not be read .*check image_root"):
        mapper(_record(str(tmp_path / "gone3.png")))


def test_sixteen_bit_images_keep_their_grey_level(tmp_path):
    path = str(tmp_path / "g.png")
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(path)
    assert abs(int(np.asarray(load_rgb(path))[0, 0, 0]) - 128) <= 1
    assert abs(int(read_image_any(path, "BGR")[0, 0, 0]) - 128) <= 1  # plain PIL convert: 255


def test_a_folder_of_only_unreadable_images_is_one_error_line(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "x.jpg").write_bytes(b"not an image")
    # raised inside a DataLoader worker: still one line, not the worker's traceback
    code = pretrain_main(["--config", TINY_CFG, *tiny_overrides(str(tmp_path / "o"), f"data.path={folder}",
                                                                "data.num_workers=1", "train.batch_size=1")])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "error" in line.lower()]
    assert code == 2 and len(err) == 1 and err[0].startswith("error: none of the 1 image files"), err


# ------------------------------------------------------------------------- COCO json
def _box_ann(i, image_id=1, cat=1, bbox=(4, 4, 20, 20)):
    x, y, w, h = bbox
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": list(bbox), "area": w * h, "iscrowd": 0,
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


# case -> (edit of the json dict, expected: error text, or ("skip", annotations kept, images kept))
COCO = {
    "annotation_without_bbox": (lambda d: d["annotations"][0].pop("bbox"), "lack required fields"),
    "image_without_file_name": (lambda d: d["images"][0].pop("file_name"), "lack required fields"),
    "bbox_of_three_numbers": (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "4 finite numbers"),
    "unknown_category_id": (lambda d: d["annotations"][0].update(category_id=99), "category_id 99"),
    "broken_polygon": (lambda d: d["annotations"][2].update(segmentation=[[1, 2, 3, 4]]), ("skip", 2, 2)),
    "zero_area_box": (lambda d: d["annotations"][2].update(bbox=[5, 5, 0, 10]), ("skip", 2, 2)),
    "image_file_absent": (lambda d: d["images"][1].update(file_name="missing.png"), ("skip", 1, 1)),
}


@pytest.fixture(scope="module")
def coco_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    for i in (1, 2):
        Image.fromarray(_rgb(64, 64, seed=i)).save(root / f"{i}.png")
    data = {"images": [{"id": i, "file_name": f"{i}.png", "height": 64, "width": 64} for i in (1, 2)],
            "annotations": [_box_ann(1, 1), _box_ann(2, 2), _box_ann(3, 2, bbox=(30, 30, 10, 10))],
            "categories": [{"id": 1, "name": "thing"}]}
    return root, data


@pytest.mark.parametrize("case", sorted(COCO))
def test_coco_json(case, coco_base, tmp_path, caplog):
    root, base = coco_base
    edit, expected = COCO[case]
    data = json.loads(json.dumps(base))
    edit(data)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    name = f"bad_{case}_{uuid.uuid4().hex[:6]}"
    if isinstance(expected, str):
        with pytest.raises(DatasetError) as err:
            get_coco_dataset_dicts(name, json_file=str(path), image_root=str(root))
        msg = str(err.value)
        assert expected in msg and str(path) in msg and "\n" not in msg
        return
    with caplog.at_level(logging.WARNING):
        dicts = get_coco_dataset_dicts(name, json_file=str(path), image_root=str(root))
    _, n_anns, n_images = expected
    assert len(dicts) == n_images and sum(len(d["annotations"]) for d in dicts) == n_anns
    if case != "broken_polygon":  # that one is counted by detectron2's own loader warning
        assert any("skipped 1" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------- checkpoints
def _file(tmp_path, kind):
    path = tmp_path / f"{kind}.pth"
    if kind == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "truncated":
        buf = io.BytesIO()
        torch.save({"model": {"w": torch.zeros(1000)}}, buf)
        path.write_bytes(buf.getvalue()[:700])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "not_training":  # a valid file, but an encoder export, not a training checkpoint
        torch.save({"model": {"patch_embed.proj.weight": torch.zeros(16, 3, 4, 4)}}, path)
    elif kind == "other_arch":  # a training checkpoint of swin_base
        torch.save({"model": {}, "optimizer": {}, "state": {"step": 1, "epoch": 0, "epoch_step": 1}, "rng": {},
                    "config": {"model": {"type": "green", "arch": "swin_base", "encoder": {}}}}, path)
    return str(path)


CHECKPOINTS = {  # (loader, file kind) -> expected text in the one error line
    ("resume", "garbage"): "not a PyTorch file", ("resume", "truncated"): "truncated",
    ("resume", "empty"): "truncated", ("resume", "not_training"): "not a GreenMIM training checkpoint",
    ("resume", "other_arch"): "of another architecture",
    ("export_encoder", "garbage"): "not a PyTorch file", ("export_encoder", "not_training"): "not a GreenMIM",
    ("convert_checkpoint", "truncated"): "truncated", ("convert_checkpoint", "other_arch"): "is not a state dict",
    ("detectron2", "garbage"): "not a PyTorch file", ("detectron2", "empty"): "truncated",
    ("visualize_reconstruction", "garbage"): "not a PyTorch file",
    ("visualize_reconstruction", "not_training"): "not a GreenMIM training checkpoint",
}


@pytest.mark.parametrize("loader, kind", sorted(CHECKPOINTS))
def test_checkpoint_files(loader, kind, tmp_path, capsys):
    path = _file(tmp_path, kind)
    if loader == "detectron2":
        with pytest.raises(CheckpointError) as err:
            GreenCheckpointer(_tiny_detector(COCO_STUB)).load(path)
        msg = str(err.value)
    else:
        if loader == "resume":
            code = pretrain_main(["--config", TINY_CFG, *tiny_overrides(str(tmp_path / "o"), f"resume={path}")])
        elif loader == "visualize_reconstruction":
            code = load_tool(loader).main([path, "--out", str(tmp_path / "rec.png")])
        else:
            code = load_tool(loader).main([path, str(tmp_path / "out.pth")])
        lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("error")]
        assert code == 2 and len(lines) == 1
        msg = lines[0]
    assert path in msg and CHECKPOINTS[loader, kind] in msg and "\n" not in msg


COCO_STUB = {"train_json": "", "train_images": "", "val_json": "", "val_images": ""}


# ------------------------------------------------------------------------- config values and keys
@pytest.mark.parametrize("override, expected", [
    ("data.img_size=100", "data.img_size must be a positive multiple of 32"),
    ("data.img_size=0", "data.img_size must be a positive multiple of 32"),
    ("mask.ratio=1.0", "mask.ratio must be a number in [0, 1)"),
    ("mask.ratio=-0.1", "mask.ratio must be a number in [0, 1)"),
    ("mask.ratio=high", "mask.ratio must be a number in [0, 1)"),
    ("train.blr=fast", "train.blr must be a non-negative number"),
    ("dist_timeout_s=0", "dist_timeout_s must be a positive number"),
])
def test_pretraining_config_values(override, expected, tmp_path, capsys):
    code = pretrain_main(["--config", TINY_CFG, *tiny_overrides(str(tmp_path), override)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


@pytest.mark.parametrize("override, expected", [
    ("train.max_iters=5", "unknown config key 'train.max_iters' in the overrides; did you mean train.max_iter?"),
    ("model.backbone.bottom_up.embed_dims=16", "did you mean model.backbone.bottom_up.embed_dim?"),
    ("dataloader.train.mapper.augmentations.7.max_size=64", "is a list of 2 items"),
])
def test_detectron2_unknown_config_keys(override, expected, tmp_path):
    train_net = load_tool("train_net")
    args = train_net.parse_args(["--config-file", T1X, *TINY, "train.device=cpu",
                                 f"train.output_dir={tmp_path}", override])
    with pytest.raises(SystemExit) as err:
        train_net.main(args)
    assert str(err.value).startswith("error: ") and expected in str(err.value) and "\n" not in str(err.value)


def test_reconstruction_figure_mask_ratio_out_of_range(tmp_path, capsys):
    path = _file(tmp_path, "garbage")  # the ratio is checked before the file is read
    code = load_tool("visualize_reconstruction").main([path, "--mask-ratio", "1.5", "--out", str(tmp_path / "r.png")])
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("error")]
    assert code == 2 and len(lines) == 1 and "--mask-ratio must be in (0, 1), got 1.5" in lines[0]
