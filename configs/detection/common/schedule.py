"""Step schedules for a total batch of 16: 1x = 90k iterations (~12 COCO epochs), 3x = 270k.

The schedulers are scale-invariant (positions are fractions of train.max_iter), so shortening
train.max_iter shortens the whole schedule, warm-up included.
"""
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler


def step_schedule(max_iter: int, steps, warmup_iters: int = 1000):
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[1.0, 0.1, 0.01], milestones=list(steps), num_updates=max_iter
        ),
        warmup_length=warmup_iters / max_iter,
        warmup_method="linear",
        warmup_factor=0.001,
    )


max_iter_1x = 90000
max_iter_3x = 270000
lr_multiplier_1x = step_schedule(max_iter_1x, (60000, 80000))
lr_multiplier_3x = step_schedule(max_iter_3x, (210000, 250000))
