"""Train a depth teacher: DINOv2 + DPT with GP2 (or Depth Anything SSI) losses.

    accelerate launch distill/train_teacher.py --config configs/teacher/tiny.yaml [key=value | --key value ...]
"""
from __future__ import annotations

from distill.config import parse_cli, run_main
from distill.engine import model_preprocessing, train
from distill.labeled_objective import LabeledObjective
from distill.spaces import output_space_for
from teacher.config import TeacherConfig

PROG = "train_teacher.py"


def objective_for(cfg: TeacherConfig) -> LabeledObjective:
    """The teacher's objective, normalising images as the model ``cfg.model`` wants them."""
    return LabeledObjective(cfg.objective, model_preprocessing(cfg.model, cfg.data.crop_size))


def _main(argv=None) -> int:
    cfg = parse_cli(TeacherConfig, argv, prog=PROG)
    objective = objective_for(cfg)
    final = train(cfg, objective, output_space_for(cfg.objective.kind), preprocessing=objective.preprocessing)
    if final:  # None: preempted, a checkpoint was saved
        print(f"teacher saved to {final}")
    return 0


def main(argv=None) -> int:
    """``distill/train_teacher.py`` and the ``distill-train-teacher`` console script."""
    return run_main(PROG, _main, argv)
