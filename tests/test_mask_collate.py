"""Masks and plans made in DataLoader workers: a pure function of (seed, epoch, index), the same
whatever the worker count, and plans equal to those the encoder would make in the step."""
import torch

import greenmim
from greenmim.engine.data import SeededDataset, SyntheticImages, build_loader
from greenmim.engine.mask_collate import MaskCollator
from greenmim.data.transforms import build_pretrain_transform


def loader(workers: int, shared: bool, planner=None):
    base = SyntheticImages(12, 80, build_pretrain_transform(64), seed=0)
    collate = MaskCollator(64, 0.5, shared, seed=3, planner=planner)
    return build_loader(SeededDataset(base, seed=0), 3, 1, 0, 1, seed=0, num_workers=workers, collate=collate)


def test_masks_depend_on_the_samples_only():
    collate = MaskCollator(64, 0.5, shared=False, seed=3)
    a = collate.masks([(0, 5), (0, 7), (1, 5)])
    b = collate.masks([(0, 7), (1, 5), (0, 5)])
    assert torch.equal(a[0], b[2]) and torch.equal(a[1], b[0]) and torch.equal(a[2], b[1])
    assert not torch.equal(a[0], a[2])  # another epoch, another mask
    assert ((~a).flatten(1).sum(1) == 2).all()
    shared = MaskCollator(64, 0.5, shared=True, seed=3).masks([(0, 5), (0, 7)])
    assert torch.equal(shared[0], shared[1])


def test_workers_give_the_batches_one_process_gives_and_plans_match_the_encoder():
    enc = greenmim.build_encoder("swin_tiny", img_size=64, embed_dim=16, depths=(1, 1, 1, 1),
                                 num_heads=(1, 1, 1, 1), window_size=2, static_shapes=True)
    main = list(loader(0, shared=False, planner=enc.planner()))
    workers = list(loader(2, shared=False, planner=enc.planner()))
    assert len(main) == len(workers) == 4
    for (img_a, mask_a, plans_a), (img_b, mask_b, plans_b) in zip(main, workers):
        assert torch.equal(img_a, img_b) and torch.equal(mask_a, mask_b)
        ref = enc.plan_sparse(mask_a)
        for plan, want in zip(plans_b["attention"], ref["attention"]):
            assert torch.equal(plan[0].gather, want[0].gather) and torch.equal(plan[1].scatter, want[1].scatter)
        x = torch.randn(3, 3, 64, 64)
        with torch.no_grad():
            for a, b in zip(enc(x, mask_b, plans=plans_b), enc(x, mask_b)):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
