"""Reduced-DCT decoding for RandomResizedCrop (data.decode=draft): the same crop box as the full
decode for the same seed, pixels close to it, JPEGs actually decoded smaller, unreadable files
skipped as in the PIL path."""
import numpy as np
import pytest
import torch
from PIL import Image

from greenmim.data.fast_decode import DraftRandomResizedCrop
from greenmim.data.folder import ImageFolderDataset
from greenmim.data.transforms import build_pretrain_transform


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    for i in range(4):  # smooth images: reduced decoding changes them little
        base = np.stack([np.sin(xx / (40 + 9 * i)), np.cos(yy / 50), np.sin((xx + yy) / 70)], -1)
        img = ((base + 1) * 120 + rng.normal(0, 2, base.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / f"{i}.jpg", quality=92)
    return tmp_path


def test_draft_crop_matches_full_decode(folder):
    full = ImageFolderDataset(str(folder), build_pretrain_transform(224))
    draft = ImageFolderDataset(str(folder), build_pretrain_transform(224, decode="draft"))
    for i in range(4):
        torch.manual_seed(i)
        a = full[i]
        torch.manual_seed(i)
        b = draft[i]
        assert a.shape == b.shape == (3, 224, 224)
        assert (a - b).abs().mean() < 0.08  # normalised units: the same crop, barely different pixels


def test_large_crops_decode_at_a_reduced_scale(folder, monkeypatch):
    sizes = []
    real_load = Image.Image.load

    def load(self):
        out = real_load(self)
        sizes.append(self.size)
        return out

    monkeypatch.setattr(Image.Image, "load", load)
    crop = DraftRandomResizedCrop(64, scale=(0.9, 1.0))
    torch.manual_seed(0)
    out = crop(str(folder / "0.jpg"))
    assert out.size == (64, 64)
    assert sizes and sizes[-1][0] <= 640 // 2  # a ~450 px crop for a 64 px output: decoded at 1/4


def test_unreadable_file_is_skipped_with_draft_decoding(folder):
    (folder / "bad.jpg").write_bytes(b"not a jpeg")
    ds = ImageFolderDataset(str(folder), build_pretrain_transform(64, decode="draft"))
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        items = [ds[i] for i in range(len(ds))]
    assert all(x.shape == (3, 64, 64) for x in items) and ds.num_skipped == 1
