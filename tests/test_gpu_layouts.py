"""Attention outputs and gradients in a GPU's memory layout give the same forward and backward as
the plain CPU path, for every encoder path: Swin and Twins, dense and sparse, shared and
per-sample masks (float64). On CUDA, SDPA returns non-contiguous outputs; code after it that
assumed contiguity failed on the first GPU run while every CPU test passed."""
import pytest
import torch

import greenmim
from greenmim.data.masking import MaskGenerator
from greenmim.models import window_plans
from gpu_layout import sdpa_in_gpu_layout

TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))


def encoder(arch: str):
    torch.manual_seed(0)
    enc = greenmim.build_encoder(arch, img_size=128, **({"window_size": 4} if arch.startswith("swin") else {}),
                                 **TINY)
    with torch.no_grad():  # random bias tables, norms and biases, so the gradients see them
        for name, p in enc.named_parameters():
            if "bias_table" in name or "norm" in name or name.endswith("bias"):
                p.normal_(0, 0.3).add_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
    return enc.double()


def forward_backward(enc, images, mask):
    """Outputs, parameter gradients and the image gradient of a loss that weights every output
    element differently."""
    enc.zero_grad(set_to_none=True)
    x = images.clone().requires_grad_(True)
    outs = enc(x) if mask is None else enc(x, mask)
    g = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
    return [o.detach() for o in outs], grads, x.grad


@pytest.mark.parametrize("arch", ["swin_tiny", "twins_svt_small"])
@pytest.mark.parametrize("path", ["dense", "shared", "per-sample"])
def test_attention_in_gpu_layout_equals_plain_path(arch, path, monkeypatch):
    enc = encoder(arch)
    images = torch.randn(2, 3, 128, 128, dtype=torch.float64)
    mask = None if path == "dense" else MaskGenerator(128, 0.75, shared=path == "shared", seed=3)(2)
    window_plans.set_attention_kernel("matmul")
    try:
        plain = forward_backward(enc, images, mask)
    finally:
        window_plans.set_attention_kernel("auto")
    with sdpa_in_gpu_layout(monkeypatch) as calls:
        gpu = forward_backward(enc, images, mask)
    assert calls, "SDPA was never called: the test would not see a layout bug"
    for a, b in zip(gpu[0], plain[0]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert gpu[1].keys() == plain[1].keys()
    for name in plain[1]:
        torch.testing.assert_close(gpu[1][name], plain[1][name], rtol=1e-9, atol=1e-11, msg=name)
    torch.testing.assert_close(gpu[2], plain[2], rtol=1e-9, atol=1e-11)


def test_the_imitation_catches_a_view_after_the_kernel(monkeypatch):
    """The imitation is what makes the test above able to fail: a view that merges the group and
    slot dimensions of SDPA's output raises in the GPU's layout, as it did on CUDA."""
    q = torch.randn(4, 3, 5, 8, dtype=torch.float64)
    with sdpa_in_gpu_layout(monkeypatch):
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        with pytest.raises(RuntimeError, match="view size is not compatible"):
            out.view(4, 15, 8)


@pytest.mark.parametrize("path", ["dense", "shared", "per-sample"])
def test_swin_biases_reach_the_kernel_in_place(path, monkeypatch):
    """What the GPU kernel is handed: every Swin mask aligned as the memory-efficient kernel reads
    it in place (else PyTorch pads a copy of it in every block), and a batch-shared bias a
    stride-0 view over the batch (never copied, nor saved for the backward, once per sample).
    Window 7: 49-token windows, a size the kernel cannot read unpadded."""
    torch.manual_seed(0)
    enc = greenmim.build_encoder("swin_tiny", img_size=128, window_size=7, embed_dim=16,
                                 depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
    batch = 4
    mask = None if path == "dense" else MaskGenerator(128, 0.75, shared=path == "shared", seed=3)(batch)
    images = torch.randn(batch, 3, 128, 128)
    with sdpa_in_gpu_layout(monkeypatch) as calls:
        outs = enc(images) if mask is None else enc(images, mask)
        sum(o.sum() for o in outs).backward()
    assert len(calls.masks) == len(calls) == 8
    assert all(m["aligned"] for m in calls.masks), calls.masks
    for m in calls.masks:
        if m["batch"] > 1:  # per-sample masks come with batch 1
            assert m["batch_stride"] == 0, m


def test_group_attention_reads_the_gpu_layout_with_indices_made_once_per_plan(monkeypatch):
    """In the GPU's layout the scatter back to tokens reads the kernel's output as it lies, through
    (slot, head) indices that each plan derives once per forward, not once per block."""
    enc = encoder("swin_tiny")
    mask = MaskGenerator(128, 0.75, shared=True, seed=3)(2)
    real = window_plans.GroupPlan._head_slots
    seen = []

    def head_slots(self, num_heads, memo):
        seen.append(memo is not None and ("head_slots", num_heads) in memo)
        return real(self, num_heads, memo)

    monkeypatch.setattr(window_plans.GroupPlan, "_head_slots", head_slots)
    with sdpa_in_gpu_layout(monkeypatch):
        enc(torch.randn(2, 3, 128, 128, dtype=torch.float64), mask)
    assert len(seen) == 8  # every block scattered from the kernel's own layout
    assert seen.count(False) <= 7  # derived at most once per plan: stages 1-3 two plans, stage 4 one
    assert seen.count(True) >= 1
