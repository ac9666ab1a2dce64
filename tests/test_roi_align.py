"""SeparableROIAlign / SeparableROIPooler (projects/GreenMIM/greenmim_det/roi_align.py): the
matrix-product backward equals torchvision's RoIAlign backward in float64 for every sampling mode,
and the pooler is a drop-in for detectron2's ROIPooler."""
from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.modeling.poolers import ROIPooler  # noqa: E402
from detectron2.structures import Boxes  # noqa: E402
from torchvision.ops import roi_align  # noqa: E402

from greenmim_det import roi_align as separable  # noqa: E402
from greenmim_det.roi_align import (  # noqa: E402
    SeparableROIPooler,
    roi_align_weights,
    separable_roi_align,
)


def _rois(num_rois: int, num_images: int, image_size: float, generator: torch.Generator) -> torch.Tensor:
    """[R, 5] float64 boxes in pixels: inside, straddling and beyond the border, tiny, huge,
    inverted (x2 < x1), with unsorted image indices and image 1 left without boxes."""
    xy = torch.rand(num_rois, 2, generator=generator, dtype=torch.float64) * (image_size * 1.3) - 0.15 * image_size
    wh = torch.rand(num_rois, 2, generator=generator, dtype=torch.float64) * image_size * 0.6 + 0.2
    boxes = torch.cat([xy, xy + wh], 1)
    boxes[0] = torch.tensor([0.0, 0.0, image_size, image_size])  # the whole image
    boxes[1] = torch.tensor([10.3, 12.1, 10.4, 12.15])  # far below one cell
    boxes[2] = torch.tensor([30.0, 40.0, 20.0, 25.0])  # inverted
    boxes[3] = torch.tensor([-30.0, -20.0, -5.0, -2.0])  # beyond the top-left corner
    boxes[4] = torch.tensor([image_size - 1.0, image_size - 2.0, image_size + 40.0, image_size + 9.0])
    images = torch.tensor([0, 2, 3], dtype=torch.float64)[torch.randint(0, 3, (num_rois,), generator=generator)]
    return torch.cat([images[:, None], boxes], 1)


CASES = list(
    itertools.product(
        [(14, 14), (7, 7), (5, 3)],  # output size
        [1, 2, 3, 0],  # samples per bin (0: adaptive)
        [True, False],  # aligned
    )
)


@pytest.mark.parametrize("output_size,sampling_ratio,aligned", CASES)
def test_backward_matches_torchvision_float64(output_size, sampling_ratio, aligned):
    generator = torch.Generator().manual_seed(sum(output_size) * 10 + sampling_ratio + aligned)
    features = torch.randn(4, 6, 23, 19, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = _rois(40, 4, 80.0, generator)
    scale = 0.25
    reference = roi_align(features, rois, output_size, scale, sampling_ratio, aligned)
    grad_out = torch.randn(reference.shape, generator=generator, dtype=torch.float64)
    (expected,) = torch.autograd.grad(reference, features, grad_out)

    out = separable_roi_align(features, rois, output_size, scale, sampling_ratio, aligned)
    (grad,) = torch.autograd.grad(out, features, grad_out)

    torch.testing.assert_close(out, reference, rtol=0, atol=0)  # the forward is torchvision's
    assert expected.abs().sum() > 0 and expected[1].abs().sum() == 0  # image 1 has no boxes
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sampling_ratio,aligned", [(2, True), (0, True), (1, False)])
def test_weights_reproduce_forward(sampling_ratio, aligned):
    generator = torch.Generator().manual_seed(7)
    features = torch.randn(4, 3, 17, 21, generator=generator, dtype=torch.float64)
    rois = _rois(25, 4, 60.0, generator)
    weights_y, weights_x = roi_align_weights(rois, (17, 21), (7, 5), 0.25, sampling_ratio, aligned)
    rebuilt = torch.einsum("rih,rchw,rjw->rcij", weights_y, features[rois[:, 0].long()], weights_x)
    torch.testing.assert_close(rebuilt, roi_align(features, rois, (7, 5), 0.25, sampling_ratio, aligned),
                               rtol=1e-12, atol=1e-12)


def test_chunked_backward_matches(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(4, 5, 16, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    rois = _rois(30, 4, 64.0, generator)
    (expected,) = torch.autograd.grad(separable_roi_align(features, rois, 7, 0.25, 2, True).sum(), features)
    monkeypatch.setattr(separable, "_SCRATCH_ELEMENTS", 7 * 5 * 16 * 3)  # 3 RoIs per product
    (chunked,) = torch.autograd.grad(separable_roi_align(features, rois, 7, 0.25, 2, True).sum(), features)
    torch.testing.assert_close(chunked, expected, rtol=1e-12, atol=1e-12)


def test_no_rois_gives_zero_gradient():
    features = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = separable_roi_align(features, torch.zeros(0, 5), 7, 0.25, 2, True)
    assert out.shape == (0, 3, 7, 7)
    (grad,) = torch.autograd.grad(out.sum(), features, allow_unused=True)
    assert grad is None or (grad.shape == features.shape and grad.abs().sum() == 0)


def test_pooler_is_a_drop_in_for_detectron2():
    generator = torch.Generator().manual_seed(0)
    scales = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
    args = dict(output_size=7, scales=scales, sampling_ratio=2, pooler_type="ROIAlignV2")
    features = [
        torch.randn(2, 8, 128 // s, 128 // s, generator=generator, dtype=torch.float64, requires_grad=True)
        for s in (4, 8, 16, 32)
    ]
    boxes = []
    for _ in range(2):
        xy = torch.rand(30, 2, generator=generator, dtype=torch.float64) * 100
        wh = torch.rand(30, 2, generator=generator, dtype=torch.float64) * 120 + 2  # spread over levels
        boxes.append(Boxes(torch.cat([xy, xy + wh], 1)))
    reference = ROIPooler(**args)(features, boxes)
    grad_out = torch.randn(reference.shape, generator=generator, dtype=torch.float64)
    expected = torch.autograd.grad(reference, features, grad_out)

    out = SeparableROIPooler(**args)(features, boxes)
    grads = torch.autograd.grad(out, features, grad_out)
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    for grad, want in zip(grads, expected):
        torch.testing.assert_close(grad, want, rtol=1e-12, atol=1e-12)


def test_pooler_rejects_other_pooler_types():
    with pytest.raises(ValueError, match="ROIAlignV2"):
        SeparableROIPooler(output_size=7, scales=(1 / 4,), sampling_ratio=0, pooler_type="ROIPool")
