"""The group plans' relative position bias: both backwards (matmul on GPUs, per-pair accumulation
on CPUs) equal autograd's backward of the plain gather (float64), for several blocks sharing a
plan and real per-sample plans."""
import pytest
import torch

from greenmim.data.masking import MaskGenerator
from greenmim.models.group_bias import group_bias
from greenmim.models.token_layout import stage_layouts
from greenmim.models.window_plans import GroupPlan


def plain_gather(tables, plan):
    return tables[:, plan.rel_index].permute(0, 4, 1, 2, 3)


@pytest.mark.parametrize("backward", ["matmul", "index"])
@pytest.mark.parametrize("window,shift,shared", [(7, 3, False), (7, 0, True), (4, 2, False), (14, 7, True)])
def test_backwards_equal_the_gather_backward(window, shift, shared, backward):
    mask = MaskGenerator(224, 0.75, shared=shared, seed=window + shift)(6)
    lay = stage_layouts(mask[:1] if shared else mask, 1, 8)[0]
    plan = GroupPlan.build(lay.rows, lay.cols, lay.height, lay.width, window, shift)
    torch.manual_seed(0)
    tables = torch.randn(3, (2 * window - 1) ** 2, 4, dtype=torch.float64, requires_grad=True)
    out = group_bias(tables, plan.slot_code, window, backward)
    ref = plain_gather(tables, plan)
    assert torch.equal(out, ref)
    weight = torch.randn_like(ref)
    grad, = torch.autograd.grad((out * weight).sum(), tables)
    grad_ref, = torch.autograd.grad((ref * weight).sum(), tables)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-11)


@pytest.mark.parametrize("backward", ["matmul", "index"])
def test_gradient_stays_in_the_table_dtype_under_autocast(backward):
    """Under bf16 autocast the reductions run in float32 and the table gets a float32 gradient."""
    mask = MaskGenerator(224, 0.75, shared=False, seed=1)(4)
    lay = stage_layouts(mask, 1, 8)[0]
    plan = GroupPlan.build(lay.rows, lay.cols, lay.height, lay.width, 7, 3)
    tables = torch.randn(1, 169, 2, requires_grad=True)
    weight = torch.randn(1, 2, plan.num_groups, plan.capacity, plan.capacity)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bias = group_bias(tables, plan.slot_code, 7, backward).to(torch.bfloat16)
        loss = (bias.float() * weight).sum()
    grad, = torch.autograd.grad(loss, tables)
    grad_ref, = torch.autograd.grad((plain_gather(tables, plan).to(torch.bfloat16).float() * weight).sum(), tables)
    assert grad.dtype == torch.float32
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-4)


def test_matmul_backward_compiles_into_one_graph():
    """The GPU backward under torch.compile (what train.compile runs there) equals eager."""
    torch._dynamo.reset()
    mask = MaskGenerator(224, 0.75, shared=False, seed=2)(2)
    lay = stage_layouts(mask, 1, 8)[0]
    plan = GroupPlan.build(lay.rows, lay.cols, lay.height, lay.width, 7, 3)
    tables = torch.randn(2, 169, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, plan.num_groups, plan.capacity, plan.capacity, dtype=torch.float64)

    def loss(t, code):
        return (group_bias(t, code, 7, "matmul") * weight).sum()

    grad, = torch.autograd.grad(torch.compile(loss, backend="aot_eager", fullgraph=True)(tables, plan.slot_code), tables)
    grad_ref, = torch.autograd.grad(loss(tables, plan.slot_code), tables)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-11)
