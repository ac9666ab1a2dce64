"""torch.compile of the pretraining models: no host tensor inside the compiled region, and the
default inductor backend (which generates code, unlike aot_eager) equal to eager.

Inductor compiles every op on a host tensor inside the region as host C++ code. On a GPU machine
that code failed to compile while the CPU tests passed (they used aot_eager, which generates
nothing), and a host -> device copy inside the region would keep CUDA graphs out anyway. The first
test traces the models on the `meta` device, where a tensor made on the host stands out."""
import copy

import pytest
import torch

import greenmim
from greenmim.data.masking import MaskGenerator
from greenmim.models.mim import GreenMIM
from greenmim.models.simmim import SimMIM
from greenmim.models.tensor_tree import plans_to

TINY = dict(img_size=128, embed_dim=16, depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4))
TINY_SWIN = dict(TINY, window_size=4)


def build(kind: str, arch: str, size: dict, **enc_kw):
    torch.manual_seed(0)
    enc = greenmim.build_encoder(arch, **size, **enc_kw)
    if kind == "simmim":
        return SimMIM(enc)
    return GreenMIM(enc, img_size=size["img_size"], decoder_dim=16, decoder_num_heads=1)


class HostTensors:
    """A dynamo backend that lists the graph's nodes whose values live on the CPU."""

    def __init__(self):
        self.found = []

    def __call__(self, gm, example_inputs):
        for node in gm.graph.nodes:
            value = node.meta.get("example_value")
            for t in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                    where = (node.meta.get("stack_trace") or "").strip().splitlines()[-2:]
                    self.found.append(f"{node.op} {node.target}: {' '.join(s.strip() for s in where)}")
        return gm.forward


CASES = [("simmim", "swin_tiny", None), ("simmim", "twins_svt_small", None),
         ("green", "swin_tiny", True), ("green", "swin_tiny", False),
         ("green", "twins_svt_small", True), ("green", "twins_svt_small", False)]


@pytest.mark.parametrize("kind,arch,shared", CASES,
                         ids=[f"{k}-{a}-{'' if s is None else 'shared' if s else 'per-sample'}" for k, a, s in CASES])
def test_no_host_tensor_inside_the_compiled_region(kind, arch, shared):
    """The model, images, mask and plans on `meta`, as the engine hands them to a compiled model on
    a GPU (plans made in the loader's workers and moved with the batch): every value the
    compiled region computes must be on that device."""
    torch._dynamo.reset()
    size = TINY_SWIN if arch.startswith("swin") else TINY
    model = build(kind, arch, size, **({"static_shapes": True} if kind == "green" else {}))
    gen = MaskGenerator(128, 0.75, shared=bool(shared), seed=4)
    mask = gen.draw(2)
    plans = model.encoder.planner()(mask.plan_mask) if kind == "green" else None
    meta = torch.device("meta")
    model = model.to(meta)
    backend = HostTensors()
    compiled = torch.compile(model, backend=backend, fullgraph=True, dynamic=False)
    compiled(torch.empty(2, 3, 128, 128, device=meta), mask.to(meta),
             None if plans is None else plans_to(plans, meta))
    assert backend.found == []


@pytest.mark.parametrize("kind", ["simmim", "green"])
def test_inductor_compiled_step_equals_eager(kind):
    """Loss and gradients of the compiled step (default inductor backend) equal eager's over two
    masks, with one compilation (float64 model; the losses are computed in float32)."""
    torch._dynamo.reset()
    size = dict(img_size=64, patch_size=16, embed_dim=8, depths=(2, 1), num_heads=(1, 2), window_size=2)
    eager = build(kind, "swin_tiny", size, **({"static_shapes": True} if kind == "green" else {})).double()
    compiled = torch.compile(copy.deepcopy(eager), fullgraph=True, dynamic=False)
    gen = MaskGenerator(64, 0.75, shared=True, seed=4)
    images = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    planner = eager.encoder.planner() if kind == "green" else None
    for _ in range(2):
        mask = gen.draw(2)
        plans = planner(mask.plan_mask) if planner is not None else None
        results = []
        for model in (eager, compiled):
            model.zero_grad(set_to_none=True)
            loss = model(images, mask, plans)["loss"]
            loss.backward()
            results.append((loss.detach(), [p.grad for p in model.parameters()]))
        (loss_e, grads_e), (loss_c, grads_c) = results
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-6, atol=1e-7)
        for a, b in zip(grads_c, grads_e):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
