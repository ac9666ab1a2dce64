"""Detectron2 edge (projects/GreenMIM, configs/detection, tools/train_net.py, visualize_detections):
backbone shapes, configs, checkpoint loading, layer decay, a tiny Mask R-CNN trained and evaluated on
synthetic COCO, pictures, and one-line errors for bad input. CPU only, tiny models."""
from __future__ import annotations

import glob
import json
import math
import os

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import greenmim  # noqa: E402
from conftest import REPO, SIDE, coco_overrides, load_tool  # noqa: E402
from greenmim_det import (  # noqa: E402
    ArchitectureMismatchError,
    CheckpointError,
    DatasetError,
    GreenBackbone,
    GreenCheckpointer,
    build_green_fpn,
    convert_encoder_state_dict,
    get_coco_dataset_dicts,
    get_encoder_layer_decay_param_groups,
    resize_relative_position_bias_table,
    swin_layer_id,
    swin_lr_decay_factors,
)

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "detection", "mask_rcnn_green_swin_*_fpn_*.py")))
TINY_ENC = dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1])
# a tiny encoder and slim heads: the detector's structure, a fraction of its cost
TINY = [
    "model.backbone.bottom_up.embed_dim=16",
    "model.backbone.bottom_up.depths=[1,1,1,1]",
    "model.backbone.bottom_up.num_heads=[1,1,1,1]",
    "model.backbone.out_channels=32",
    "model.roi_heads.box_head.fc_dims=[64,64]",
    "model.roi_heads.box_predictor.input_shape.channels=64",
    "model.roi_heads.mask_head.conv_dims=[32,32]",
    "model.roi_heads.batch_size_per_image=64",
    "model.proposal_generator.pre_nms_topk=[400,200]",
    "model.proposal_generator.post_nms_topk=[200,100]",
]
T1X = os.path.join(REPO, "configs", "detection", "mask_rcnn_green_swin_t_fpn_1x.py")


@pytest.fixture(scope="module")
def coco(make_coco):
    """Synthetic COCO-format shapes (5 classes), 128 px images."""
    return make_coco(num_train=6, num_val=3, img_size=128)


def _tiny_cfg(path, coco, extra=()):
    cfg = LazyConfig.load(path)
    train_sizes = [SIDE - 16, SIDE] if "3x" in os.path.basename(path) else SIDE
    opts = TINY + coco_overrides(coco) + [
        f"dataloader.train.mapper.augmentations.0.short_edge_length={train_sizes}".replace(" ", "")
    ] + list(extra)
    return LazyConfig.apply_overrides(cfg, opts)


# --------------------------------------------------------------------------------- backbone

@pytest.mark.parametrize("arch,channels", [("swin_tiny", [96, 192, 384, 768]), ("swin_base", [128, 256, 512, 1024])])
def test_backbone_names_channels_strides(arch, channels):
    backbone = GreenBackbone(arch, depths=[1, 1, 1, 1])  # real widths, shallow for speed
    shapes = backbone.output_shape()
    assert list(shapes) == ["res2", "res3", "res4", "res5"]
    assert [s.channels for s in shapes.values()] == channels
    assert [s.stride for s in shapes.values()] == [4, 8, 16, 32]
    assert backbone.size_divisibility == 32
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 96))
    for name, stride, c in zip(shapes, [4, 8, 16, 32], channels):
        assert out[name].shape == (1, c, 64 // stride, 96 // stride)
    assert not any(n.startswith("encoder.norm.") for n, _ in backbone.named_parameters())


def test_fpn_outputs_p2_to_p6():
    fpn = build_green_fpn("swin_tiny", out_channels=32, **TINY_ENC)
    with torch.no_grad():
        out = fpn(torch.randn(2, 3, 96, 64))
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    assert {k: s.stride for k, s in fpn.output_shape().items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    for k, stride in zip(out, [4, 8, 16, 32, 64]):
        assert out[k].shape == (2, 32, -(-96 // stride), -(-64 // stride))


def test_yacs_registry_builder():
    from detectron2.config import get_cfg
    from detectron2.modeling import build_backbone

    from greenmim_det import add_green_swin_config

    cfg = add_green_swin_config(get_cfg())
    cfg.MODEL.BACKBONE.NAME = "build_green_swin_fpn_backbone"
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.GREEN_SWIN.EMBED_DIM, cfg.MODEL.GREEN_SWIN.DEPTHS, cfg.MODEL.GREEN_SWIN.NUM_HEADS = 16, [1] * 4, [1] * 4
    fpn = build_backbone(cfg)
    assert list(fpn.output_shape()) == ["p2", "p3", "p4", "p5", "p6"]
    assert fpn.bottom_up.encoder.embed_dim == 16


def test_frozen_stages_and_every_trainable_param_gets_a_gradient():
    backbone = GreenBackbone("swin_tiny", frozen_stages=1, drop_path_rate=0.1, use_checkpoint=True, **TINY_ENC)
    backbone.train()
    enc = backbone.encoder
    assert not any(p.requires_grad for p in enc.patch_embed.parameters())
    assert not any(p.requires_grad for p in enc.layers[0].parameters())
    assert not enc.layers[0].training and enc.layers[1].training
    out = backbone(torch.randn(1, 3, 64, 64))
    sum(v.square().mean() for v in out.values()).backward()
    # DDP with find_unused_parameters=False needs every trainable parameter to be used
    unused = [n for n, p in backbone.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


# --------------------------------------------------------------------------------- configs

def test_configs_are_complete():
    names = {os.path.basename(p) for p in CONFIGS}
    assert names == {f"mask_rcnn_green_swin_{a}_fpn_{s}.py" for a in "tsbl" for s in ("1x", "3x")}
    for path in CONFIGS:
        cfg = LazyConfig.load(path)
        arch = {"t": "swin_tiny", "s": "swin_small", "b": "swin_base", "l": "swin_large"}[os.path.basename(path)[21]]
        assert cfg.model.backbone.bottom_up.arch == arch
        assert cfg.dataloader.train.dataset.names == "coco_2017_train"
        assert cfg.dataloader.test.dataset.names == "coco_2017_val"
        assert cfg.optimizer.params.layer_decay < 1 and cfg.model.backbone.bottom_up.drop_path_rate > 0
        assert cfg.train.amp.enabled
        sizes = cfg.dataloader.train.mapper.augmentations[0].short_edge_length
        multi_scale = not isinstance(sizes, int) and len(sizes) > 1
        assert multi_scale == ("3x" in path)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_builds_trains_one_step_and_infers(path, coco):
    cfg = _tiny_cfg(path, coco)
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    instantiate(cfg.lr_multiplier)
    batch = next(iter(instantiate(cfg.dataloader.train)))
    model.train()
    with EventStorage(0):
        losses = model(batch)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    model.eval()
    test_batch = next(iter(instantiate(cfg.dataloader.test)))
    with torch.no_grad():
        out = model(test_batch)
    assert "instances" in out[0] and out[0]["instances"].image_size == (test_batch[0]["height"], test_batch[0]["width"])


# --------------------------------------------------------------------------------- checkpoints

def _tiny_detector(coco, extra=()):
    return instantiate(_tiny_cfg(T1X, coco, extra).model)


def _pretrain_encoder(**kw):
    return greenmim.build_encoder("swin_tiny", img_size=224, **{**TINY_ENC, **kw})


def _assert_encoder_equal(detector, source_sd):
    enc_sd = detector.backbone.bottom_up.encoder.state_dict()
    for k, v in source_sd.items():
        if k in enc_sd:
            assert torch.equal(enc_sd[k], v), k


def test_pretraining_checkpoint_and_encoder_export_load_with_zero_missing_keys(coco, tmp_path, caplog):
    from greenmim.engine.checkpoint import export_encoder
    from greenmim.models.mim import GreenMIM

    mim = GreenMIM(_pretrain_encoder(), img_size=224, decoder_dim=16, decoder_depth=1, decoder_num_heads=1)
    enc_sd = mim.encoder.state_dict()
    full = tmp_path / "checkpoint-last.pth"
    torch.save({"model": mim.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "step": 3,
                "config": {"model": {"arch": "swin_tiny"}}}, full)
    export = export_encoder(mim.state_dict(), str(tmp_path / "encoder.pth"))
    for path in (str(full), export):
        detector = _tiny_detector(coco)
        target = detector.backbone.bottom_up.encoder.state_dict()
        sd, report = convert_encoder_state_dict(torch.load(path, weights_only=True), target, source=path)
        assert report.missing == [] and report.unexpected == []
        assert set(sd) == set(target)
        caplog.clear()
        with caplog.at_level("INFO", logger="greenmim_det.checkpoint"):
            extra = GreenCheckpointer(detector).load(path)
        assert "optimizer" not in extra  # pretraining optimizer state is never handed on
        _assert_encoder_equal(detector, enc_sd)
        summary = [r.getMessage() for r in caplog.records if "GreenCheckpointer" in r.getMessage()]
        assert len(summary) == 1 and "missing encoder tensors: 0" in summary[0]
    assert "decoder" in report.dropped or path == export

    # tools/convert_checkpoint.py writes the same encoder to disk
    convert = load_tool("convert_checkpoint")
    out = tmp_path / "converted.pth"
    assert convert.main([str(full), str(out)]) == 0
    converted = torch.load(out, weights_only=True)["model"]
    assert set(converted) == set(enc_sd) and all(torch.equal(converted[k], enc_sd[k]) for k in enc_sd)
    assert convert.main([str(tmp_path / "missing.pth"), str(out)]) == 2


def test_official_swin_simmim_formats_load(coco, tmp_path):
    enc_sd = _pretrain_encoder().state_dict()
    swin = dict(enc_sd)
    swin["head.weight"], swin["head.bias"] = torch.zeros(1000, 128), torch.zeros(1000)
    swin["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    swin["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    simmim = {"encoder." + k: v for k, v in enc_sd.items()}
    simmim["encoder.mask_token"] = torch.zeros(1, 1, 16)
    simmim["decoder.0.weight"] = torch.zeros(3072, 128, 1, 1)
    ddp = {"module." + k: v for k, v in simmim.items()}
    for name, obj in {"swin": {"model": swin}, "simmim": {"model": simmim, "epoch": 100},
                      "ddp": {"state_dict": ddp}, "bare": enc_sd}.items():
        path = tmp_path / f"{name}.pth"
        torch.save(obj, path)
        detector = _tiny_detector(coco)
        GreenCheckpointer(detector).load(str(path))
        _assert_encoder_equal(detector, enc_sd)
        _, report = convert_encoder_state_dict(obj, detector.backbone.bottom_up.encoder.state_dict())
        assert report.missing == [] and report.unexpected == [], name

    # SimMIM pickles its yacs config next to the weights: weights_only refuses it, clearly, and
    # convert_checkpoint --trust-pickle turns the (trusted) file into a weights-only one
    from yacs.config import CfgNode

    legacy = tmp_path / "simmim_with_config.pth"
    torch.save({"model": simmim, "config": CfgNode({"MODEL": {"TYPE": "swin"}})}, legacy)
    with pytest.raises(CheckpointError, match="yacs.config.CfgNode.*--trust-pickle"):
        GreenCheckpointer(_tiny_detector(coco)).load(str(legacy))
    fixed = tmp_path / "fixed.pth"
    assert load_tool("convert_checkpoint").main(["--trust-pickle", str(legacy), str(fixed)]) == 0
    detector = _tiny_detector(coco)
    GreenCheckpointer(detector).load(str(fixed))
    _assert_encoder_equal(detector, enc_sd)


def test_bias_table_resize_7_to_14_keeps_centre(coco, tmp_path):
    table = torch.randn(13 * 13, 3)
    big = resize_relative_position_bias_table(table, 14)
    assert big.shape == (27 * 27, 3)
    assert torch.allclose(big[13 * 27 + 13], table[6 * 13 + 6])  # offset (0, 0)
    grid_old, grid_new = table.T.reshape(3, 13, 13), big.T.reshape(3, 27, 27)
    for (i, j), (k, m) in {(0, 0): (0, 0), (12, 12): (26, 26), (0, 12): (0, 26)}.items():
        assert torch.allclose(grid_new[:, k, m], grid_old[:, i, j], atol=1e-6)
    assert torch.equal(resize_relative_position_bias_table(table, 7), table)
    # through the checkpointer: window-7 pretraining weights into a window-14 detector
    enc_sd = _pretrain_encoder().state_dict()
    path = tmp_path / "w7.pth"
    torch.save({"model": enc_sd}, path)
    detector = _tiny_detector(coco, ["model.backbone.bottom_up.window_size=14"])
    GreenCheckpointer(detector).load(str(path))
    loaded = detector.backbone.bottom_up.encoder.state_dict()
    key = "layers.0.blocks.0.attn.relative_position_bias_table"
    assert loaded[key].shape == (27 * 27, 1)
    assert torch.allclose(loaded[key][13 * 27 + 13], enc_sd[key][6 * 13 + 6])


def test_wrong_architecture_is_one_clear_error(coco, tmp_path):
    detector = _tiny_detector(coco)
    for name, kw in {"width": dict(embed_dim=32, num_heads=[1, 2, 4, 8]), "depth": dict(depths=[1, 1, 3, 1])}.items():
        path = tmp_path / f"{name}.pth"
        torch.save({"model": _pretrain_encoder(**kw).state_dict()}, path)
        with pytest.raises(ArchitectureMismatchError) as err:
            GreenCheckpointer(detector).load(str(path))
        msg = str(err.value)
        assert "\n" not in msg and "architecture mismatch" in msg and str(path) in msg
        assert "depths=[1, 1, 1, 1]" in msg  # says what the model is
    bad = tmp_path / "not_swin.pth"
    torch.save({"model": {"conv.weight": torch.zeros(3)}}, bad)
    with pytest.raises(CheckpointError):
        convert_encoder_state_dict(torch.load(bad, weights_only=True))


def test_benchmark_timm_twin_computes_the_same_features():
    bench = load_tool("benchmarks/detection")
    green = GreenBackbone("swin_tiny", drop_path_rate=0.0, embed_dim=16, depths=[1, 2, 1, 1],
                              num_heads=[1, 1, 2, 2]).eval()
    twin = bench.TimmSwinBottomUp(green, "swin_tiny_patch4_window7_224", 224).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        a, b = green(x), twin(x)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


# --------------------------------------------------------------------------------- optimiser

def test_layer_decay_monotone_and_weight_decay_exclusions():
    depths = [2, 2, 6, 2]
    factors = swin_lr_decay_factors(depths, 0.9)
    assert all(a < b for a, b in zip(factors, factors[1:])) and factors[-1] == 1.0
    names = ["patch_embed.proj.weight"] + [
        f"layers.{i}.blocks.{j}.attn.qkv.weight" for i, d in enumerate(depths) for j in range(d)]
    ids = [swin_layer_id(n, depths) for n in names]
    assert ids == list(range(sum(depths) + 1))  # patch_embed 0 ... last block = total depth
    assert swin_layer_id("layers.1.downsample.reduction.weight", depths) == 4

    fpn = build_green_fpn("swin_tiny", out_channels=16, **TINY_ENC)
    groups = get_encoder_layer_decay_param_groups(fpn, base_lr=1.0, weight_decay=0.05, layer_decay=0.5)
    lr_of, wd_of = {}, {}
    for g in groups:
        for p in g["params"]:
            lr_of[id(p)], wd_of[id(p)] = g["lr"], g["weight_decay"]
    params = dict(fpn.named_parameters())
    chain = ["bottom_up.encoder.patch_embed.proj.weight"] + [
        f"bottom_up.encoder.layers.{i}.blocks.0.attn.qkv.weight" for i in range(4)] + ["fpn_lateral2.weight"]
    lrs = [lr_of[id(params[n])] for n in chain]
    assert all(a < b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == 1.0
    assert wd_of[id(params["bottom_up.encoder.layers.0.blocks.0.attn.relative_position_bias_table"])] == 0
    assert wd_of[id(params["bottom_up.encoder.layers.0.blocks.0.norm1.weight"])] == 0
    assert wd_of[id(params["bottom_up.encoder.layers.0.blocks.0.attn.qkv.bias"])] == 0
    assert wd_of[id(params["bottom_up.out_norms.res2.weight"])] == 0
    assert wd_of[id(params["bottom_up.encoder.layers.0.blocks.0.attn.qkv.weight"])] == 0.05
    assert sum(len(g["params"]) for g in groups) == len(params)
    # the name projects/GreenMIM/README.md documents for LazyConfig files stays importable
    import greenmim_det
    assert greenmim_det.get_swin_layer_decay_param_groups is get_encoder_layer_decay_param_groups


# --------------------------------------------------------------------------------- end to end

def test_evaluator_scores_ground_truth_as_100(coco, tmp_path):
    from detectron2.data import DatasetCatalog
    from detectron2.structures import BoxMode, Boxes, Instances
    from detectron2.structures.masks import polygons_to_bitmask

    from greenmim_det.evaluation import GreenCOCOEvaluator, resolve_coco_eval_backend

    assert resolve_coco_eval_backend("auto") in ("detectron2", "faster_coco_eval")
    evaluator = GreenCOCOEvaluator("greenmim_test_gt_val", json_file=coco["val_json"], image_root=coco["val_images"],
                                   output_dir=str(tmp_path), distributed=False)
    evaluator.reset()
    for record in DatasetCatalog.get("greenmim_test_gt_val"):
        anns = record["annotations"]
        inst = Instances((record["height"], record["width"]))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
        inst.pred_boxes = Boxes(torch.tensor(boxes))
        inst.scores = torch.ones(len(anns))
        inst.pred_classes = torch.tensor([a["category_id"] for a in anns])
        inst.pred_masks = torch.stack([
            torch.from_numpy(polygons_to_bitmask(a["segmentation"], record["height"], record["width"])) for a in anns])
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": inst}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0, abs=0.5)
    assert results["segm"]["AP"] > 95.0
    saved = json.load(open(tmp_path / "coco_metrics.json"))
    assert saved["metrics"]["bbox"]["AP"] == pytest.approx(results["bbox"]["AP"])


def test_train_eval_resume_and_visualize(coco, tmp_path, capsys):
    train_net = load_tool("train_net")
    out = tmp_path / "run"
    cfg_path = T1X
    # test_score_thresh 0: a barely trained model still returns detections, so AP is defined
    opts = TINY + coco_overrides(coco) + [
        f"dataloader.train.mapper.augmentations.0.short_edge_length={SIDE}",
        "model.roi_heads.box_predictor.test_score_thresh=0.0",
        "train.max_iter=24", "train.eval_period=0", "train.log_period=8", "train.seed=0",
        "train.checkpointer.period=1000", f"train.output_dir={out}", "optimizer.lr=0.0005",
    ]
    args = train_net.parse_args(["--config-file", cfg_path] + opts)
    trainer = train_net.main(args)
    assert trainer.iter == 24  # detectron2 leaves iter at max_iter after a finished run
    metrics = json.load(open(out / "inference" / "coco_metrics.json"))["metrics"]
    for task in ("bbox", "segm"):
        assert math.isfinite(metrics[task]["AP"]), metrics
    assert os.path.isfile(out / "model_final.pth")

    # --resume continues from the last checkpoint (weights_only loading of our own snapshots)
    args = train_net.parse_args(["--config-file", cfg_path, "--resume"] + opts + ["train.max_iter=26"])
    trainer = train_net.main(args)
    assert trainer.iter == 26 and trainer.start_iter == 24

    # --eval-only on the final weights
    args = train_net.parse_args(["--config-file", cfg_path, "--eval-only"] + opts
                                + [f"train.init_checkpoint={out / 'model_final.pth'}"])
    results = train_net.main(args)
    assert math.isfinite(results["bbox"]["AP"]) and math.isfinite(results["segm"]["AP"])

    # pictures: a folder plus an unreadable file, ground truth | prediction side by side
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    visualize = load_tool("visualize_detections")
    vis_dir = tmp_path / "vis"
    written = visualize.main([
        "--config-file", cfg_path, "--checkpoint", str(out / "model_final.pth"),
        "--input", coco["val_images"], str(bad), "--output", str(vis_dir), "--score-threshold", "0.0",
        "--dataset", "greenmim_test_shapes_val", "--gt"] + TINY + ["model.roi_heads.num_classes=5"]
        + [o for o in coco_overrides(coco) if o.startswith("dataloader.test.mapper")])
    assert len(written) == 3 and all(p.endswith(".png") and os.path.isfile(p) for p in written)
    assert "skipping" in capsys.readouterr().out
    from PIL import Image

    w, h = Image.open(written[0]).size
    assert h >= 512 and w >= 2 * 512  # 128 px images enlarged to 512 px, side by side


# --------------------------------------------------------------------------------- bad input

def test_bad_dataset_inputs_give_one_line_errors(tmp_path, coco):
    missing = tmp_path / "nope.json"
    malformed = tmp_path / "bad.json"
    malformed.write_text('{"images": [}')
    not_coco = tmp_path / "list.json"
    not_coco.write_text("[1, 2]")
    cases = {
        "missing": (dict(names="greenmim_bad_1", json_file=str(missing), image_root=str(tmp_path)), "not found"),
        "malformed": (dict(names="greenmim_bad_2", json_file=str(malformed), image_root=str(tmp_path)), "malformed"),
        "not coco": (dict(names="greenmim_bad_3", json_file=str(not_coco), image_root=str(tmp_path)), "malformed"),
        "unknown": (dict(names="no_such_dataset"), "unknown dataset 'no_such_dataset'"),
    }
    for case, (kwargs, text) in cases.items():
        with pytest.raises(DatasetError) as err:
            get_coco_dataset_dicts(**kwargs)
        assert text in str(err.value) and "\n" not in str(err.value), case

    # the same through the training script: one "error: ..." line, no traceback
    train_net = load_tool("train_net")
    args = train_net.parse_args(["--config-file", T1X] + TINY + [
        "train.device=cpu", f"train.output_dir={tmp_path / 'out'}", "dataloader.train.dataset.names=no_such_dataset"])
    with pytest.raises(SystemExit) as err:
        train_net.main(args)
    assert str(err.value).startswith("error: unknown dataset 'no_such_dataset'") and "\n" not in str(err.value)
