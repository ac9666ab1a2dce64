"""Checks that the detectron2 installed by `make setup` (scripts/install_detectron2.sh) is usable
for what GreenMIM needs: model-zoo configs, a Mask R-CNN R50-FPN training step on CPU, and the
numpy-2 paths of the data pipeline. Works with the offline v0.6 build and an official checkout."""
import numpy as np
import pytest
import torch

detectron2 = pytest.importorskip("detectron2")

from detectron2 import model_zoo  # noqa: E402
from detectron2.data import detection_utils as utils  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402


def test_imports_and_model_zoo_configs():
    import detectron2.evaluation  # noqa: F401
    import detectron2.layers  # noqa: F401
    import spconv.pytorch  # noqa: F401

    import greenmim  # noqa: F401

    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
    assert path.endswith(".yaml")


def test_minimal_C_extension_reports_missing_ops_clearly():
    from detectron2 import _C

    assert isinstance(_C.get_compiler_version(), str)
    if _C.has_cuda() or "GreenMIM" not in (_C.__doc__ or ""):
        pytest.skip("not GreenMIM's offline build of detectron2._C")
    with pytest.raises(AttributeError, match="use_fast_impl=False"):
        _C.box_iou_rotated  # noqa: B018


def _fake_instances(h, w):
    # One square object with a polygon mask: exercises PolygonMasks (np.bool in v0.6).
    x0, y0, x1, y1 = 40.0, 30.0, 160.0, 140.0
    anno = {
        "bbox": [x0, y0, x1, y1],
        "bbox_mode": BoxMode.XYXY_ABS,
        "category_id": 3,
        "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
        "iscrowd": 0,
    }
    return utils.annotations_to_instances([anno], (h, w), mask_format="polygon")


def test_mask_rcnn_r50_fpn_train_step_cpu():
    torch.manual_seed(0)
    cfg = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    model = build_model(cfg)
    model.train()

    h, w = 192, 224
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8).float()
    batch = [{"image": image, "instances": _fake_instances(h, w), "height": h, "width": w}]
    with EventStorage():  # training-mode heads log to the current event storage
        losses = model(batch)
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_numpy2_data_paths():
    # print_instances_class_histogram used np.int in v0.6; it runs in every train loader.
    from detectron2.data.build import print_instances_class_histogram

    dicts = [{"annotations": [{"category_id": 0, "iscrowd": 0}, {"category_id": 1}]}]
    print_instances_class_histogram(dicts, ["a", "b"])
    inst = _fake_instances(64, 64)
    masks = inst.gt_masks.crop_and_resize(inst.gt_boxes.tensor, 28)
    assert masks.shape == (1, 28, 28) and masks.dtype == torch.bool
    assert np.asarray(inst.gt_masks.nonempty()).all()
