"""Train a depth teacher: DINOv2 + DPT with GP2 (or Depth Anything SSI) losses.

    accelerate launch distill/train_teacher.py --config configs/teacher/tiny.yaml [key=value ...]
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distill.config import parse_cli
from distill.engine import TrainConfig, train
from teacher.objective import TeacherObjective, TeacherObjectiveConfig, output_space_for


@dataclass
class TeacherConfig(TrainConfig):
    objective: TeacherObjectiveConfig = field(default_factory=TeacherObjectiveConfig)


def main(argv=None):
    cfg = parse_cli(TeacherConfig, argv, prog="train_teacher.py")
    final = train(cfg, TeacherObjective(cfg.objective), output_space_for(cfg.objective.kind))
    if final:  # None: preempted, a checkpoint was saved
        print(f"teacher saved to {final}")


if __name__ == "__main__":
    main()
