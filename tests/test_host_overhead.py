"""The GPU-step proxy traced on `meta` (tools/benchmarks/host_overhead.py): its stand-in for CUDA's
SDPA pads unaligned masks as the kernel does, no step hands SDPA such a mask, and the green step
copies less than the dense one. (Whether biases are aligned without a copy: test_gpu_layouts.)"""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools", "benchmarks"))
import host_overhead  # noqa: E402


def test_sdpa_stand_in_pads_only_unaligned_masks():
    q = torch.empty(2, 3, 49, 32, device="meta")
    sdpa = host_overhead._MemEfficientAttention
    for mask, padded in ((torch.empty(2, 3, 49, 49, device="meta"), True),
                         (torch.empty(2, 3, 49, 56, device="meta")[..., :49], False)):
        sdpa.padded_bytes = 0
        host_overhead.sdpa_as_on_cuda(q, q, q, attn_mask=mask)
        assert (sdpa.padded_bytes > 0) == padded


def test_op_counter_counts_copies_not_views():
    x = torch.zeros(4, 8)
    with host_overhead.OpCounter() as counter:
        x.t().contiguous()
        x.view(8, 4)
    assert counter.kernels == 1 and counter.copy_bytes == 4 * 8 * 4 and counter.ops == 3


@pytest.mark.parametrize("arch", ["swin_tiny", "twins_svt_small"])
def test_no_padded_attention_mask_and_fewer_copies_than_dense(arch):
    dense = host_overhead.measure(arch, "simmim", True, batch=4, img=224, iters=1)
    assert dense["padded_mask_mb"] == 0
    for shared in (True, False):
        green = host_overhead.measure(arch, "green", shared, batch=4, img=224, iters=1)
        assert green["padded_mask_mb"] == 0, green
        assert green["copy_mb_per_step"] < dense["copy_mb_per_step"], (green, dense)
    assert F.scaled_dot_product_attention is not host_overhead.sdpa_as_on_cuda  # restored
