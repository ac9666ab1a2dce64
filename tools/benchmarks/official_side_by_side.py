#!/usr/bin/env python
"""GreenMIM's pretraining step against the official GreenMIM code's, side by side in one process.

    python tools/benchmarks/official_side_by_side.py --official /path/to/GreenMIM     # GPU: Swin-B, batch 128, bf16
    python tools/benchmarks/official_side_by_side.py --official /path/to/GreenMIM --device cpu --batch-size 2

--official is a checkout of the authors' repository (github.com/LayneH/GreenMIM), imported from
where it lies and never copied into this one. Its Twins module imports spconv at load time; where
spconv is absent a stub module stands in, so its Swin models import (they never use it); its
position embedding uses `np.float`, which NumPy 1.24 removed, so that alias is restored.

Cases, alternated step by step (whole step: forward, loss, backward, fused AdamW, zero_grad;
medians): the official Swin-B GreenMIM (mask drawn inside its forward, one per batch, as in its
training), ours with a shared mask eager and captured (CUDA graphs on a GPU; plans made ahead, as
the loader's workers make them), and the dense SimMIM step. Writes a JSON line per case.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import types

import torch
from gpu_suite import Case, interleave


def import_official(path: str):
    """The official repository's model factory, imported from `path`."""
    try:
        import spconv.pytorch  # noqa: F401
    except ImportError:  # its Twins module subclasses spconv layers at import time
        stub = types.ModuleType("spconv.pytorch")
        stub.SparseConv2d = stub.SubMConv2d = stub.SparseConvTensor = type("Unavailable", (torch.nn.Module,), {})
        sys.modules.setdefault("spconv", types.ModuleType("spconv")).pytorch = stub
        sys.modules["spconv.pytorch"] = stub
    import numpy as np
    if not hasattr(np, "float"):  # its position embedding uses np.float, removed in NumPy 1.24
        np.float = float
    sys.path.insert(0, os.path.abspath(path))
    from modeling import get_pretrain_model
    return get_pretrain_model


class OfficialCase:
    """The official model stepping on the same images (its own mask draw, one per batch)."""

    def __init__(self, factory, name: str, images: torch.Tensor, device: torch.device):
        torch.manual_seed(0)
        self.model = factory(name).to(device)
        self.device, self.images = device, images
        self.amp = torch.bfloat16 if device.type == "cuda" else None
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step(self) -> None:
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            loss = self.model(self.images, mask_ratio=0.75)[0]
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="checkout of github.com/LayneH/GreenMIM")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not os.path.isdir(os.path.join(args.official, "modeling")):
        print(f"error: {args.official} is not a checkout of the official GreenMIM code (no modeling/); "
              "clone github.com/LayneH/GreenMIM and pass its path", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    factory = import_official(args.official)
    s = dict(arch="swin_base", img=224, batch=args.batch_size, enc=dict(window_size=7), dec={})
    captured = "cuda_graphs" if device.type == "cuda" else "compiled"
    cases = {"dense": Case("dense", "swin_base", s, device, False, "eager", **s["enc"]),
             "ours eager": Case("green", "swin_base", s, device, False, "eager", **s["enc"]),
             f"ours {captured}": Case("green", "swin_base", {**s, "compile_backend": "aot_eager"} if device.type == "cpu" else s,
                                      device, False, captured, **s["enc"])}
    cases["official"] = OfficialCase(factory, "green_mim_swin_base_patch4_dec512b1", cases["dense"].images, device)
    timed = interleave(cases, args.iters, args.warmup)
    official_s = timed["official"]["s_per_step"]
    rows = []
    for name, t in timed.items():
        row = {"case": name, "s_per_step": t["s_per_step"], "img_per_s": args.batch_size / t["s_per_step"],
               "peak_mb": t["peak_mb"], "vs_official": official_s / t["s_per_step"],
               "vs_dense": timed["dense"]["s_per_step"] / t["s_per_step"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "batch": args.batch_size, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
