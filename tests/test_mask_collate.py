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
        assert torch.equal(img_a, img_b) and torch.equal(mask_a.mask, mask_b.mask)
        assert not mask_a.shared and not mask_b.shared
        ref = enc.plan_sparse(mask_a.mask)
        for plan, want in zip(plans_b.attention, ref.attention):
            assert torch.equal(plan[0].gather, want[0].gather) and torch.equal(plan[1].scatter, want[1].scatter)
        x = torch.randn(3, 3, 64, 64)
        with torch.no_grad():
            for a, b in zip(enc(x, mask_b, plans=plans_b), enc(x, mask_b)):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def _run_losses(out_dir, *extra):
    import json
    import os
    from greenmim.config import load_config
    from greenmim.engine.pretrain import run
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, "configs", "pretrain", "tiny_cpu.yaml"), [
        f"output_dir={out_dir}", "data.img_size=128", "data.synthetic_size=8", "train.batch_size=4",
        "train.epochs=2", "train.warmup_epochs=1", "log.every_steps=1", "log.tensorboard=false",
        "log.progress_bar=false", "log.vis_every_epochs=0", "checkpoint.every_epochs=0",
        "model.encoder={embed_dim: 16, depths: [1, 2, 1, 1], num_heads: [1, 2, 2, 4], window_size: 4}",
        "model.decoder_dim=32", "model.decoder_num_heads=2", "export_encoder=false", *extra])
    run(cfg)
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def test_engine_with_static_shapes_and_worker_plans_equals_planning_in_the_step(tmp_path):
    """Whole pretraining runs: static shapes with plans from 2 workers give the losses of dynamic
    plans made in the step (same masks: both come from the loader's collate)."""
    torch.set_num_threads(1)
    ref = _run_losses(tmp_path / "ref", "data.num_workers=0")
    static = _run_losses(tmp_path / "static", "data.num_workers=2", "model.static_shapes=true",
                         "mask.shared=false")
    static_shared = _run_losses(tmp_path / "static_shared", "data.num_workers=2", "model.static_shapes=true")
    assert len(ref) == len(static_shared) == 4
    assert torch.allclose(torch.tensor(static_shared), torch.tensor(ref), rtol=1e-5, atol=1e-6)
    assert len(static) == 4 and all(torch.isfinite(torch.tensor(static)))


def test_every_model_kind_trains_from_the_collated_batches(tmp_path):
    """Dense SimMIM and green Twins (it plans in its forward) train from the worker-made batches
    too (plans None, the mask a UnitMask)."""
    import json
    import os
    from greenmim.config import load_config
    from greenmim.engine.pretrain import run
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    common = ["data.synthetic_size=4", "train.batch_size=2", "train.epochs=1", "train.warmup_epochs=0",
              "log.every_steps=1", "log.tensorboard=false", "log.progress_bar=false",
              "log.vis_every_epochs=0", "checkpoint.every_epochs=0", "export_encoder=false",
              "data.num_workers=1", "model.decoder_dim=32", "model.decoder_num_heads=2"]
    for name, extra in (("twins_tiny_cpu.yaml", ["data.img_size=64", "model.encoder.depths=[1, 1, 1, 1]"]),
                        ("simmim_tiny_cpu.yaml", ["data.img_size=64", "model.encoder.depths=[1, 1, 1, 1]"])):
        out = tmp_path / name
        run(load_config(os.path.join(root, "configs", "pretrain", name), [f"output_dir={out}", *common, *extra]))
        with open(out / "log.jsonl") as f:
            losses = [r["loss"] for r in map(json.loads, f) if "loss" in r]
        assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses))), name
