"""The sample contract every reader returns and every stage consumes."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from distill.spaces import GEOMETRIES, SPACES, is_complete

# Geometries whose targets fix depth up to scale or better: GP2 applies its UTS term to them.


class SampleError(ValueError):
    """A sample that cannot be read or is malformed; the message names the file or key."""


@dataclass
class Sample:
    """One labeled (or unlabeled) image.

    image: uint8 [H, W, 3] RGB. target: float32 [H, W] in ``space``; valid: bool [H, W].
    space: ``depth`` | ``disparity`` | ``log_depth``; geometry: ``metric`` | ``uts`` | ``utss`` | ``none``
    (``none``: unlabeled, target all zeros and valid all false). intrinsics: optional 3x3 float64
    pinhole matrix for this image's pixel grid. confidence: optional float32 [H, W] in [0, 1]
    (pseudo-labels with test-time augmentation).
    """

    image: np.ndarray
    target: np.ndarray
    valid: np.ndarray
    space: str
    geometry: str
    dataset: str
    key: str
    intrinsics: np.ndarray | None = None
    confidence: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    # Shards labeled by several teachers: every teacher's label by name (the fields above hold the
    # first teacher's); empty otherwise. ``distill.data.shards.choose_teacher`` picks one per sample.
    teacher_labels: dict = field(default_factory=dict)

    def __post_init__(self):
        where = f"{self.dataset}/{self.key}"
        if self.space not in SPACES:
            raise SampleError(f"{where}: unknown space {self.space!r}; valid: {', '.join(SPACES)}")
        if self.geometry not in GEOMETRIES:
            raise SampleError(f"{where}: unknown geometry {self.geometry!r}; valid: {', '.join(GEOMETRIES)}")
        if self.image.dtype != np.uint8 or self.image.ndim != 3 or self.image.shape[2] != 3:
            raise SampleError(f"{where}: image must be uint8 [H, W, 3], got {self.image.dtype} {self.image.shape}")
        hw = self.image.shape[:2]
        if self.target.shape != hw or self.valid.shape != hw:
            raise SampleError(f"{where}: target {self.target.shape} / valid {self.valid.shape} do not match image {hw}")
        self.target = self.target.astype(np.float32, copy=False)
        self.valid = self.valid.astype(bool, copy=False) & np.isfinite(self.target)

    @property
    def complete(self) -> bool:
        return is_complete(self.geometry)

    @classmethod
    def unlabeled(cls, image: np.ndarray, dataset: str, key: str, **kwargs) -> "Sample":
        h, w = image.shape[:2]
        return cls(image, np.zeros((h, w), np.float32), np.zeros((h, w), bool), "depth", "none", dataset, key, **kwargs)


@dataclass
class TeacherLabel:
    """One teacher's label of a sample: float32 target [H, W] in ``space``, valid mask, confidence or None."""

    target: np.ndarray
    valid: np.ndarray
    space: str
    geometry: str
    confidence: np.ndarray | None = None
