"""Mask R-CNN + FPN on a small Green Swin, sized for the CPU demo (tools/demo.py).

The detector of configs/detection/ with everything scaled to 192 px synthetic shapes and a 2-core
CPU: a narrow encoder (what configs/demo/pretrain_swin_demo.yaml pretrains), a 64-channel FPN, a
box head of two 3x3 convs with GroupNorm and one fc, a 32-channel mask head on 10x10 RoI features,
anchors 16..256 px, 48 RoIs per image (half of them foreground) pooled with 2x2 samples per bin for
boxes and 1 for masks through a RoIAlign whose CPU backward is two matrix products, AdamW with
warm-up and cosine decay, the box head's fc layer at a lower lr (see the optimisation section).
README.md ("Where the time went") has the per-iteration cost of each of these choices.
tools/demo.py fills in the dataset paths, output_dir and init_checkpoint.
"""
from fvcore.common.param_scheduler import CosineParamScheduler

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from greenmim_det.roi_align import SeparableROIPooler

from ..detection.common.data.coco import dataloader
from ..detection.common.models.mask_rcnn_green_fpn import model
from ..detection.common.optim import optimizer
from ..detection.common.train import train

# --- backbone: must match the pretraining config's model.encoder
model.backbone.bottom_up.arch = "swin_tiny"
model.backbone.bottom_up.embed_dim = 48
model.backbone.bottom_up.depths = [2, 2, 2, 2]
model.backbone.bottom_up.num_heads = [2, 4, 8, 16]
model.backbone.bottom_up.window_size = 6
model.backbone.bottom_up.drop_path_rate = 0.0
model.backbone.out_channels = 64

# --- heads: 5 shape classes, a few objects of 15-90 px per 192 px image
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.batch_size_per_image = 128
# 500 candidates per level before NMS (P2 has 6912 anchors, P3 1728): torchvision's CPU NMS on
# 1000 boxes per level cost ~35 ms of each iteration, and a few objects per image need far fewer
model.proposal_generator.pre_nms_topk = (500, 500)
model.proposal_generator.post_nms_topk = (500, 200)
model.roi_heads.num_classes = 5
# 48 RoIs per image (detectron2: 512), half of them foreground: the RoI heads and their RoIAlign
# cost per RoI, and 48 instead of 64 made iterations 13% faster (same weights, interleaved).
model.roi_heads.batch_size_per_image = 48
# Half of the RoIs foreground (detectron2's default is a quarter): the RoI classifier is what
# limits this short schedule, and twice the foreground samples per step train it faster. Same
# encoder, seed 0, 1000 iterations, two-fc box head, 64 RoIs: box AP 31.2 -> 35.4 (mask 30.9 ->
# 34.9), for 22% more time per iteration (the mask head and its RoIAlign see twice the RoIs).
model.roi_heads.positive_fraction = 0.5
# Box RoIs: 2x2 samples per bin; one sample would save 0.5% of an iteration now that the backward
# is matrix products (below).
# Mask RoIs: one sample per bin. A bin of a 14x14 RoI (10x10 now, below) of these 15-90 px objects
# spans at most ~2 cells of P2, and torchvision's CPU RoIAlign backward is a scalar loop over
# samples: 4x fewer samples made iterations 6% faster (two one-thread runs side by side, 1.55 vs
# 1.64 s over 1000 iterations) at box / mask AP 47.6 / 43.7 against 45.5 / 42.2 with 2x2 (same
# encoder, seed 0, one thread).
model.roi_heads.box_pooler.sampling_ratio = 2
model.roi_heads.mask_pooler.sampling_ratio = 1
# Same pooling, RoIAlign's backward as matrix products (greenmim_det/roi_align.py): torchvision's
# CPU backward is a one-thread loop over samples, ~150 ms of each iteration here.
model.roi_heads.box_pooler._target_ = SeparableROIPooler
model.roi_heads.mask_pooler._target_ = SeparableROIPooler
# Box head: two 3x3 convs (32 channels, GroupNorm) and one fc, detectron2's conv-GN head made
# small (its model zoo uses 4 convs + GN for detectors trained from scratch). The RoI classifier
# is what limits this short schedule: with two fc layers (detectron2's default) a freshly trained
# MLP on the trained model's pooled RoI features reached 100% train but only 70% val accuracy on
# ground-truth boxes, and the detector's own classifier 55%. The conv head took box AP from 35.4
# to 43.9 (1000 iterations, same encoder and seed); README.md ("Where the AP was lost") has the
# table of head widths. 32 channels are kept for time: the mask head sees every foreground RoI
# (then 128 per batch, 96 with today's 48 RoIs per image), and at 64 channels its forward +
# backward alone cost 225 ms per iteration (65 ms at 32); the box head 67 ms at 64 channels, 28 ms
# at 32 (2 threads).
model.roi_heads.box_head.conv_dims = [32, 32]
model.roi_heads.box_head.conv_norm = "GN"
model.roi_heads.box_head.fc_dims = [256]
model.roi_heads.box_predictor.input_shape.channels = 256
model.roi_heads.mask_head.conv_dims = [32, 32]
# Masks of 20x20 (10x10 RoI features, upsampled once) instead of 28x28: these objects span 15-90
# px, and the mask head with its RoIAlign was ~15% of an iteration (11% faster at 10x10).
model.roi_heads.mask_pooler.output_size = 10
model.roi_heads.mask_head.input_shape.width = 10
model.roi_heads.mask_head.input_shape.height = 10

# --- data: 192 px images, flips
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=192, max_size=192),
    L(T.RandomFlip)(horizontal=True, vertical=False),
    L(T.RandomFlip)(horizontal=False, vertical=True),
]
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=192, max_size=192)]
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 1
dataloader.test.num_workers = 0

# --- optimisation
# lr at batch 4. Box AP after a 400-iteration schedule (1 thread each, same encoder, one run each):
# lr 8e-4 10.8, 1.6e-3 14.6, 3.2e-3 10.9; 1.6e-3 with the box head's fc layers at 2e-4: 17.2. Such
# short runs vary by seed (this recipe: 12.8, 13.3, 17.2), so the 1000-iteration figures decide.
# Why the box head's fc layer gets its own lr: AdamW at the encoder's rate drives a wide fc layer
# (3136 -> 256) into dead ReLUs (66% of fc1's units never fired after 400 iterations at 1.6e-3 in
# the two-fc head; 6% at 2e-4), and the RoI classifier lingers at the background prior. The conv
# head above was measured with fc1 at 2e-4.
optimizer.lr = 1.6e-3
optimizer.weight_decay = 0.05
optimizer.params.layer_decay = 0.9  # 1.0 (no decay): 14.7 instead of 17.2 (one 400-iteration run)
optimizer.params.overrides = {
    f"roi_heads.box_head.{name}": {"lr": 2e-4} for name in ("fc1.weight", "fc1.bias")
}

train.max_iter = 1000
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.05),
    warmup_length=0.05,
    warmup_method="linear",
    warmup_factor=0.01,
)
train.device = "cpu"
train.amp.enabled = False
train.checkpointer = dict(period=100000, max_to_keep=1)
train.eval_period = 0
train.log_period = 20
train.output_dir = "./output/demo/finetune"
