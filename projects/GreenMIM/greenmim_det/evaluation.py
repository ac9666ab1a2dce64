"""COCO box/mask evaluation that uses a fast C++ COCOeval whichever detectron2 is installed.

detectron2's fast COCOeval (`COCOeval_opt`) needs its own compiled `_C` ops, which offline
installs of detectron2 lack. `GreenCOCOEvaluator` picks the backend once:

  * "detectron2":       detectron2's own COCOeval_opt, when its C++ ops are built;
  * "faster_coco_eval": faster-coco-eval's COCOeval_faster (same results, maintained C++);
  * "pycocotools":      the pure-Python reference (slow on full COCO, fine for small sets).

Everything else (prediction conversion, the per-category tables, instances_results.json) is
detectron2's COCOEvaluator; the metrics are also written to ``<output_dir>/coco_metrics.json``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from typing import Dict, Iterator, Optional

from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import coco_evaluation as _d2_coco_evaluation
from detectron2.utils import comm

from .data import ensure_dataset

logger = logging.getLogger(__name__)

__all__ = ["GreenCOCOEvaluator", "resolve_coco_eval_backend", "BACKENDS"]

BACKENDS = ("auto", "detectron2", "faster_coco_eval", "pycocotools")


def _detectron2_fast_eval_built() -> bool:
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return all(hasattr(_C, n) for n in ("COCOevalEvaluateImages", "COCOevalAccumulate", "InstanceAnnotation"))


def _faster_coco_eval_available() -> bool:
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_coco_eval_backend(backend: str = "auto") -> str:
    """The backend that `backend` stands for on this install (raises if it is not available)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown COCO eval backend {backend!r}; expected one of {BACKENDS}")
    if backend == "auto":
        if _detectron2_fast_eval_built():
            return "detectron2"
        if _faster_coco_eval_available():
            return "faster_coco_eval"
        return "pycocotools"
    if backend == "detectron2" and not _detectron2_fast_eval_built():
        raise RuntimeError("detectron2's C++ COCOeval is not built here; use backend='faster_coco_eval'")
    if backend == "faster_coco_eval" and not _faster_coco_eval_available():
        raise RuntimeError("faster-coco-eval is not installed (pip install faster-coco-eval)")
    return backend


@contextlib.contextmanager
def _coco_eval_impl(backend: str) -> Iterator[None]:
    """Points detectron2's coco_evaluation module at faster-coco-eval's COCOeval for a while.

    Both detectron2 v0.6 and current upstream pick `COCOeval_opt` by that module-level name when
    use_fast_impl=True, so swapping the name is the smallest change that reuses all of their
    prediction handling and table printing.
    """
    if backend != "faster_coco_eval":
        yield
        return
    from faster_coco_eval import COCOeval_faster

    class _QuietCOCOevalFaster(COCOeval_faster):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("print_function", logger.debug)
            super().__init__(*args, **kwargs)

    previous = getattr(_d2_coco_evaluation, "COCOeval_opt", None)
    _d2_coco_evaluation.COCOeval_opt = _QuietCOCOevalFaster
    try:
        yield
    finally:
        _d2_coco_evaluation.COCOeval_opt = previous


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # strict JSON has no NaN; a missing AP (no predictions) becomes null
    if hasattr(obj, "item"):
        return _json_safe(obj.item())
    return obj


class GreenCOCOEvaluator(COCOEvaluator):
    """detectron2's COCOEvaluator with a backend choice, dataset checks and a metrics json.

    Args:
        dataset_name: registered dataset (or one to register from json_file / image_root).
        tasks: ("bbox", "segm", ...) or None to infer from the predictions.
        distributed: gather predictions from all ranks.
        output_dir: where coco_instances_results.json and coco_metrics.json are written.
        json_file, image_root: register `dataset_name` from a COCO json first (see data.py).
        backend: "auto" (default), "detectron2", "faster_coco_eval" or "pycocotools".
        **kwargs: passed on to COCOEvaluator (e.g. kpt_oks_sigmas, max_dets_per_image).
    """

    def __init__(
        self,
        dataset_name: str,
        tasks=None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        json_file: Optional[str] = None,
        image_root: Optional[str] = None,
        backend: str = "auto",
        **kwargs,
    ):
        ensure_dataset(dataset_name, json_file, image_root)
        self._backend = resolve_coco_eval_backend(backend)
        kwargs.pop("use_fast_impl", None)
        super().__init__(
            dataset_name,
            tasks=tasks,
            distributed=distributed,
            output_dir=output_dir,
            use_fast_impl=self._backend != "pycocotools",
            **kwargs,
        )
        # upstream detectron2 turns use_fast_impl off when its own fast path failed to import;
        # faster-coco-eval stands in for it, so keep the fast path on
        self._use_fast_impl = self._backend != "pycocotools"
        self._dataset_name = dataset_name
        logger.info("COCO evaluation of '%s' with the %s backend", dataset_name, self._backend)

    def evaluate(self, img_ids=None) -> Dict:
        with _coco_eval_impl(self._backend):
            results = super().evaluate(img_ids)
        if results and self._output_dir and comm.is_main_process():
            os.makedirs(self._output_dir, exist_ok=True)
            path = os.path.join(self._output_dir, "coco_metrics.json")
            with open(path, "w") as f:
                json.dump(
                    {"dataset": self._dataset_name, "backend": self._backend, "metrics": _json_safe(dict(results))},
                    f,
                    indent=2,
                )
            logger.info("COCO metrics written to %s", path)
        return results
