"""The teacher stage's configuration: the engine's ``TrainConfig`` plus the objective's options."""
from __future__ import annotations

from dataclasses import dataclass, field

from distill.engine import TrainConfig
from distill.labeled_objective import LabeledObjectiveConfig


@dataclass
class TeacherConfig(TrainConfig):
    objective: LabeledObjectiveConfig = field(default_factory=LabeledObjectiveConfig)  # the loss on labeled data
