"""Capture: with plans made ahead (static shapes), the GreenMIM step has no host sync and no
data-dependent Python, so torch.compile(fullgraph=True, dynamic=False) captures forward and
backward once for every mask, equal to eager."""
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch.utils._python_dispatch import TorchDispatchMode

import greenmim
from greenmim.data.masking import MaskGenerator
from greenmim.models.mim import GreenMIM

SMALL = dict(img_size=128, embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), window_size=4)


def build(static: bool = True, arch: str = "swin_tiny") -> GreenMIM:
    torch.manual_seed(0)
    size = SMALL if arch.startswith("swin") else {k: v for k, v in SMALL.items() if k != "window_size"}
    enc = greenmim.build_encoder(arch, static_shapes=static, **size)
    return GreenMIM(enc, img_size=128, decoder_dim=32, decoder_num_heads=2).double()


def step(model, images, mask, plans):
    model.zero_grad(set_to_none=True)
    loss = model(images, mask, plans)["loss"]
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("arch,shared,unit_mask", [("swin_tiny", True, False), ("swin_tiny", False, False),
                                                   ("swin_tiny", True, True), ("twins_svt_small", True, True),
                                                   ("twins_svt_small", False, True)],
                         ids=["shared", "per-sample", "shared-UnitMask", "twins-shared", "twins-per-sample"])
def test_compile_one_graph_for_all_masks_equal_to_eager(arch, shared, unit_mask):
    torch._dynamo.reset()
    eager, model = build(arch=arch), build(arch=arch)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=False)
    planner = model.encoder.planner()
    gen = MaskGenerator(128, 0.75, shared=shared, seed=4)
    images = torch.randn(2, 3, 128, 128, dtype=torch.float64)
    steps = 0
    while steps < 4:
        mask = gen.draw(2) if unit_mask else gen(2)  # a UnitMask: what the loader's workers make
        plans = planner(mask.plan_mask if unit_mask else mask[:1] if shared else mask)
        if plans.static_fallback:
            continue
        loss_e, grads_e = step(eager, images, mask, plans)
        loss_c, grads_c = step(compiled, images, mask, plans)
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-12, atol=1e-12)
        for a, b in zip(grads_c, grads_e):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        steps += 1
    assert counter.frame_count == 1  # one graph, no recompile over four masks


class HostReads(TorchDispatchMode):
    """Records the ops that copy a tensor value to the host (a device sync on a GPU)."""

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten._local_scalar_dense, torch.ops.aten.item):
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("arch", ["swin_tiny", "twins_svt_small"])
@pytest.mark.parametrize("static", [True, False])
def test_step_with_plans_never_reads_a_value_on_the_host(static, arch):
    model = build(static, arch)
    mask = MaskGenerator(128, 0.75, shared=False, seed=1)(2)
    plans = model.encoder.planner()(mask)
    images = torch.randn(2, 3, 128, 128, dtype=torch.float64)
    with HostReads() as mode:
        model(images, mask, plans)["loss"].backward()
    assert mode.reads == []
    with HostReads() as mode:  # without plans the encoder validates and plans: it must read
        model(images, mask)["loss"]
    assert mode.reads
