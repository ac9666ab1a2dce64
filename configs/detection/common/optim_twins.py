"""common/optim.py (AdamW, lr / weight decay / exclusions, layer-wise lr decay) for Green Twins-SVT:
the same settings, with the encoder numbering its own layers (PEG weights undecayed).

lr is for a total batch of 16 images; scale it linearly if you change the batch size.
"""
import copy

from greenmim_det.twins_optim import get_encoder_layer_decay_param_groups

from .optim import optimizer as _swin_optimizer

optimizer = copy.deepcopy(_swin_optimizer)
optimizer.params._target_ = get_encoder_layer_decay_param_groups
