#!/usr/bin/env python
"""Draw a detector's predictions (masks, boxes, class names, scores) into PNG files.

Works with LazyConfig models (detectron2's demo only knows yacs configs):

    python tools/visualize_detections.py --config-file configs/detection/mask_rcnn_green_swin_t_fpn_1x.py \
        --checkpoint output/model_final.pth --input img1.jpg photos/ --output vis/
    # a registered split (or any COCO json + images), ground truth | prediction side by side:
    python tools/visualize_detections.py --config-file <cfg> --checkpoint <pth> --dataset coco_2017_val \
        --max-images 20 --gt --output vis/
    python tools/visualize_detections.py ... --dataset shapes_val --json val.json --image-root val/ \
        model.roi_heads.num_classes=5

Pictures are drawn at a readable size: images under 512 px on both sides are enlarged to a 512 px
short side (--scale sets the factor), and the label font follows the picture's size. Images that
cannot be read are skipped with a message. Class names come from the dataset given
with --dataset, else from the config's test dataset; trailing key=value pairs override the config.
"""
import argparse
import logging
import os
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

import detectron2.data.transforms as T
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import Visualizer

from greenmim_det.checkpoint import CheckpointError, GreenCheckpointer
from greenmim_det.data import DatasetError, ensure_dataset

logger = logging.getLogger("greenmim_det.visualize")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config-file", required=True, help="LazyConfig .py file of the detector")
    p.add_argument("--checkpoint", default="", help="weights (default: the config's train.init_checkpoint)")
    p.add_argument("--input", nargs="*", default=[], help="image files and/or folders")
    p.add_argument("--dataset", default="", help="registered dataset: images to draw (if no --input) and class names")
    p.add_argument("--json", default="", help="COCO json to register --dataset from")
    p.add_argument("--image-root", default="", help="image folder of --json")
    p.add_argument("--output", required=True, help="output folder for the PNGs")
    p.add_argument("--score-threshold", type=float, default=0.5, help="draw detections scoring at least this")
    p.add_argument("--scale", type=float, default=0.0,
                   help="drawing scale (default 0: images under 512 px on both sides are enlarged to a "
                        "512 px short side, larger ones drawn at their size)")
    p.add_argument("--gt", action="store_true", help="ground truth | prediction side by side (needs --dataset)")
    p.add_argument("--max-images", type=int, default=0, help="draw at most this many images (0: all)")
    p.add_argument("--device", default="cpu" if not torch.cuda.is_available() else "cuda")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    return p.parse_args(argv)


def list_images(inputs: Iterable[str]) -> List[str]:
    """Files as given; folders expanded to their image files (sorted, not recursive)."""
    paths: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            paths += sorted(
                os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTS)
            )
        else:
            paths.append(item)
    return paths


def test_augmentations(cfg) -> T.Augmentation:
    """The config's test-time resize (what evaluation sees), or detectron2's default."""
    try:
        augs = instantiate(cfg.dataloader.test.mapper.augmentations)
    except (AttributeError, KeyError):
        augs = [T.ResizeShortestEdge(800, 1333)]
    return T.AugmentationList(list(augs))


class Predictor:
    """Image (RGB uint8 HWC) -> Instances on CPU, in original image coordinates."""

    def __init__(self, cfg, checkpoint: str, device: str):
        self.model = instantiate(cfg.model).to(device).eval()
        GreenCheckpointer(self.model).load(checkpoint)
        self.input_format = getattr(self.model, "input_format", "RGB")
        self.aug = test_augmentations(cfg)
        self.device = device

    @torch.no_grad()
    def __call__(self, image_rgb: np.ndarray):
        image = image_rgb[:, :, ::-1] if self.input_format == "BGR" else image_rgb
        height, width = image.shape[:2]
        aug_input = T.AugInput(np.ascontiguousarray(image))
        self.aug(aug_input)
        tensor = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1))
        outputs = self.model([{"image": tensor.to(self.device), "height": height, "width": width}])
        return outputs[0]["instances"].to("cpu")


MIN_SHORT_SIDE = 512  # default drawing size of small images (labels readable at 100%)


def auto_scale(height: int, width: int, min_short: int = MIN_SHORT_SIDE) -> float:
    """The default drawing scale: an image smaller than `min_short` px on both sides (a thumbnail,
    the demo's 192 px shapes) is enlarged until its short side is `min_short`; a bigger one (COCO's
    640x480) is drawn at its own size, never upscaled."""
    if max(height, width) >= min_short:
        return 1.0
    return min_short / min(height, width)


class _Visualizer(Visualizer):
    """detectron2's Visualizer with the label font sized for the output picture: detectron2's
    default (10 pt at any scale, or sqrt(area) / 90) piles labels on top of small objects."""

    def __init__(self, image_rgb: np.ndarray, metadata, scale: float):
        super().__init__(image_rgb, metadata, scale=scale)
        out_short = min(image_rgb.shape[:2]) * scale
        # detectron2 draws labels at 0.6-1.0 x this size, multiplied by the scale (points at 100 dpi)
        self._default_font_size = max(11.0, out_short / 36) / scale


def draw(image_rgb: np.ndarray, metadata, scale: float = 1.0, instances=None, record=None) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (round(H * scale), round(W * scale), 3) uint8 RGB with the
    predicted `instances` (or the dataset `record`'s ground truth) drawn on it."""
    vis = _Visualizer(image_rgb, metadata, scale)
    if instances is not None:
        out = vis.draw_instance_predictions(instances)
    else:
        out = vis.draw_dataset_dict(record)
    return out.get_image()


def with_header(panel: np.ndarray, text: str) -> np.ndarray:
    """(H, W, 3) -> (H + header, W, 3): a dark strip above the picture with `text`, so the title
    covers none of the objects."""
    import cv2

    height, width = panel.shape[:2]
    strip_h = max(22, round(min(height, width) * 0.06))
    font_scale = strip_h / 40
    strip = np.full((strip_h, width, 3), 32, dtype=np.uint8)
    cv2.putText(strip, text, (max(4, strip_h // 4), round(strip_h * 0.72)), cv2.FONT_HERSHEY_SIMPLEX,
                font_scale, (255, 255, 255), max(1, round(font_scale * 2)), cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 6) -> np.ndarray:
    """Two (H, W_i, 3) pictures -> (H, W_1 + gap + W_2, 3), a white gap between them."""
    sep = np.full((left.shape[0], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([left, sep, right], axis=1)


def _pick_dataset(args, cfg) -> Tuple[Optional[str], Dict[str, dict]]:
    """(dataset name for class names, basename -> dataset record with GT)."""
    name = args.dataset
    if name:
        ensure_dataset(name, args.json or None, args.image_root or None)
    else:
        try:
            test = cfg.dataloader.test.dataset
            name = test.names if isinstance(test.names, str) else None
            if name:
                ensure_dataset(name, test.get("json_file", None), test.get("image_root", None))
        except (AttributeError, KeyError, DatasetError) as e:
            logger.info("no dataset for class names (%s); predictions are labelled by class id", e)
            return None, {}
    records = {}
    if name and (args.gt or not args.input):
        for r in DatasetCatalog.get(name):
            records[os.path.basename(r["file_name"])] = r
    return name, records


def main(argv=None) -> List[str]:
    """Returns the list of PNG files written."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts)
    if not args.input and not args.dataset:
        raise SystemExit("error: give --input images/folders or --dataset NAME")
    if args.scale < 0:
        raise SystemExit(f"error: --scale must be positive (or 0 for the default), got {args.scale}")
    if args.gt and not args.dataset:
        raise SystemExit("error: --gt needs --dataset (the split that holds the ground truth)")
    try:
        dataset, records = _pick_dataset(args, cfg)
        checkpoint = args.checkpoint or cfg.train.get("init_checkpoint", "")
        if not checkpoint:
            logger.warning("no --checkpoint and no train.init_checkpoint: drawing an untrained model")
        predictor = Predictor(cfg, checkpoint, args.device)
    except (DatasetError, CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None
    metadata = MetadataCatalog.get(dataset) if dataset else MetadataCatalog.get("__unnamed__")

    paths = list_images(args.input) if args.input else [r["file_name"] for r in records.values()]
    if args.max_images > 0:
        paths = paths[: args.max_images]
    os.makedirs(args.output, exist_ok=True)
    written = []
    for path in paths:
        try:
            image = read_image(path, format="RGB")
        except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, not fatal
            print(f"skipping {path}: cannot read image ({type(e).__name__}: {e})")
            continue
        instances = predictor(image)
        instances = instances[instances.scores >= args.score_threshold]
        scale = args.scale or auto_scale(*image.shape[:2])
        panel = draw(image, metadata, scale, instances=instances)
        pred_title = f"prediction: {len(instances)} with score >= {args.score_threshold:.2f}"
        if args.gt:
            record = records.get(os.path.basename(path))
            if record is None:
                print(f"{path}: no ground truth in '{dataset}', drawing the prediction only")
                panel = with_header(panel, pred_title)
            else:
                gt = draw(image, metadata, scale, record=record)
                n_gt = len(record.get("annotations", []))
                panel = side_by_side(with_header(gt, f"ground truth: {n_gt} objects"),
                                     with_header(panel, pred_title))
        else:
            panel = with_header(panel, pred_title)
        stem = os.path.splitext(os.path.basename(path))[0]
        out_path = os.path.join(args.output, stem + ".png")
        from PIL import Image

        Image.fromarray(panel).save(out_path)
        written.append(out_path)
        logger.info("%s: %d detections >= %.2f -> %s", path, len(instances), args.score_threshold, out_path)
    logger.info("wrote %d PNG files to %s", len(written), args.output)
    return written


if __name__ == "__main__":
    main()
