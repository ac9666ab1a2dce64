"""GreenMIM classification fine-tuning entry point (torchrun-friendly).

    python pretrain/main_finetune.py --config configs/finetune/tiny_cpu.yaml data.path=DIR
    torchrun --nproc_per_node 8 pretrain/main_finetune.py \
        --config configs/finetune/greenmim_swin_base_w7_in1k.yaml data.path=/datasets/imagenet \
        model.init=output/greenmim_swin_base_w7/encoder.pth
    python pretrain/main_finetune.py --config CFG data.path=DIR --eval-only --checkpoint CKPT

Everything after the config is `key.sub=value` overrides; see greenmim/engine/finetune_config.py.
The program lives in greenmim.engine.finetune; this file only runs it.
"""
import sys

if __name__ == "__main__":
    from greenmim.engine.finetune import main  # installed, or beside this script in a checkout
    sys.exit(main())
