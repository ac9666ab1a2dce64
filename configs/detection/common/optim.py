"""AdamW with layer-wise lr decay (Swin and Twins encoders number their own layers); no weight
decay on norms, biases, bias tables.

lr is for a total batch of 16 images; scale it linearly if you change the batch size.
"""
import torch

from detectron2.config import LazyCall as L

from greenmim_det.optim import get_encoder_layer_decay_param_groups

optimizer = L(torch.optim.AdamW)(
    params=L(get_encoder_layer_decay_param_groups)(
        # params.model is set to the model object by tools/train_net.py before instantiating
        base_lr="${..lr}",
        weight_decay="${..weight_decay}",
        layer_decay=0.9,
        weight_decay_norm=0.0,
    ),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.05,
    # one kernel for all parameters (CPU and CUDA) instead of a Python loop over them: 2% of a
    # CPU demo iteration, more with Swin-B's 88 M parameters
    fused=True,
)
