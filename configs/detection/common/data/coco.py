"""COCO instance segmentation data: coco_2017_train / coco_2017_val under $DETECTRON2_DATASETS.

Any other COCO-format json + image folder through overrides, e.g.
    dataloader.train.dataset.names=shapes_train
    dataloader.train.dataset.json_file=/data/shapes/annotations/instances_train.json
    dataloader.train.dataset.image_root=/data/shapes/train
    (the same for dataloader.test.dataset; the evaluator follows the test set)
    model.roi_heads.num_classes=5
The mapper is detectron2's DatasetMapper made robust (greenmim_det.mapper.GreenDatasetMapper): any
image mode, and unreadable training images skipped with a warning.
"""
from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import build_detection_test_loader, build_detection_train_loader

from greenmim_det.data import get_coco_dataset_dicts
from greenmim_det.mapper import GreenDatasetMapper
from greenmim_det.evaluation import GreenCOCOEvaluator

# 1x: single scale. 3x configs swap in `multi_scale_train_augmentations`.
single_scale_train_augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]
multi_scale_train_augmentations = [
    L(T.ResizeShortestEdge)(
        short_edge_length=(480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800),
        max_size=1333,
        sample_style="choice",
    ),
    L(T.RandomFlip)(horizontal=True),
]

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_coco_dataset_dicts)(
        names="coco_2017_train", json_file=None, image_root=None, filter_empty=True
    ),
    mapper=L(GreenDatasetMapper)(
        is_train=True,
        augmentations=single_scale_train_augmentations,
        image_format="RGB",
        use_instance_mask=True,
    ),
    total_batch_size=16,
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_coco_dataset_dicts)(
        names="coco_2017_val", json_file=None, image_root=None, filter_empty=False
    ),
    mapper=L(GreenDatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)

# output_dir None: tools/train_net.py sets it to <train.output_dir>/inference
dataloader.evaluator = L(GreenCOCOEvaluator)(
    dataset_name="${..test.dataset.names}",
    json_file="${..test.dataset.json_file}",
    image_root="${..test.dataset.image_root}",
    output_dir=None,
    backend="auto",
)
