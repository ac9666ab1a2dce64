"""Training options read by tools/train_net.py (detectron2's LazyConfig `train` conventions)."""
train = dict(
    output_dir="./output",
    init_checkpoint="",  # pretraining checkpoint, its encoder export, GreenMIM/SimMIM/Swin weights
    max_iter=90000,
    amp=dict(enabled=True),  # used on GPU only; tools/train_net.py turns it off on CPU
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=5000, max_to_keep=3),
    eval_period=5000,  # 0: evaluate only at the end
    log_period=20,
    device="cuda",
    seed=-1,
    cudnn_benchmark=False,
)
