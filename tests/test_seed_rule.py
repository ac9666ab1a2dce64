"""Pinned seeds, crops, masks and sample orders: a resumed run of an older checkpoint must draw the
same ones, so the numbers below were recorded from the code that wrote such checkpoints and must
not change when the seed rule moves or is shared."""
import hashlib
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from greenmim.data.transforms import build_pretrain_transform
from greenmim.engine.data import SeededDataset, StepBatchSampler, sample_seed
from greenmim.engine.mask_collate import MaskCollator, mask_seed
from greenmim.engine.train import step_seed


def test_seed_values_are_pinned():
    keys = [(0, 0, 0), (3, 2, 5), (7, 11, 1281166)]
    assert [sample_seed(*k) for k in keys] == [0, 15841522668, 87120155784]
    assert [mask_seed(*k) for k in keys] == [7, 203025892481, 1091426550023]
    assert [step_seed(s, t, r) for s, t, r in [(0, 0, 0), (3, 250, 1), (7, 400000, 7)]] == [
        12345, 19404523, 26221867799]


def test_crop_boxes_and_flips_are_pinned():
    """torchvision's RandomResizedCrop.get_params then one torch.rand for the flip, under the
    sample's seed: the draw every decoding path makes."""
    got = []
    for (e, i), (w, h) in [((0, 0), (500, 375)), ((1, 7), (375, 500)), ((9, 123456), (640, 480))]:
        torch.manual_seed(sample_seed(3, e, i))
        box = T.RandomResizedCrop.get_params(Image.new("RGB", (w, h)), [0.2, 1.0], [3 / 4, 4 / 3])
        got.append((tuple(box), bool(torch.rand(1) < 0.5)))
    assert got == [((154, 184, 216, 263), False), ((181, 120, 277, 253), True),
                   ((14, 24, 462, 553), False)]


def _image(w: int, h: int, k: int) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 255 // w, yy * 255 // h, (xx * 7 + yy * 3 + 40 * k) % 256], -1)
    return Image.fromarray(a.astype(np.uint8))


class _Images(torch.utils.data.Dataset):
    def __init__(self, transform):
        self.transform = transform
        self.images = [_image(500, 375, 0), _image(375, 500, 1), _image(640, 480, 2)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i])


@pytest.mark.parametrize("key,want", [
    ((0, 0), (8626.4482, 322347.125, 327903.781)),
    ((0, 1), (1855.2021, 134304.016, 121394.875)),
    ((2, 2), (-1059.3254, 22081.697, 56338.828)),
    ((5, 0), (5116.6797, 230832.797, 255585.031)),
])
def test_augmented_pixels_are_pinned(key, want):
    x = SeededDataset(_Images(build_pretrain_transform(64)), seed=3)[key]
    w = torch.arange(64.0)
    # the sum pins the crop's content, the column / row moments its position and the flip
    got = (float(x.sum()), float((x * w).sum()), float((x * w[:, None]).sum()))
    assert got == pytest.approx(want, rel=1e-5, abs=1e-2)


def _digest(mask: torch.Tensor) -> str:
    return hashlib.sha1(np.packbits(mask.numpy()).tobytes()).hexdigest()[:16]


def test_masks_are_pinned():
    per_sample = MaskCollator(224, 0.75, shared=False, seed=3).masks([(0, 0), (0, 5), (4, 9)])
    shared = MaskCollator(224, 0.75, shared=True, seed=3).masks([(1, 2), (1, 8)])
    assert _digest(per_sample) == "cfad05bd672dd3c8"
    assert _digest(shared) == "2e4a474de1fd21ee"


def test_sample_order_is_pinned():
    sampler = StepBatchSampler(20, 2, world_size=2, rank=1, seed=5)
    sampler.set_epoch(3)
    assert list(sampler)[:3] == [[(3, 16), (3, 4)], [(3, 1), (3, 11)], [(3, 2), (3, 12)]]


def test_fine_tuning_subset_and_augmentation_draws_are_pinned(tmp_path):
    from greenmim.data.classification import LabelledImageFolder, SeededLabelledDataset
    for c in "ab":
        os.makedirs(tmp_path / "train" / c)
        for i in range(5):
            Image.new("RGB", (8, 8)).save(tmp_path / "train" / c / f"{i}.png")

    def draws(_img):  # timm's augmentations draw from all three generators
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    ds = LabelledImageFolder(str(tmp_path / "train"), draws)
    ds.keep_fraction(0.4, seed=3)
    assert [os.path.relpath(p, tmp_path) for p in ds.samples] == [
        os.path.join("train", *p) for p in (("a", "2.png"), ("a", "4.png"), ("b", "0.png"), ("b", "3.png"))]
    got, label = SeededLabelledDataset(ds, seed=3)[(2, 1)]
    assert label == 0
    assert got == pytest.approx((0.31662791594998263, 0.21128568201497266, 0.08913540840148926), abs=1e-12)


def test_one_home_below_the_engine():
    import subprocess
    import sys
    code = ("import sys, greenmim.data.classification, greenmim.data.seeds; "
            "print([m for m in sys.modules if m.startswith('greenmim.engine')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # the data floor does not reach up into the engine
    from greenmim.data import seeds
    from greenmim.engine import data, mask_collate, train
    assert data.SeededDataset is seeds.SeededDataset and data.sample_seed is seeds.sample_seed
    assert mask_collate.mask_seed is seeds.mask_seed and train.step_seed is seeds.step_seed
    with pytest.raises(TypeError, match="takes 2 keys"):
        seeds.seed_of(seeds.SAMPLE, 0, 1)


def test_seeding_a_sample_leaves_the_cuda_generators_alone(monkeypatch):
    """A main process that reads an item mid-run (figures, device-path replacements) must not
    reseed the generators the training step draws from on the GPU."""
    def no(*_):
        raise AssertionError("a sample's seed reached the CUDA generators")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", no)
    monkeypatch.setattr(torch.cuda, "manual_seed", no)
    x = SeededDataset(_Images(build_pretrain_transform(64)), seed=3)[(0, 0)]
    assert float(x.sum()) == pytest.approx(8626.4482, rel=1e-5)
