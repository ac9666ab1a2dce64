"""Mask R-CNN + FPN, Green Swin-B backbone, COCO,
1x schedule (90k iterations at batch 16), single-scale training (short side 800).

Fine-tuning recipe: AdamW (lr 1e-4, weight decay 0.05), layer-wise lr decay 0.9, drop path 0.2,
window 7, AMP on GPU. Set train.init_checkpoint to a pretraining checkpoint or its encoder export.
"""
from .common.data.coco import dataloader
from .common.data.coco import single_scale_train_augmentations as _train_augmentations
from .common.models.mask_rcnn_green_fpn import model
from .common.optim import optimizer
from .common.schedule import lr_multiplier_1x as lr_multiplier
from .common.schedule import max_iter_1x as _max_iter
from .common.train import train

model.backbone.bottom_up.arch = "swin_base"
model.backbone.bottom_up.drop_path_rate = 0.2
model.backbone.bottom_up.window_size = 7
dataloader.train.mapper.augmentations = _train_augmentations
optimizer.params.layer_decay = 0.9
train.max_iter = _max_iter
train.output_dir = "./output/mask_rcnn_green_swin_b_fpn_1x"
