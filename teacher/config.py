"""The teacher stage's configuration: the engine's ``TrainConfig`` plus the objective's options."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from distill.engine import TrainConfig


@dataclass
class TeacherObjectiveConfig:
    kind: Literal["gp2", "ssi"] = "gp2"
    uts_weight: float = 1.0  # GP2: weight of the UTS term on geometrically complete samples
    ssi_variant: Literal["median", "lsq"] = "median"  # ssi: median/MAD + MAE (V1 paper) or LSQ + MSE (gist)
    gradient_weight: float = 2.0  # ssi: Depth Anything V2 uses SSI : gradient = 1 : 2
    gradient_scales: int = 4
    trim: float = 0.0  # drop this fraction of each sample's largest per-pixel losses (0.1 = V2's top-10%)


@dataclass
class TeacherConfig(TrainConfig):
    objective: TeacherObjectiveConfig = field(default_factory=TeacherObjectiveConfig)
