"""Data pipeline: synthetic COCO generator, pretraining image folders, transforms, the CLI."""
from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from greenmim.data.folder import ImageFolderDataset, load_rgb
from greenmim.data.synthetic import CATEGORIES, generate_synthetic_coco, render_image
from greenmim.data.transforms import build_pretrain_transform

from conftest import load_tool

SMALL = dict(num_train=6, num_val=3, img_size=128, seed=3)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    return generate_synthetic_coco(str(tmp_path_factory.mktemp("synth") / "ds"), **SMALL)


def _coco(path):
    from pycocotools.coco import COCO
    coco = COCO.__new__(COCO)  # COCO(path) prints to stdout; build it quietly instead
    coco.__init__()
    with open(path) as f:
        coco.dataset = json.load(f)
    coco.createIndex()
    return coco


# --------------------------------------------------------------------------- synthetic COCO

def test_synthetic_deterministic(small_dataset, tmp_path):
    again = generate_synthetic_coco(str(tmp_path / "again"), **SMALL)
    for key in ("train_json", "val_json"):
        with open(small_dataset[key]) as a, open(again[key]) as b:
            assert json.load(a) == json.load(b)
    for split in ("train_images", "val_images"):
        names = sorted(os.listdir(small_dataset[split]))
        assert names == sorted(os.listdir(again[split])) and names
        for n in names:
            a = np.asarray(Image.open(os.path.join(small_dataset[split], n)))
            b = np.asarray(Image.open(os.path.join(again[split], n)))
            assert np.array_equal(a, b), n
    other = render_image(np.random.default_rng([4, 0, 0]), 128)[0]
    first = np.asarray(Image.open(os.path.join(small_dataset["train_images"], "000000.jpg")))
    assert np.abs(other.astype(int) - first.astype(int)).mean() > 10  # another seed differs


def test_synthetic_coco_valid(small_dataset):
    from pycocotools import mask as mask_utils
    for split, num in (("train", SMALL["num_train"]), ("val", SMALL["num_val"])):
        coco = _coco(small_dataset[f"{split}_json"])
        assert sorted(coco.getCatIds()) == list(range(1, len(CATEGORIES) + 1))
        assert len(coco.getImgIds()) == num
        assert len(coco.getAnnIds()) >= 2 * num  # several instances per image
        for ann in coco.loadAnns(coco.getAnnIds()):
            img = coco.imgs[ann["image_id"]]
            assert os.path.isfile(os.path.join(small_dataset[f"{split}_images"], img["file_name"]))
            x, y, w, h = ann["bbox"]
            assert ann["area"] > 0 and ann["iscrowd"] == 0 and w > 0 and h > 0
            assert x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
            m = coco.annToMask(ann)
            # the polygons reproduce the visible mask: same area and box within a pixel
            assert abs(int(m.sum()) - ann["area"]) <= 0.1 * ann["area"] + 4
            bx, by, bw, bh = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m)))
            assert max(abs(bx - x), abs(by - y), abs(bx + bw - x - w), abs(by + bh - y - h)) <= 1


def test_visible_masks_do_not_overlap(small_dataset):
    coco = _coco(small_dataset["train_json"])
    occluded_pairs = 0
    for img_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        masks = [coco.annToMask(a).astype(bool) for a in anns]
        for (a, ma), (b, mb) in itertools.combinations(zip(anns, masks), 2):
            # visible parts are disjoint up to the polygon's sub-pixel boundary
            assert (ma & mb).sum() <= 0.03 * min(ma.sum(), mb.sum()) + 3
            ax, ay, aw, ah = a["bbox"]
            bx, by, bw, bh = b["bbox"]
            occluded_pairs += ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah
    assert occluded_pairs > 0  # the check above is only meaningful if objects do overlap


def test_occlusion_bookkeeping_is_exact():
    # pixel-exact invariants of the z-order logic: visible parts are disjoint, every painted
    # pixel belongs to exactly the topmost object covering it, and the top object is whole
    from greenmim.data import synthetic as S
    rng = np.random.default_rng(7)
    objs = []
    for _ in range(8):
        o = S._place(rng, (128, 128), objs, min_area=48)
        if o is not None:
            objs.append(o)
    assert len(objs) >= 3
    covered = np.zeros((128, 128), bool)
    for o in reversed(objs):  # front to back
        assert np.array_equal(o.visible, o.mask & ~covered)
        assert o.visible.sum() >= 0.5 * o.mask.sum()  # nobody is mostly hidden
        covered |= o.mask
    image, anns = S.render_image(np.random.default_rng(7), 128)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    assert anns and all(1 <= a["category_id"] <= len(CATEGORIES) for a in anns)


def test_synthetic_reuse_and_resume(small_dataset, tmp_path):
    done = os.path.join(small_dataset["root"], "DONE")
    stamp = os.path.getmtime(done)
    generate_synthetic_coco(small_dataset["root"], **SMALL)
    assert os.path.getmtime(done) == stamp  # reused, not rewritten

    out = tmp_path / "partial"
    paths = generate_synthetic_coco(str(out), num_train=2, num_val=1, img_size=64, seed=0)
    os.remove(out / "DONE")
    (out / "IN_PROGRESS").write_text("{}")  # as a crashed run leaves it
    os.remove(paths["val_json"])
    generate_synthetic_coco(str(out), num_train=2, num_val=1, img_size=64, seed=0)
    assert (out / "DONE").exists() and not (out / "IN_PROGRESS").exists()
    assert os.path.exists(paths["val_json"])

    foreign = tmp_path / "foreign"
    (foreign / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="not written by this generator"):
        generate_synthetic_coco(str(foreign), num_train=2, num_val=1, img_size=64)
    with pytest.raises(ValueError, match="multiple of 32"):
        generate_synthetic_coco(str(tmp_path / "bad"), img_size=100)
    assert not (tmp_path / "bad").exists()


def test_cli(tmp_path, capsys):
    cli = load_tool("make_synthetic_coco")
    out = str(tmp_path / "cli")
    assert cli.main(["--out", out, "--num-train", "2", "--num-val", "1", "--img-size", "64"]) == 0
    text = capsys.readouterr().out
    assert out in text and "instances" in text
    assert cli.main(["--out", out, "--img-size", "100"]) == 2


# --------------------------------------------------------------------------- image folders

def _save(path, arr=None, mode="RGB", size=(40, 30), **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if arr is None:
        arr = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path, **kw)


def test_folder_flat_and_class_layouts(tmp_path):
    flat = tmp_path / "flat"
    for i, ext in enumerate(("jpg", "png", "bmp", "webp", "tif")):
        _save(str(flat / f"{i}.{ext}"))
    (flat / "notes.txt").write_text("not an image")
    tf = build_pretrain_transform(64)
    ds = ImageFolderDataset(str(flat), tf)
    assert len(ds) == 5
    x = ds[0]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 64, 64) and x.dtype == torch.float32

    classes = tmp_path / "classes"
    for c in ("a", "b"):
        for i in range(2):
            _save(str(classes / c / f"{i}.JPEG"))
    assert len(ImageFolderDataset(str(classes), tf)) == 4

    imagenet = tmp_path / "imagenet"
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            _save(str(imagenet / split / "n01" / f"{i}.jpeg"))
    ds = ImageFolderDataset(str(imagenet), tf)
    assert len(ds) == 3 and all(os.sep + "train" + os.sep in p for p in ds.samples)


def test_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=str(tmp_path / "empty")):
        ImageFolderDataset(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolderDataset(str(tmp_path / "missing"))


def test_corrupt_image_skipped_and_strict(tmp_path):
    root = tmp_path / "imgs"
    _save(str(root / "a.png"))
    (root / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    _save(str(root / "c.png"))
    ds = ImageFolderDataset(str(root), build_pretrain_transform(32))
    with pytest.warns(UserWarning, match="b.jpg"):
        x = ds[1]  # replaced by the next readable image, c.png
    assert x.shape == (3, 32, 32) and ds.num_skipped == 1
    ds[1]
    assert ds.num_skipped == 1  # counted once per file

    plain = ImageFolderDataset(str(root))  # no transform: the PIL image itself
    with pytest.warns(UserWarning):
        img = plain[1]
    assert np.array_equal(np.asarray(img), np.asarray(load_rgb(str(root / "c.png"))))
    with pytest.raises(ValueError, match="b.jpg"):
        ImageFolderDataset(str(root), strict=True)[1]


@pytest.mark.parametrize("kind", ["gray", "cmyk", "palette", "rgba", "gray16", "la"])
def test_image_modes_become_rgb(tmp_path, kind):
    rgb = np.random.default_rng(1).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    path = str(tmp_path / ("x.tif" if kind == "cmyk" else "x.png"))
    if kind == "gray16":
        # a mid-grey 16-bit image must come out mid-grey, not clipped to white
        Image.fromarray(np.full((50, 60), 32768, np.uint16)).save(path)
    else:
        mode = {"gray": "L", "cmyk": "CMYK", "palette": "P", "rgba": "RGBA", "la": "LA"}[kind]
        Image.fromarray(rgb).convert(mode).save(path)
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (60, 50)
    if kind == "gray16":
        assert abs(np.asarray(img).astype(int) - 128).max() <= 1
    x = ImageFolderDataset(str(tmp_path), build_pretrain_transform(224))[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_pretrain_transform_normalises():
    torch.manual_seed(0)
    white = Image.fromarray(np.full((80, 100, 3), 255, np.uint8))
    x = build_pretrain_transform(64, scale=(0.5, 1.0))(white)
    mean = torch.tensor([0.485, 0.456, 0.406])
    std = torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(x[:, 0, 0], (1 - mean) / std, atol=1e-4)


def test_config_reads_exponent_floats_as_numbers():
    """PyYAML (YAML 1.1) would read `5e-3` as a string; configs and overrides must not."""
    from greenmim.config import load_config, parse_override

    assert parse_override("train.blr=5e-3") == {"train": {"blr": 0.005}}
    assert load_config(None, ["train.blr=1e-4"])["train"]["blr"] == 1e-4
