"""CUDA graphs for the pretraining step: forward + loss + backward recorded once, replayed per step.

With static shapes (model.static_shapes) and plans made in the loader's workers, every tensor of
a green step has the same shape for every mask, so one recorded graph serves the whole run and
the host launches one graph instead of ~1,400 kernels. The images, mask and plans of each step
are copied into the graph's static input buffers; the gradients land in static buffers that the
(fused) optimiser then reads eagerly, so the loss / gradient-norm checks of the engine still run
before any update is applied. A mask that overflowed the tight static table arrives with the
bound table's shapes: a second graph is recorded for it (at most two per run).

Several processes: the graph holds no collective; the gradients are averaged after each replay
with one all-reduce of a flat buffer.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import torch

from . import dist as gdist
from ..models.tensor_tree import map_tensors


def _tensors(obj) -> List[torch.Tensor]:
    """Every tensor inside images / mask / plans, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj) for t in _tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if dataclasses.is_dataclass(obj):
        return [t for f in dataclasses.fields(obj) for t in _tensors(getattr(obj, f.name))]
    return []


def _signature(inputs) -> Tuple:
    return tuple((tuple(t.shape), t.dtype) for t in _tensors(inputs))


class _Recorded:
    def __init__(self, graph, static_inputs, loss, grads):
        self.graph, self.static_inputs, self.loss, self.grads = graph, static_inputs, loss, grads


class GraphedStep:
    """Replays forward + loss + backward of `model` (a bare module, not DDP) from CUDA graphs.

    Call it as the engine's forward_backward(images, mask, plans) -> loss (detached): it leaves
    the gradients in p.grad (as a backward would, accumulate-free: accum_iter must be 1).
    """

    max_graphs = 2

    def __init__(self, model: torch.nn.Module, amp_dtype: Optional[torch.dtype], warmup: int = 3):
        self.model, self.amp_dtype, self.warmup = model, amp_dtype, warmup
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.graphs: Dict[Tuple, _Recorded] = {}
        self.pool = None
        self.replays = 0

    def _run(self, images, mask, plans) -> torch.Tensor:
        # No autocast weight-cast cache: cached casts made while recording would be freed when the
        # context exits, and the graph's replays would then write into memory it no longer owns.
        with torch.autocast("cuda", dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None,
                            cache_enabled=False):
            loss = self.model(images, mask, plans)["loss"]
        loss.backward()
        return loss.detach()

    def _record(self, inputs) -> _Recorded:
        static_inputs = map_tensors(inputs, torch.clone)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph (allocator, cuBLAS workspaces)
            for _ in range(self.warmup):
                for p in self.params:
                    p.grad = None
                self._run(*static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        for p in self.params:
            p.grad = None
        graph = torch.cuda.CUDAGraph()
        # thread_local: the loader's decode thread may allocate and synchronise on its own stream
        # while this records; only this thread's calls must be capture-safe.
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            loss = self._run(*static_inputs)
        self.pool = graph.pool()
        grads = [p.grad for p in self.params]
        return _Recorded(graph, static_inputs, loss, grads)

    def __call__(self, images, mask, plans) -> torch.Tensor:
        inputs = (images, mask.to(images.device, non_blocking=True), plans)
        key = _signature(inputs)
        rec = self.graphs.get(key)
        if rec is None:
            if len(self.graphs) >= self.max_graphs:
                raise RuntimeError(f"a step with a new shape signature after {self.max_graphs} recorded "
                                   "graphs; CUDA graphs need model.static_shapes=true")
            rec = self.graphs[key] = self._record(inputs)
        for dst, src in zip(_tensors(rec.static_inputs), _tensors(inputs)):
            dst.copy_(src, non_blocking=True)
        rec.graph.replay()
        self.replays += 1
        for p, g in zip(self.params, rec.grads):
            p.grad = g
        if gdist.get_world_size() > 1:
            _average_gradients(rec.grads)
        return rec.loss


def _average_gradients(grads: List[torch.Tensor]) -> None:
    """One all-reduce of every gradient through a flat buffer, then the mean written back."""
    flat = torch._utils._flatten_dense_tensors(grads)
    torch.distributed.all_reduce(flat)
    flat /= gdist.get_world_size()
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)
