"""Mask R-CNN + FPN, Green Twins-SVT-L backbone, COCO,
3x schedule (270k iterations at batch 16), multi-scale training (short side 480-800).

Recipe as in the 1x config. Set train.init_checkpoint to a pretraining checkpoint or its encoder export.
"""

from .common.data.coco import multi_scale_train_augmentations as _train_augmentations
from .common.schedule import lr_multiplier_3x as lr_multiplier
from .common.schedule import max_iter_3x as _max_iter
from .mask_rcnn_green_twins_svt_l_fpn_1x import dataloader, model, optimizer, train

dataloader.train.mapper.augmentations = _train_augmentations
train.max_iter = _max_iter
train.output_dir = "./output/mask_rcnn_green_twins_svt_l_fpn_3x"
