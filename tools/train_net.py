#!/usr/bin/env python
"""Train / evaluate a detector from a LazyConfig (Mask R-CNN + Green Swin FPN on COCO).

    python tools/train_net.py --config-file configs/detection/mask_rcnn_green_swin_b_fpn_3x.py \
        --num-gpus 8 train.init_checkpoint=/path/to/pretrain_checkpoint.pth
    python tools/train_net.py --config-file <cfg> --eval-only train.init_checkpoint=output/model_final.pth
    torchrun --standalone --nproc_per_node 2 tools/train_net.py --config-file <cfg> train.device=cpu

The program lives in greenmim_det.train_net (installed as `greenmim-train-det`, where its docstring
lists every option); this file only runs it, so the path works in a checkout as well.
"""
from greenmim_det.train_net import cli, do_test, do_train, main, parse_args, prepare_config  # noqa: F401

if __name__ == "__main__":
    cli()
