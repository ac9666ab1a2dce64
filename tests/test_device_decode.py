"""Decoding on the training device (data.decode=gpu), checked on the CPU: the same crop boxes and
flips as the CPU path for the same seeds, close pixels, resume exactness, bad files skipped or
refused as on the CPU path, and a device decode that fails falling back to PIL."""
import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from greenmim.config import DEFAULTS, ConfigError
from greenmim.data import crop as crop_module
from greenmim.data.device_decode import EncodeForDevice, jpeg_is_complete
from greenmim.data.device_loader import DeviceDecodingLoader, resolve_decode
from greenmim.data.folder import UnreadableImageError
from greenmim.data.seeds import sample_seed
from greenmim.engine.data import build_dataset, build_loader
from greenmim.engine.mask_collate import MaskCollator

SIZE = 64


def _photo(rng, w, h):
    """A smooth picture with some texture, JPEG-compressible like a photo."""
    yy, xx = np.mgrid[0:h, 0:w]
    f = rng.uniform(20, 60, 3)
    base = np.stack([np.sin(xx / f[0]), np.cos(yy / f[1]), np.sin((xx + yy) / f[2])], -1)
    return ((base + 1) * 110 + rng.normal(0, 6, base.shape)).clip(0, 255).astype(np.uint8)


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(200, 150), (150, 200), (240, 160), (160, 120), (180, 180), (220, 140)]):
        Image.fromarray(_photo(rng, w, h)).save(tmp_path / f"{i:02d}.jpg", quality=90)
    Image.fromarray(_photo(rng, 170, 130)).convert("L").save(tmp_path / "06.jpg", quality=90)
    Image.fromarray(_photo(rng, 190, 150)).save(tmp_path / "07.jpg", quality=90)
    return tmp_path


def _dataset(root, decode, strict=False, seed=3):
    cfg = {"seed": seed, "device": "cpu", "data": {**DEFAULTS["data"], "path": str(root), "img_size": SIZE,
                                                   "decode": decode, "strict": strict}}
    return build_dataset(cfg)


def _batches(root, decode, batch=4, workers=0, epoch=0, start_step=0, collate=None, strict=False, **kw):
    ds = _dataset(root, decode, strict)
    loader = build_loader(ds, batch, 1, 0, 1, seed=1, num_workers=workers, collate=collate, **kw)
    loader.batch_sampler.set_epoch(epoch, start_step)
    return ds, loader, list(loader)


def _keys(n, epoch):
    return [(epoch, i) for i in range(n)]


def test_crop_boxes_and_flips_equal_the_cpu_paths(folder, monkeypatch):
    seen = []
    real = crop_module.draw_crop

    def recording(*args, **kw):
        seen.append(real(*args, **kw))
        return seen[-1]

    monkeypatch.setattr(crop_module, "draw_crop", recording)
    monkeypatch.setattr("greenmim.data.fast_decode.draw_crop", recording)
    monkeypatch.setattr("greenmim.data.device_decode.draw_crop", recording)
    keys = _keys(8, 0) + _keys(8, 5)
    draws = {}
    for decode in ("pil", "draft", "gpu"):
        seen.clear()
        ds = _dataset(folder, decode)
        if decode == "gpu":  # the workers' half: what the loader's items carry
            from greenmim.data.device_loader import EncodedView
            view = EncodedView(ds, EncodeForDevice())
            items = [view[k] for k in keys]
            assert [it.crop for it in items] == seen
        else:
            for k in keys:
                ds[k]
        draws[decode] = list(seen)
    assert draws["pil"] == draws["draft"] == draws["gpu"] and len(draws["pil"]) == len(keys)
    # and they are torchvision's RandomResizedCrop + RandomHorizontalFlip draws under the seeds
    for (epoch, index), d in zip(keys, draws["gpu"]):
        w, h = Image.open(folder / f"{index:02d}.jpg").size
        torch.manual_seed(sample_seed(3, epoch, index))
        box = T.RandomResizedCrop.get_params(Image.new("L", (w, h)), [0.2, 1.0], [3 / 4, 4 / 3])
        assert (tuple(box), bool(torch.rand(1) < 0.5)) == (tuple(d[:4]), d.flip)
    assert any(d.flip for d in draws["gpu"]) and not all(d.flip for d in draws["gpu"])


def _agree(a, b):
    """Per-image mean |a - b| in normalised units (1 unit = one std, ~57 grey levels)."""
    return (a - b).abs().flatten(1).mean(1)


def test_device_path_images_agree_with_the_cpu_path(folder):
    """Same crops and flips, different resamplers: the CPU path resizes with PIL's antialiased
    bicubic filter and rounds to 8 bits; the device path uses torch's antialiased bilinear in
    float (on CUDA also nvJPEG's IDCT, off by a grey level or two). The images differ at edges
    only: per-image mean difference below 0.05 std (about 3 grey levels), while a wrong crop or
    flip gives 0.3 or more."""
    _, _, cpu = _batches(folder, "pil")
    _, _, dev = _batches(folder, "gpu")
    assert len(cpu) == len(dev) == 2
    for a, b in zip(cpu, dev):
        assert a.shape == b.shape == (4, 3, SIZE, SIZE) and b.dtype == torch.float32
        assert _agree(a, b).max() < 0.05
        assert _agree(a, b.flip(-1)).mean() > 0.3  # the check would see wrong flips


def test_resumed_and_multi_worker_loaders_draw_the_same_crops_and_masks(folder):
    collate = MaskCollator(SIZE, 0.5, shared=False, seed=3)
    _, _, whole = _batches(folder, "gpu", batch=2, epoch=1, collate=collate)
    _, _, resumed = _batches(folder, "gpu", batch=2, epoch=1, start_step=2, collate=collate)
    _, _, workers = _batches(folder, "gpu", batch=2, epoch=1, collate=collate, workers=2)
    assert len(whole) == 4 and len(resumed) == 2
    for (img_a, mask_a, _), (img_b, mask_b, _) in zip(whole[2:], resumed):
        assert torch.equal(img_a, img_b) and torch.equal(mask_a.mask, mask_b.mask)
    for (img_a, mask_a, _), (img_b, mask_b, _) in zip(whole, workers):
        assert torch.equal(img_a, img_b) and torch.equal(mask_a.mask, mask_b.mask)


def test_prefetching_thread_gives_the_same_batches_and_stops_cleanly(folder):
    _, _, plain = _batches(folder, "gpu", prefetch=0)
    _, loader, ahead = _batches(folder, "gpu", prefetch=1)
    assert isinstance(loader, DeviceDecodingLoader)
    assert all(torch.equal(a, b) for a, b in zip(plain, ahead))
    for _ in loader:  # leaving early must stop the decoding thread and allow a new pass
        break
    assert len(list(loader)) == 2


BAD = {"truncated": "01.jpg", "corrupt": "03.jpg"}


def _bad_files(root, kinds=("truncated", "corrupt", "png")):
    if "truncated" in kinds:
        good = (root / "01.jpg").read_bytes()
        (root / "01.jpg").write_bytes(good[: len(good) // 2])
    if "corrupt" in kinds:
        (root / "03.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # a broken header
    if "png" in kinds:  # not a JPEG: decoded by PIL in the worker
        Image.fromarray(_photo(np.random.default_rng(5), 200, 160)).save(root / "04.png")


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_files_are_skipped_alike_on_both_paths(folder, workers):
    _bad_files(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skip warnings (tested in test_data.py)
        cpu_ds, _, cpu = _batches(folder, "pil", workers=workers)
        dev_ds, _, dev = _batches(folder, "gpu", workers=workers)
        _, _, draft = _batches(folder, "draft", workers=workers)
    for a, b, c in zip(cpu, dev, draft):  # replacements (the next readable file) and the PNG too
        assert _agree(a, b).max() < 0.05
        assert _agree(a, c).max() < 0.08  # the draft path decodes at reduced scale (test_fast_decode)
    if workers == 0:
        assert cpu_ds.dataset.num_skipped == dev_ds.dataset.num_skipped >= 1


def test_png_is_decoded_in_the_worker_and_cropped_on_the_device(folder):
    _bad_files(folder)
    ds = _dataset(folder, "gpu")
    png = ds.dataset.samples.index(str(folder / "04.png"))
    from greenmim.data.device_loader import EncodedView
    item = EncodedView(ds, EncodeForDevice())[(0, png)]
    assert item.data is None and item.pixels.dtype == torch.uint8
    assert item.pixels.shape[1:] == (item.crop.height, item.crop.width) and item.crop[:2] == (0, 0)


@pytest.mark.parametrize("bad", ["truncated", "corrupt"])
def test_strict_mode_refuses_bad_files_on_both_paths(folder, bad):
    _bad_files(folder, (bad,))
    name = BAD[bad]
    for decode in ("pil", "gpu"):
        with pytest.raises(UnreadableImageError, match=name):
            _batches(folder, decode, strict=True)


def test_truncated_jpeg_is_recognised():
    buf = io.BytesIO()
    Image.fromarray(_photo(np.random.default_rng(1), 64, 48)).save(buf, "JPEG", exif=Image.Exif())
    data = buf.getvalue()
    assert jpeg_is_complete(data) and jpeg_is_complete(data + b"trailing bytes after the image")
    assert not jpeg_is_complete(data[:-40]) and not jpeg_is_complete(b"\xff\xd8\xff\xd9")


def _fail_on(monkeypatch, nbytes):
    """torchvision's decode_jpeg raising for the file of `nbytes` bytes (as a device might)."""
    import torchvision.io
    real = torchvision.io.decode_jpeg

    def decode_jpeg(data, *args, **kw):
        many = data if isinstance(data, list) else [data]
        if any(d.numel() == nbytes for d in many):
            raise RuntimeError("nvjpeg: unsupported image")
        return real(data, *args, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", decode_jpeg)


def test_a_device_decode_failure_falls_back_to_pil(folder, monkeypatch):
    _, _, want = _batches(folder, "gpu")
    _fail_on(monkeypatch, (folder / "02.jpg").stat().st_size)
    with pytest.warns(UserWarning, match="02.jpg on cpu failed .*decoded it on the CPU"):
        _, loader, got = _batches(folder, "gpu")
    assert loader.decoder.cpu_fallbacks == 1
    assert all(torch.equal(a, b) for a, b in zip(want, got))  # libjpeg and PIL decode alike


def test_a_file_no_decoder_reads_is_skipped_or_refused(folder, monkeypatch):
    """The header reads but neither the device nor PIL decodes it: skipped as the CPU path skips
    an unreadable file (the next file, under the sample's seed), or refused in strict mode."""
    _fail_on(monkeypatch, (folder / "02.jpg").stat().st_size)
    from greenmim.data import device_decode
    real = device_decode.decode_on_cpu

    def pil(item):
        if item.path.endswith("02.jpg"):
            raise OSError("broken data stream")
        return real(item)

    monkeypatch.setattr(device_decode, "decode_on_cpu", pil)
    with pytest.warns(UserWarning, match="skipping unreadable image .*02.jpg"):
        ds, _, got = _batches(folder, "gpu")
    assert ds.dataset.num_skipped == 1
    (folder / "02.jpg").write_bytes(b"gone")  # the CPU path, with 02.jpg unreadable from the start
    with pytest.warns(UserWarning):
        _, _, want = _batches(folder, "pil")
    for a, b in zip(want, got):
        assert _agree(a, b).max() < 0.05
    monkeypatch.undo()
    _fail_on(monkeypatch, 4)  # 02.jpg is now 4 bytes: the worker refuses it before the device
    with pytest.raises(UnreadableImageError, match="02.jpg"):
        _batches(folder, "gpu", strict=True)


def test_decode_values(monkeypatch):
    cpu = torch.device("cpu")
    auto = resolve_decode("auto", cpu)
    assert auto.path == "pil" and "data.decode=auto" in auto.note
    assert resolve_decode("cpu", cpu).path == "pil" and resolve_decode("draft", cpu).path == "draft"
    assert resolve_decode("gpu", cpu).path == "gpu"
    with pytest.raises(ConfigError, match="^data.decode=dali is not available.*use data.decode=gpu"):
        resolve_decode("dali", cpu)
    with pytest.raises(ConfigError, match="must be one of"):
        resolve_decode("nvjpeg", cpu)
    from greenmim.data import device_loader
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(device_loader, "device_decode_error", lambda d: "not compiled with nvJPEG")
    assert resolve_decode("auto", cuda).path == "pil"
    with pytest.raises(ConfigError, match="cannot decode JPEGs on cuda:0 .*not compiled"):
        resolve_decode("gpu", cuda)
    monkeypatch.setattr(device_loader, "device_decode_error", lambda d: None)
    plan = resolve_decode("auto", cuda)
    assert plan.path == "gpu" and plan.device == cuda and "nvJPEG" in plan.note


def test_config_refuses_dali_up_front():
    from greenmim.config import load_config
    with pytest.raises(ConfigError, match="dali.*data.decode=gpu"):
        load_config(None, ["data.decode=dali"])
    with pytest.raises(ConfigError, match="data.decode must be"):
        load_config(None, ["data.decode=fast"])
    assert load_config(None, ["data.decode=auto"])["data"]["decode"] == "auto"


def test_pretraining_runs_on_the_device_path_and_says_so_first(folder, tmp_path, capsys):
    import json
    import os
    from greenmim.config import load_config
    from greenmim.engine.pretrain import run
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "out"
    cfg = load_config(os.path.join(root, "configs", "pretrain", "tiny_cpu.yaml"), [
        f"output_dir={out}", f"data.path={folder}", "data.decode=gpu", "data.img_size=64",
        "data.num_workers=0", "train.batch_size=4", "train.epochs=1", "train.warmup_epochs=0",
        "log.every_steps=1", "log.tensorboard=false", "log.progress_bar=false", "log.vis_every_epochs=0",
        "checkpoint.every_epochs=0", "export_encoder=false", "model.decoder_dim=32",
        "model.decoder_num_heads=2",
        "model.encoder={embed_dim: 16, depths: [1, 1, 1, 1], num_heads: [1, 1, 1, 1], window_size: 2}"])
    run(cfg)
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("data: JPEG batches decoded on cpu") and "data.decode=gpu" in first
    with open(out / "log.jsonl") as f:
        losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_loader_benchmark_gpu_mode_on_the_cpu(folder, tmp_path):
    import os
    from conftest import load_tool
    bench = load_tool("benchmarks/loader")
    r = bench.loader_images_per_s(SIZE, 4, 0, batches=2, data=str(folder), skip=1, decode="gpu", prefetch=1)
    assert r["decode"] == "gpu" and r["img_per_s"] > 0 and r["decode_ms_timer"] == "wall"
    assert r["decode_ms_per_batch"] > 0 and r["max_mean_abs_diff_vs_cpu_decode"] == 0.0
    made = bench.jpeg_folder(6, size=(50, 40), root=str(tmp_path / "made"), unique=2)
    files = sorted(os.listdir(made))
    assert len(files) == 6 and os.path.samefile(os.path.join(made, files[0]), os.path.join(made, files[2]))
    assert Image.open(os.path.join(made, files[1])).size == (50, 40)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_nvjpeg_batches_agree_with_the_cpu_decode(folder):
    """nvJPEG's IDCT and chroma upsampling differ from libjpeg's by a grey level or two; with the
    prefetching thread on a side stream, a missing stream wait would show as garbage."""
    from greenmim.data.device_loader import device_decode_error
    err = device_decode_error("cuda:0")
    if err:
        pytest.skip(f"torchvision cannot decode JPEGs on CUDA here: {err}")
    _bad_files(folder, ("png",))
    _, _, want = _batches(folder, "gpu")
    cfg = {"seed": 3, "device": "cuda", "data": {**DEFAULTS["data"], "path": str(folder), "img_size": SIZE,
                                                 "decode": "auto"}}
    ds = build_dataset(cfg, torch.device("cuda", 0))
    assert ds.decode_plan.path == "gpu"
    loader = build_loader(ds, 4, 1, 0, 1, seed=1, num_workers=2, pin_memory=True, prefetch=2)
    for _ in range(3):  # passes that start and stop the thread, as epochs do
        got = list(loader)
        assert len(got) == len(want) and all(g.is_cuda for g in got)
        for a, b in zip(want, got):
            assert _agree(a, b.cpu()).max() < 0.03
