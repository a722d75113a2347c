"""Train a student on a teacher's pseudo-labels: strong perturbations (colour jitter, blur, CutMix),
feature alignment to a frozen DINOv2, optional labeled data at a per-batch ratio.

    accelerate launch distill/train_student.py --config configs/student/tiny.yaml [key=value | --key value ...]

The student is a fresh model (a Depth Anything preset with a DINOv2-initialised encoder, or a
faster dpt-* / glpn-* preset; random decoder), never the teacher's weights. It learns in the
teacher's output space: a geometry-preserving teacher (depth up to scale) gives a
geometry-preserving student (UTS loss), a relative one a relative student (SSI + gradient).
"""
from __future__ import annotations

import copy
import os

import torch

from distill.config import ConfigError, parse_cli, run_main
from distill.data.loading import build_dataset
from distill.data.transforms import TrainTransform
from distill.engine import make_model, model_preprocessing, train
from distill.frozen_reference import load_frozen_reference, reference_preprocessing
from distill.models import encoder_of, resolve_model, resolve_reference
from distill.spaces import student_output_space
from student.config import StudentConfig
from student.objective import StudentObjective, attach_feature_projection
from student.perturb import photometric

PROG = "train_student.py"


def _same_model(a: str, b: str) -> bool:
    """Whether two model references name the same model (a run and its final/ count as one)."""
    def where(ref):
        try:
            return os.path.abspath(resolve_reference(ref))
        except ConfigError:
            return os.path.abspath(ref)
    return os.path.abspath(a) == os.path.abspath(b) or where(a) == where(b)


def _main(argv=None) -> int:
    cfg = parse_cli(StudentConfig, argv, prog=PROG)
    names = [g.name for g in cfg.data.groups]
    if cfg.student.pseudo_group not in names:
        raise ConfigError(f"student.pseudo_group={cfg.student.pseudo_group!r} is not a data group ({', '.join(names)})")
    pseudo_index = names.index(cfg.student.pseudo_group)
    if cfg.teacher and cfg.model.init_from and _same_model(cfg.teacher, cfg.model.init_from):
        raise ConfigError("model.init_from is the teacher: a student starts from DINOv2, not the teacher's weights")
    teacher = None
    if cfg.teacher:
        resolved = resolve_model(cfg.teacher)
        teacher = resolved.model.eval().requires_grad_(False)
        teacher_preprocessing = resolved.preprocessing
        space = student_output_space(resolved.output_space.geometry)
    else:  # the shards say what the teacher predicted
        first = build_dataset(cfg.data.groups[pseudo_index].datasets[0], f"data.groups.{pseudo_index}.datasets.0")[0]
        space, teacher_preprocessing = student_output_space(first.geometry), None

    torch.manual_seed(cfg.seed)
    model = make_model(cfg.model, space, cfg.data.crop_size)
    preprocessing = model_preprocessing(cfg.model, cfg.data.crop_size)
    if cfg.data.crop_size % preprocessing.multiple:
        raise ConfigError(f"data.crop_size={cfg.data.crop_size} is not a multiple of {preprocessing.multiple}, "
                          f"the size multiple of the student ({cfg.model.init_from or cfg.model.preset})")
    if cfg.frozen_reference:
        frozen = load_frozen_reference(cfg.frozen_reference)
        frozen_preprocessing = reference_preprocessing(cfg.frozen_reference, frozen.config)
    else:
        frozen, frozen_preprocessing = copy.deepcopy(encoder_of(model)), preprocessing
    attach_feature_projection(model, frozen)

    # Colour jitter and blur on pseudo-labeled images only; online, the teacher must see clean images.
    perturb = photometric(cfg.student.perturb) if teacher is None else []
    transforms = [
        TrainTransform(cfg.data.crop_size, cfg.data.hflip, perturb if i == pseudo_index else None)
        for i in range(len(cfg.data.groups))
    ]
    objective = StudentObjective(cfg.student, space, pseudo_index, frozen_encoder=frozen, teacher=teacher, seed=cfg.seed,
                                 preprocessing=preprocessing, frozen_preprocessing=frozen_preprocessing,
                                 teacher_preprocessing=teacher_preprocessing or preprocessing)
    extra = tuple(m for m in (frozen, teacher) if m is not None)
    final = train(cfg, objective, space, model=model, train_transforms=transforms, extra_modules=extra,
                  preprocessing=preprocessing)
    if final:  # None: preempted, a checkpoint was saved
        print(f"student saved to {final}")
    return 0


def main(argv=None) -> int:
    """``distill/train_student.py`` and the ``distill-train-student`` console script."""
    return run_main(PROG, _main, argv)
