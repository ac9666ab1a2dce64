"""The captured step modes are refused before the first step, with one line naming what to set,
when the config cannot give them one shape per step and a host-free step."""
import pytest
import torch

from greenmim.config import ConfigError, load_config
from greenmim.engine.step_modes import check_compile, graphed_step


def config(*overrides):
    return load_config("configs/pretrain/tiny_cpu.yaml", list(overrides))


@pytest.mark.parametrize("overrides,match", [
    (["train.compile=fast"], r"train.compile='fast' is not one of default, .*; or leave it empty"),
    (["train.compile=default", "model.static_shapes=false"], r"needs model.static_shapes=true .*set those or train.compile=none"),
    (["train.compile=default", "model.static_shapes=true", "mask.in_workers=false"], r"needs mask.in_workers=true"),
])
def test_compile_refused_with_one_line(overrides, match):
    with pytest.raises(ConfigError, match=match) as err:
        check_compile(config(*overrides))
    assert "\n" not in str(err.value)


def test_compile_accepted_and_normalised():
    assert check_compile(config("train.compile=default", "model.static_shapes=true")) == "default"
    assert check_compile(config("train.compile=none")) is None
    # the dense baseline has one shape per step without static shapes
    assert check_compile(config("train.compile=default", "model.type=simmim", "model.static_shapes=false")) == "default"


def test_cuda_graphs_refused_on_a_cpu_with_everything_missing_named():
    cfg = config("train.cuda_graphs=true", "train.accum_iter=2", "model.static_shapes=false")
    with pytest.raises(ConfigError, match=r"needs a CUDA device, train.accum_iter=1, model.static_shapes=true"):
        graphed_step(cfg, torch.nn.Linear(1, 1), torch.device("cpu"), None)
    assert graphed_step(config(), torch.nn.Linear(1, 1), torch.device("cpu"), None) is None


def test_processes_sharing_gpus_use_gloo():
    """nccl refuses two ranks on one device: more processes than GPUs on a node take gloo."""
    from greenmim.engine.dist import backend_for
    assert backend_for(8, 8) == "nccl" and backend_for(1, 1) == "nccl"
    assert backend_for(2, 1) == "gloo" and backend_for(16, 8) == "gloo"
