"""What several test files share: one-thread torch, tools/ scripts as modules, synthetic COCO.

Fixtures (by name in a test's arguments):
    one_thread   torch.set_num_threads(1) for the test, restored after it
    make_coco    make_coco(num_train=, num_val=, img_size=, folder=) -> generate_synthetic_coco's
                 dict (train_json, train_images, val_json, val_images, root), in a fresh folder
Helpers (import them: `from conftest import load_tool, coco_overrides`):
    load_tool(name)            tools/<name>.py as a module ("benchmarks/detection" for subfolders)
    coco_overrides(coco, ...)  detectron2 config overrides that train and test on such a set
"""
from __future__ import annotations

import importlib.util
import os
from typing import Dict, List

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIDE = 64  # detection tests: train/test resize (short side and max size)


def load_tool(name: str):
    """tools/<name>.py, executed as a fresh module (its `if __name__ == "__main__"` part is not run):
    a tool is a script, not an importable module, and each call gets its own copy."""
    path = os.path.join(REPO, "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_greenmim_tool_{name.replace('/', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread():
    """Runs the test on one torch thread: the 2-core machines are shared, and numerical comparisons
    must not depend on how many threads split a reduction (or on spconv's CPU kernels, which
    returned wrong values under contention with several threads)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def make_coco(tmp_path_factory):
    """A factory of synthetic COCO-format sets (5 shape classes): each call writes a new one under
    a fresh temporary folder named `folder`."""
    from greenmim.data.synthetic import generate_synthetic_coco

    def make(num_train: int, num_val: int, img_size: int, folder: str = "det", seed: int = 0) -> Dict[str, str]:
        return generate_synthetic_coco(str(tmp_path_factory.mktemp(folder) / "shapes"), num_train=num_train,
                                       num_val=num_val, img_size=img_size, seed=seed)

    return make


def coco_overrides(coco: Dict[str, str], num_train_iters_batch: int = 2,
                   dataset: str = "greenmim_test_shapes") -> List[str]:
    """LazyConfig overrides that train on coco's train split and test on its val split, on the CPU,
    resized to SIDE. `dataset` names the two splits in detectron2's catalog, which is global to
    the process: test files that register other files need other names."""
    return [
        "model.roi_heads.num_classes=5",
        f"dataloader.train.dataset.names={dataset}_train",
        f"dataloader.train.dataset.json_file={coco['train_json']}",
        f"dataloader.train.dataset.image_root={coco['train_images']}",
        f"dataloader.test.dataset.names={dataset}_val",
        f"dataloader.test.dataset.json_file={coco['val_json']}",
        f"dataloader.test.dataset.image_root={coco['val_images']}",
        f"dataloader.train.total_batch_size={num_train_iters_batch}",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        f"dataloader.test.mapper.augmentations.0.short_edge_length={SIDE}",
        f"dataloader.test.mapper.augmentations.0.max_size={SIDE}",
        f"dataloader.train.mapper.augmentations.0.max_size={SIDE}",
        "train.device=cpu",
    ]
