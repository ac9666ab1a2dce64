"""Planning: GroupPlan.build (vectorised pair tensors and slots) against the previous element-wise
build, the picklable SparsePlanner (plans made ahead, e.g. in DataLoader workers), table=None."""
import pickle

import pytest
import torch

import greenmim
from greenmim.data.masking import MaskGenerator
from greenmim.models.token_layout import stage_layouts
from greenmim.models.window_plans import GroupPlan, relative_position_index


def reference_pairs(plan, rows, cols, window, shift, height, width):
    """The previous construction: rel index from true coordinates (clamped), mask from window ids,
    every pair built element-wise. -> (rel [G, g, g], allowed [G, g, g], valid [G, g])."""
    p, n = rows.shape
    offset = (window - shift) % window
    n_wr, n_wc = (height - 1 + offset) // window + 1, (width - 1 + offset) // window + 1
    win = ((torch.arange(p).unsqueeze(1) * n_wr + (rows + offset) // window) * n_wc
           + (cols + offset) // window).flatten()
    g, n_groups = plan.capacity, plan.num_groups
    valid = torch.zeros(n_groups * g, dtype=torch.bool)
    valid[plan.scatter] = True
    slot_win = torch.where(valid, win[plan.gather], -1).view(n_groups, g)
    slot_r = rows.flatten()[plan.gather].view(n_groups, g)
    slot_c = cols.flatten()[plan.gather].view(n_groups, g)
    rel = relative_position_index(slot_r[:, :, None] - slot_r[:, None], slot_c[:, :, None] - slot_c[:, None], window)
    rel = rel.clamp(0, (2 * window - 1) ** 2 - 1)
    allowed = (slot_win[:, :, None] == slot_win[:, None]) & (slot_win >= 0).unsqueeze(1)
    return rel, allowed, valid.view(n_groups, g), win


@pytest.mark.parametrize("size,ratio,shared,batch", [(224, 0.75, True, 1), (224, 0.75, False, 16),
                                                     (192, 0.5, False, 5), (224, 0.9, False, 32)])
def test_vectorised_plan_matches_elementwise(size, ratio, shared, batch):
    enc = greenmim.build_encoder("swin_tiny", img_size=size)
    mask = MaskGenerator(size, ratio, shared=shared, seed=7)(batch)
    layouts = stage_layouts(mask[:1] if shared else mask, 4, enc.tokens_per_unit)
    for stage, lay in zip(enc.layers, layouts):
        for shift in {0, stage.shift_size}:
            plan = GroupPlan.build(lay.rows, lay.cols, lay.height, lay.width, stage.window_size, shift)
            rel, allowed, valid, win = reference_pairs(plan, lay.rows, lay.cols, stage.window_size, shift,
                                                      lay.height, lay.width)
            n = lay.rows.numel()
            # slots: a bijection from tokens to non-padding slots; each group holds whole windows
            assert torch.equal(plan.gather[plan.scatter], torch.arange(n))
            assert int(valid.sum()) == n
            real = valid[:, :, None] & valid[:, None, :]
            # mask: real pairs allowed exactly within a window, never real <-> padding
            is_open = plan.attn_mask.squeeze(1) == 0
            assert torch.equal(is_open & real, allowed & real)
            assert not (is_open & (valid[:, :, None] ^ valid[:, None, :])).any()
            assert is_open.any(-1).all()  # no empty row
            # bias rows agree on every pair that attention uses
            assert torch.equal(plan.rel_index[allowed], rel[allowed])
            assert int(plan.rel_index.min()) >= 0 and int(plan.rel_index.max()) < (2 * stage.window_size - 1) ** 2
            # grouping: windows are never split across groups
            group_of_token = plan.scatter // plan.capacity
            first = torch.full((int(win.max()) + 1,), -1).scatter_reduce(0, win, group_of_token, "amax")
            assert torch.equal(first[win], group_of_token)


def test_attention_without_bias_table():
    """table=None (attention without relative position bias, e.g. Twins' local attention) equals a
    zero bias table."""
    rows, cols = torch.meshgrid(torch.arange(14), torch.arange(14), indexing="ij")
    keep = torch.rand(14, 14, generator=torch.Generator().manual_seed(1)) < 0.5
    rows, cols = rows[keep].view(1, -1), cols[keep].view(1, -1)
    plan = GroupPlan.build(rows, cols, 14, 14, window=7, shift=3)
    qkv = torch.randn(2, rows.shape[1], 3 * 8, dtype=torch.float64)
    zero = torch.zeros(13 * 13, 2, dtype=torch.float64)
    torch.testing.assert_close(plan.attention(qkv, None, 2), plan.attention(qkv, zero, 2))


@pytest.mark.parametrize("shared", [True, False])
def test_planner_pickles_and_plans_made_ahead_give_the_same_output(shared):
    torch.manual_seed(0)
    enc = greenmim.build_encoder("swin_tiny", img_size=128, embed_dim=16, depths=(1, 2, 1, 1),
                                 num_heads=(1, 2, 2, 4)).double()
    mask = MaskGenerator(128, 0.5, shared=shared, seed=3)(2)
    planner = pickle.loads(pickle.dumps(enc.planner()))  # what a DataLoader worker receives
    plans = pickle.loads(pickle.dumps(planner(mask[:1] if shared else mask)))  # and sends back
    x = torch.randn(2, 3, 128, 128, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(enc(x, mask), enc(x, mask, plans=plans)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="plans were made for"):
        enc(torch.randn(3, 3, 128, 128, dtype=torch.float64), MaskGenerator(128, 0.5, shared=False)(3),
            plans=planner(MaskGenerator(128, 0.5, shared=False)(2)))
