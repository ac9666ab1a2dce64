"""GreenMIM classification fine-tuning entry point (torchrun-friendly).

    python pretrain/main_finetune.py --config configs/finetune/tiny_cpu.yaml data.path=DIR
    torchrun --nproc_per_node 8 pretrain/main_finetune.py \
        --config configs/finetune/greenmim_swin_base_w7_in1k.yaml data.path=/datasets/imagenet \
        model.init=output/greenmim_swin_base_w7/encoder.pth
    python pretrain/main_finetune.py --config CFG data.path=DIR --eval-only --checkpoint CKPT

Everything after the config is `key.sub=value` overrides; see greenmim/engine/finetune_config.py.
The program lives in greenmim.engine.finetune; this file only makes it runnable from a checkout.
"""
import os
import sys

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # a checkout without install
    from greenmim.engine.finetune import main
    sys.exit(main())
