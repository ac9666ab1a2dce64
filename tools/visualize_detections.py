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

Images that cannot be read are skipped with a message. Class names come from the dataset given
with --dataset, else from the config's test dataset; trailing key=value pairs override the config.
"""
import argparse
import logging
import os
import sys
from typing import Dict, Iterable, List, Optional, Tuple

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:  # a source checkout without `pip install -e .`
    import greenmim_det  # noqa: F401
except ImportError:
    sys.path[:0] = [os.path.join(_ROOT, "pretrain"), os.path.join(_ROOT, "projects", "GreenMIM")]

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


def draw(image_rgb, metadata, instances=None, record=None) -> np.ndarray:
    vis = Visualizer(image_rgb, metadata)
    if instances is not None:
        out = vis.draw_instance_predictions(instances)
    else:
        out = vis.draw_dataset_dict(record)
    return out.get_image()


def _label(image: np.ndarray, text: str) -> np.ndarray:
    import cv2

    image = image.copy()
    cv2.putText(image, text, (5, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
    return image


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
        panel = draw(image, metadata, instances=instances)
        if args.gt:
            record = records.get(os.path.basename(path))
            if record is None:
                print(f"{path}: no ground truth in '{dataset}', drawing the prediction only")
            else:
                gt = draw(image, metadata, record=record)
                panel = np.concatenate([_label(gt, "ground truth"), _label(panel, "prediction")], axis=1)
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
