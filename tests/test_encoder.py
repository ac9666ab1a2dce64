"""The green Swin encoder: dense path == timm's Swin, sparse path == dense masked attention."""
import pytest
import torch
from timm.models.swin_transformer import SwinTransformer, checkpoint_filter_fn

import greenmim
from greenmim.data.masking import MaskGenerator

SMALL = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))


def small_encoder(img_size=224, window_size=7, seed=0, **kw):
    torch.manual_seed(seed)
    enc = greenmim.build_encoder("swin_tiny", img_size=img_size, window_size=window_size, **{**SMALL, **kw})
    # Random (not zero) bias tables and LayerNorm affines, so equivalence tests see them.
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "bias_table" in name or "norm" in name:
                p.normal_(0, 0.5 if "bias_table" in name else 0.1).add_(1.0 if name.endswith("weight") else 0.0)
    return enc.double()


def visible_of(dense_maps, mask):
    """Dense [B, C, h, w] maps -> [B, N, C] at visible positions, row-major."""
    out = []
    b = mask.shape[0]
    for i, fmap in enumerate(dense_maps):
        per = 8 >> i
        token_mask = mask.repeat_interleave(per, 1).repeat_interleave(per, 2)
        out.append(fmap.permute(0, 2, 3, 1)[~token_mask].view(b, -1, fmap.shape[1]))
    return out


@pytest.mark.parametrize("img_size,window", [(224, 7), (224, 14), (192, 6)])
def test_dense_matches_timm(img_size, window):
    enc = small_encoder(img_size, window).eval()
    ref = SwinTransformer(img_size=img_size, window_size=window, num_classes=0, **SMALL).double().eval()
    missing, unexpected = ref.load_state_dict(checkpoint_filter_fn(enc.state_dict(), ref), strict=False)
    assert not missing and not unexpected
    x = torch.randn(2, 3, img_size, img_size, dtype=torch.float64)
    with torch.no_grad():
        ours = enc(x)
        theirs = ref.forward_intermediates(x, intermediates_only=True, norm=False)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        scale = 224 // img_size
        assert a.shape == (2, 16 * 2 ** i, img_size // (4 * 2 ** i), img_size // (4 * 2 ** i)) or scale != 1
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# Every size/window with the default ratio, both mask modes; other ratios at 224 / window 7.
CASES = [(size, window, 0.75, shared)
         for size, window in [((224, 224), 7), ((224, 224), 14), ((192, 192), 7), ((160, 256), 7)]
         for shared in (True, False)]
CASES += [((224, 224), 7, ratio, shared) for ratio in (0.5, 0.9) for shared in (True, False)]


@pytest.mark.parametrize("size,window,ratio,shared", CASES)
def test_sparse_matches_masked_dense(size, window, ratio, shared):
    enc = small_encoder(size, window)
    mask = MaskGenerator(size, ratio, shared=shared, seed=int(ratio * 100) + window)(2)
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    weights = None

    def run(fn):
        nonlocal weights
        enc.zero_grad()
        x.grad = None
        outs = fn()
        if weights is None:
            weights = [torch.randn_like(o) for o in outs]
        loss = sum((o * w).sum() for o, w in zip(outs, weights))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
        return [o.detach() for o in outs], grads, x.grad.clone()

    sparse, g_sparse, gx_sparse = run(lambda: enc(x, mask))
    dense, g_dense, gx_dense = run(lambda: visible_of(enc.forward_masked_reference(x, mask), mask))
    for a, b in zip(sparse, dense):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    assert g_sparse.keys() == g_dense.keys()
    for name in g_sparse:
        torch.testing.assert_close(g_sparse[name], g_dense[name], rtol=1e-8, atol=1e-10, msg=name)
    torch.testing.assert_close(gx_sparse, gx_dense, rtol=1e-8, atol=1e-10)


def test_sparse_output_contract():
    enc = small_encoder(224, 7)
    mask = MaskGenerator(224, 0.75, seed=0)(3)
    outs = enc(torch.randn(3, 3, 224, 224, dtype=torch.float64), mask)
    assert [tuple(o.shape) for o in outs] == [(3, 12 * 64, 16), (3, 12 * 16, 32), (3, 12 * 4, 64), (3, 12, 128)]


@pytest.mark.parametrize("shared", [True, False])
def test_masked_pixels_do_not_leak(shared):
    enc = small_encoder(224, 7)
    mask = MaskGenerator(224, 0.75, shared=shared, seed=3)(2)
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    pixel_mask = mask.repeat_interleave(32, 1).repeat_interleave(32, 2).unsqueeze(1)
    x2 = torch.where(pixel_mask, torch.randn_like(x) * 100, x)
    with torch.no_grad():
        for a, b in zip(enc(x, mask), enc(x2, mask)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ratio_zero_equals_dense():
    enc = small_encoder(224, 7)
    mask = MaskGenerator(224, 0.0, seed=0)(2)
    assert not mask.any()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(enc(x, mask), visible_of(enc(x), mask)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_grad_checkpointing_same_result():
    enc = small_encoder(224, 7)
    mask = MaskGenerator(224, 0.75, seed=0)(2)
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    ref = enc(x, mask)[-1].sum()
    ref.backward()
    grads = [p.grad.clone() for p in enc.parameters() if p.grad is not None]
    enc.zero_grad()
    enc.set_grad_checkpointing(True)
    out = enc(x, mask)[-1].sum()
    out.backward()
    torch.testing.assert_close(out, ref)
    for g, p in zip(grads, [p for p in enc.parameters() if p.grad is not None]):
        torch.testing.assert_close(p.grad, g)


def test_mask_token_path_replaces_masked_patches():
    enc = small_encoder(224, 7)
    mask = MaskGenerator(224, 0.75, seed=0)(2)
    token = torch.randn(1, 1, 16, dtype=torch.float64)
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    x2 = torch.where(mask.repeat_interleave(32, 1).repeat_interleave(32, 2).unsqueeze(1), x + 5, x)
    with torch.no_grad():
        a, b = enc(x, mask, mask_token=token), enc(x2, mask, mask_token=token)
    assert a[0].shape == (2, 16, 56, 56)
    for u, v in zip(a, b):  # masked pixels never reach the network: they are replaced
        torch.testing.assert_close(u, v, rtol=0, atol=0)


def test_public_archs_and_param_names():
    assert {"swin_tiny", "swin_small", "swin_base", "swin_large"} <= set(greenmim.list_encoders())
    enc = greenmim.build_encoder("swin_tiny")
    names = set(enc.state_dict())
    for key in ["patch_embed.proj.weight", "patch_embed.norm.weight",
                "layers.0.blocks.1.attn.relative_position_bias_table", "layers.0.blocks.0.attn.qkv.weight",
                "layers.2.blocks.5.mlp.fc2.weight", "layers.2.downsample.reduction.weight",
                "layers.2.downsample.norm.weight", "norm.weight"]:
        assert key in names, key
    assert sum(p.numel() for p in enc.parameters()) == pytest.approx(27.5e6, rel=0.01)


@pytest.mark.parametrize("call,match", [
    (lambda e: e(torch.randn(1, 3, 200, 224)), "multiple of 32"),
    (lambda e: e(torch.randn(1, 3, 224, 224), torch.zeros(1, 6, 7, dtype=torch.bool)), "shape"),
    (lambda e: e(torch.randn(2, 3, 224, 224), torch.tensor([[[True] * 7] * 7, [[False] * 7] * 7])), "same number"),
    (lambda e: e(torch.randn(1, 3, 224, 224), torch.zeros(1, 7, 7)), "bool"),
    (lambda e: MaskGenerator(224, 1.0), r"\[0, 1\)"),
    (lambda e: MaskGenerator(200, 0.75), "multiple of the 32"),
    (lambda e: greenmim.build_encoder("swin_tiny", img_size=100), "multiples of 32"),
    (lambda e: greenmim.build_encoder("swin_huge"), "unknown encoder"),
])
def test_bad_arguments_raise_clear_errors(call, match):
    enc = greenmim.build_encoder("swin_tiny", **SMALL)
    with pytest.raises(ValueError, match=match):
        call(enc)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("shared", [True, False])
def test_ragged_mode_equals_group_mode(shared):
    # FlexAttention has no CPU backward: forward here; the GPU benchmark exercises training.
    enc = small_encoder(128, 7)
    mask = MaskGenerator(128, 0.5, shared=shared, seed=5)(2)
    x = torch.randn(2, 3, 128, 128, dtype=torch.float64)
    with torch.no_grad():
        enc.attn_mode = "group"
        grouped = enc(x, mask)
        enc.attn_mode = "ragged"
        ragged = enc(x, mask)
    for a, b in zip(grouped, ragged):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
