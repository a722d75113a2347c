"""The student stage's configuration: the engine's ``TrainConfig`` plus the teacher (online mode),
the frozen reference of feature alignment, the objective and the perturbations."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from distill.engine import TrainConfig
from distill.labeled_objective import LabeledObjectiveConfig


@dataclass
class PerturbConfig:
    enabled: bool = True  # perturb pseudo-labeled images: colour jitter, blur, CutMix
    color_jitter_p: float = 0.8  # probability of colour jitter per image (offline mode only)
    brightness: float = 0.4  # colour jitter: brightness factor in [1 - x, 1 + x]
    contrast: float = 0.4  # colour jitter: contrast factor in [1 - x, 1 + x]
    saturation: float = 0.4  # colour jitter: saturation factor in [1 - x, 1 + x]
    hue: float = 0.1  # colour jitter: hue shift in [-x, x] (at most 0.5)
    blur_p: float = 0.5  # probability of Gaussian blur per image (offline mode only)
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # Gaussian blur sigma range, px
    cutmix_p: float = 0.5  # probability that a batch's pseudo-labeled rows are CutMix-ed


@dataclass
class StudentObjectiveConfig:
    pseudo_group: str = "pseudo"  # the data group holding pseudo-labeled (or unlabeled, online) images
    trim: float = 0.1  # Depth Anything V2: ignore each sample's 10% largest per-pixel losses
    gradient_weight: float = 2.0  # relative (SSI) students: SSI + gradient matching
    feature_weight: float = 1.0  # 0: no feature alignment
    feature_margin: float = 0.15  # tokens with 1 - cos below this get no feature-alignment loss
    confidence: bool = True  # use shards' confidence maps where present
    confidence_threshold: float = 0.1  # pseudo-label pixels with confidence at most this are ignored
    perturb: PerturbConfig = field(default_factory=PerturbConfig)  # strong perturbations of pseudo-labeled images
    labeled: LabeledObjectiveConfig = field(default_factory=LabeledObjectiveConfig)  # for labeled rows


@dataclass
class StudentConfig(TrainConfig):

    RENAMED_KEYS: ClassVar[dict[str, str]] = {"frozen_dinov2": "frozen_reference"}  # earlier name -> key
    # Online mode: run this teacher (a training run, model directory or hub id: anything
    # distill.models.resolve_model accepts) in the loop on the pseudo group's images instead of
    # reading pseudo-label shards. For small corpora and quick experiments.
    teacher: str | None = None  # online mode: a teacher (run, model dir or hub id) run in the loop instead of shards
    # The frozen reference of feature alignment (distill.frozen_reference): a DINOv2 (hub id or
    # directory, any size: another width than the student's adds a trained linear projection), a
    # timm CNN (an offline prior by name, or timm:<arch>), or a depth model / training run whose
    # encoder is taken (e.g. the teacher's); default: a frozen copy of the student's initial encoder.
    # Any student architecture aligns to any of these: its final feature map is resampled to the
    # reference's grid. Earlier name: frozen_dinov2 (still read).
    frozen_reference: str | None = None  # feature-alignment reference: DINOv2, timm CNN / prior, depth model or run
    student: StudentObjectiveConfig = field(default_factory=StudentObjectiveConfig)  # the student's objective
