"""Detectron2's DatasetMapper made robust to bad image files.

`GreenDatasetMapper` reads any image mode the way pretraining does (16-bit rescaled rather than
clipped to white, CMYK, grayscale, palette) and, in training, skips an unreadable image — corrupt,
truncated, absent, not an image, above PIL's pixel limit, or of another size than its json entry
— with a warning naming it; returning None makes detectron2's MapDataset draw another image.
Evaluation needs every image, so there the same problem is a one-line DatasetError.
"""
from __future__ import annotations

import copy
import logging

import numpy as np
import torch

from detectron2.data import DatasetMapper

from .data import DatasetError, single_line

logger = logging.getLogger(__name__)

__all__ = ["GreenDatasetMapper", "read_image_any"]


def read_image_any(path: str, image_format: str = "RGB"):
    """detectron2's read_image (EXIF orientation, then `image_format`: RGB, BGR, L, ...), but any
    PIL mode first becomes 8-bit RGB the way pretraining reads it (16-bit rescaled, not clipped)."""
    from PIL import Image

    from detectron2.data import detection_utils as utils
    from greenmim.data.folder import to_rgb

    with Image.open(path) as img:
        img.load()
        img = utils._apply_exif_orientation(img)
        if image_format not in ("L", "F", "I") and img.mode not in ("RGB", "L"):
            img = to_rgb(img, path)
        return utils.convert_PIL_to_numpy(img, image_format)


class GreenDatasetMapper(DatasetMapper):
    """detectron2's DatasetMapper with robust image reading.

    Any image mode is read (read_image_any). In training an unreadable file (corrupt, truncated,
    absent, not an image, above PIL's pixel limit, or of another size than its json entry) is
    skipped with a warning naming it: returning None makes detectron2's MapDataset draw another
    image. `skipped` counts them in this process. Evaluation needs every image, so there (and
    with strict=True) the same problem is a one-line DatasetError.
    """

    # detectron2's MapDataset retries forever when every image fails: stop after this many in a row
    MAX_CONSECUTIVE_FAILURES = 100

    def __init__(self, *args, strict: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.strict = strict
        self.skipped = 0
        self._in_a_row = 0

    def __call__(self, dataset_dict):
        from PIL import Image

        from detectron2.data import detection_utils as utils
        from detectron2.data import transforms as T

        path = dataset_dict["file_name"]
        try:
            image = read_image_any(path, self.image_format)
            utils.check_image_size(dataset_dict, image)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, utils.SizeMismatchError) as e:
            why = f"{type(e).__name__}: {single_line(e)}"
            if self.strict or not self.is_train:
                raise DatasetError(f"cannot use image {path} ({why}); fix the file or remove it from the json") from None
            self.skipped += 1
            self._in_a_row += 1
            if self._in_a_row >= self.MAX_CONSECUTIVE_FAILURES:
                raise DatasetError(f"{self._in_a_row} images in a row could not be read (last: {path}: {why}); "
                                   "check image_root and the image files")
            logger.warning("skipping unreadable image %s (%s); skipped so far in this process: %d",
                           path, why, self.skipped)
            return None
        self._in_a_row = 0
        # the rest is DatasetMapper.__call__ (detectron2 v0.6) after its image read
        dataset_dict = copy.deepcopy(dataset_dict)
        sem_seg_gt = None
        if "sem_seg_file_name" in dataset_dict:
            sem_seg_gt = utils.read_image(dataset_dict.pop("sem_seg_file_name"), "L").squeeze(2)
        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk)
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict
