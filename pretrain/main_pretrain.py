"""GreenMIM pretraining entry point (torchrun-friendly).

    python pretrain/main_pretrain.py --config configs/pretrain/tiny_cpu.yaml output_dir=out/tiny
    torchrun --nproc_per_node 8 pretrain/main_pretrain.py \
        --config configs/pretrain/greenmim_swin_base_w7.yaml data.path=/datasets/imagenet

Everything after the config is `key.sub=value` overrides; see greenmim/config.py for every key.
The program lives in greenmim.engine.pretrain; this file only runs it.
"""
import sys

if __name__ == "__main__":
    from greenmim.engine.pretrain import main  # installed, or beside this script in a checkout
    sys.exit(main())
