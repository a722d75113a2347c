"""Train a student on a teacher's pseudo-labels: strong perturbations (colour jitter, blur, CutMix),
feature alignment to a frozen DINOv2, optional labeled data at a per-batch ratio.

    accelerate launch distill/train_student.py --config configs/student/tiny.yaml [key=value ...]

The student is a fresh model (DINOv2-initialised encoder, random decoder), never the teacher's
weights. It learns in the teacher's output space: a geometry-preserving teacher (depth up to scale)
gives a geometry-preserving student (UTS loss), a relative one a relative student (SSI + gradient).
"""
from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass, field

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from distill.config import parse_cli  # noqa: E402
from distill.data.loading import build_dataset  # noqa: E402
from distill.data.transforms import TrainTransform  # noqa: E402
from distill.engine import TrainConfig, make_model, train  # noqa: E402
from distill.models import load_depth_model, load_frozen_reference, output_space_of  # noqa: E402
from distill.spaces import DEPTH_UP_TO_SCALE, RELATIVE_DISPARITY, OutputSpace  # noqa: E402
from student.objective import StudentObjective, StudentObjectiveConfig, attach_feature_projection  # noqa: E402
from student.perturb import photometric  # noqa: E402


@dataclass
class StudentConfig(TrainConfig):
    # Online mode: run this teacher (directory or hub id) in the loop on the pseudo group's images
    # instead of reading pseudo-label shards. For small corpora and quick experiments.
    teacher: str | None = None
    # The frozen reference of feature alignment (DINOv2 hub id or directory, any size: another width
    # than the student's adds a trained linear projection); default: a frozen copy of the
    # student's initial encoder.
    frozen_dinov2: str | None = None
    student: StudentObjectiveConfig = field(default_factory=StudentObjectiveConfig)


def student_space(geometry: str) -> OutputSpace:
    return RELATIVE_DISPARITY if geometry == "utss" else DEPTH_UP_TO_SCALE


def main(argv=None):
    cfg = parse_cli(StudentConfig, argv, prog="train_student.py")
    names = [g.name for g in cfg.data.groups]
    if cfg.student.pseudo_group not in names:
        raise SystemExit(f"train_student.py: error: student.pseudo_group={cfg.student.pseudo_group!r} is not a data group ({', '.join(names)})")
    pseudo_index = names.index(cfg.student.pseudo_group)
    if cfg.teacher and cfg.model.init_from and os.path.abspath(cfg.model.init_from) == os.path.abspath(cfg.teacher):
        raise SystemExit("train_student.py: error: model.init_from is the teacher: a student starts from DINOv2, not the teacher's weights")

    teacher = None
    if cfg.teacher:
        teacher = load_depth_model(cfg.teacher).eval().requires_grad_(False)
        space = student_space(output_space_of(teacher.config).geometry)
    else:  # the shards say what the teacher predicted
        first = build_dataset(cfg.data.groups[pseudo_index].datasets[0])[0]
        space = student_space(first.geometry)

    torch.manual_seed(cfg.seed)
    model = make_model(cfg.model, space)
    frozen = load_frozen_reference(cfg.frozen_dinov2) if cfg.frozen_dinov2 else copy.deepcopy(model.backbone)
    try:
        attach_feature_projection(model, frozen)
    except ValueError as err:
        raise SystemExit(f"train_student.py: error: {err}") from None

    # Colour jitter and blur on pseudo-labeled images only; online, the teacher must see clean images.
    perturb = photometric(cfg.student.perturb) if teacher is None else []
    transforms = [
        TrainTransform(cfg.data.crop_size, cfg.data.hflip, perturb if i == pseudo_index else None)
        for i in range(len(cfg.data.groups))
    ]
    objective = StudentObjective(cfg.student, space, pseudo_index, frozen_encoder=frozen, teacher=teacher, seed=cfg.seed)
    extra = tuple(m for m in (frozen, teacher) if m is not None)
    final = train(cfg, objective, space, model=model, train_transforms=transforms, extra_modules=extra)
    if final:  # None: preempted, a checkpoint was saved
        print(f"student saved to {final}")


if __name__ == "__main__":
    main()
