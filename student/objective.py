"""The student's objective: pseudo-label loss (per CutMix region, top-10% ignored, optionally
confidence-weighted) + feature alignment to a frozen DINOv2 on pseudo-labeled images + the
teacher's objective on labeled rows when the batch mixes them in (Depth Anything V1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from distill.labeled_objective import LabeledObjective
from distill.losses import (
    feature_alignment_loss,
    gradient_matching_loss,
    ssi_loss,
    uts_loss,
)
from distill.models import encoder_of
from distill.preprocessing import Preprocessing, fixed_input_size, multiple_of
from distill.registry import size_multiple
from distill.runtime import unwrap_model
from distill.spaces import OutputSpace, convert
from student.config import StudentObjectiveConfig
from student.perturb import cutmix


class FinalFeatures:
    """The final feature map [B, C, h, w] of an encoder (``distill.models.encoder_of``, or a frozen
    reference), captured by a forward hook as it runs: the student's depth forward yields its
    features without a second encoder pass, and the reference's own call yields its. A ViT (DINOv2
    backbone, DPT's ViT) gives its final tokens less the class token on the patch grid, a
    hierarchical encoder (GLPN's Mix Transformer) its last stage's map."""

    def __init__(self, encoder):
        self.map = None
        self.patch_size = getattr(encoder.config, "patch_size", None)
        encoder.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        height, width = (args[0] if args else kwargs["pixel_values"]).shape[-2:]
        maps = getattr(output, "feature_maps", None)
        features = maps[-1] if maps is not None else output.last_hidden_state
        if features.dim() == 3:  # ViT tokens [B, 1 + h * w, C]
            h, w = height // self.patch_size, width // self.patch_size
            features = features[:, -h * w:].transpose(1, 2).reshape(features.shape[0], -1, h, w)
        self.map = features


def fit_to_model(x: torch.Tensor, config) -> torch.Tensor:
    """[B, C, H, W] resized (bilinear) to what a model of ``config`` takes for these images: its one
    size (DPT-hybrid), else ``fit_to_multiple`` of its size multiple."""
    fixed = fixed_input_size(config)
    if fixed is None:
        return fit_to_multiple(x, size_multiple(config))
    if tuple(x.shape[-2:]) == (fixed, fixed):
        return x
    return F.interpolate(x, size=(fixed, fixed), mode="bilinear", align_corners=False)


def fit_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """[B, C, H, W] resized (bilinear) to the nearest sides that are multiples of ``multiple``: what a
    model of that size multiple takes for these images (a teacher or frozen reference of another
    architecture than the student), the same field of view."""
    size = tuple(multiple_of(side, multiple, multiple) for side in x.shape[-2:])
    return x if size == tuple(x.shape[-2:]) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def feature_width(encoder) -> int:
    """The channels of an encoder's ``FinalFeatures``."""
    config = encoder.config
    if config.model_type == "timm_backbone":
        return encoder.channels[-1]
    return config.hidden_sizes[-1] if config.model_type == "glpn" else config.hidden_size


def attach_feature_projection(model, frozen_encoder) -> bool:
    """Where the frozen reference has another width than the student (e.g. a ViT-L reference for a
    ViT-S student, a DINOv2 for a GLPN), a linear projection of the student's features to the
    reference's width, trained with the student. It lives under ``model.training_heads``:
    checkpointed and synchronised with the model, left out of the final model (``distill.engine``).
    Returns whether one was added. (Grids may differ: the objective resamples the student's map.)"""
    student, reference = feature_width(encoder_of(model)), feature_width(frozen_encoder)
    if student == reference:
        return False
    model.training_heads = torch.nn.ModuleDict({"feature_projection": torch.nn.Linear(student, reference)})
    return True


class StudentObjective:
    """``objective(model, batch) -> (loss, logs)`` for ``distill.engine.train``. Each model sees its
    own input normalisation: ``preprocessing`` (the student), ``frozen_preprocessing`` (the frozen
    reference), ``teacher_preprocessing`` (the online teacher)."""

    def __init__(self, cfg: StudentObjectiveConfig, output_space: OutputSpace, pseudo_group: int,
                 frozen_encoder=None, teacher=None, seed: int = 0, *, preprocessing: Preprocessing,
                 frozen_preprocessing: Preprocessing | None = None, teacher_preprocessing: Preprocessing | None = None):
        self.cfg, self.output_space, self.pseudo_group = cfg, output_space, pseudo_group
        self.frozen_encoder, self.teacher = frozen_encoder, teacher
        self.preprocessing, self.frozen_preprocessing = preprocessing, frozen_preprocessing
        self.teacher_preprocessing = teacher_preprocessing
        for given, rule, name in ((frozen_encoder, frozen_preprocessing, "frozen_preprocessing"),
                                  (teacher, teacher_preprocessing, "teacher_preprocessing")):
            if given is not None and rule is None:
                raise ValueError(f"{name} is required with its model: no default statistics")
        self.labeled = LabeledObjective(cfg.labeled, preprocessing)
        self.generator = torch.Generator().manual_seed(seed)  # CutMix boxes: reproducible on resume
        self._features = None
        self._frozen_features = FinalFeatures(frozen_encoder) if frozen_encoder is not None else None

    def _student_features(self, model):
        if self._features is None:
            self._features = FinalFeatures(encoder_of(unwrap_model(model)))
        return self._features

    def feature_loss(self, model, student_map: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Alignment of the student's feature map to the frozen reference's on the same images.
        The reference sees them fitted to its own size multiple (a patch-14 DINOv2 for a GLPN
        student's multiples of 32); the student's map is resampled to the reference's grid, then
        projected to its width."""
        x = fit_to_model(self.frozen_preprocessing.normalize(images), self.frozen_encoder.config)
        with torch.no_grad():
            self.frozen_encoder(pixel_values=x)
        frozen = self._frozen_features.map
        if student_map.shape[-2:] != frozen.shape[-2:]:
            student_map = F.interpolate(student_map, size=frozen.shape[-2:], mode="bilinear", align_corners=False)
        tokens = student_map.flatten(2).transpose(1, 2)
        heads = getattr(unwrap_model(model), "training_heads", None)
        if heads is not None:
            tokens = heads["feature_projection"](tokens)
        return feature_alignment_loss(tokens, frozen.flatten(2).transpose(1, 2), margin=self.cfg.feature_margin)

    def pseudo_targets(self, batch: dict, pseudo: torch.Tensor):
        """Pseudo-labels in the student's output space, from the shards or (online) the teacher
        run on the clean images."""
        if self.teacher is not None:
            target = torch.zeros_like(batch["target"], dtype=torch.float32)
            x = fit_to_model(self.teacher_preprocessing.normalize(batch["image"][pseudo]), self.teacher.config)
            with torch.no_grad():
                pred = self.teacher(pixel_values=x).predicted_depth.float()
            if pred.shape[-2:] != target.shape[-2:]:  # a teacher of another size multiple than the student's crops
                pred = F.interpolate(pred[:, None], size=target.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            target[pseudo] = convert(pred, self.teacher.config.output_space, self.output_space.space)
            return target, torch.ones_like(batch["valid"]), torch.ones_like(target)
        target = batch["target"].float().clone()
        for space in set(s for s, p in zip(batch["space"], pseudo.tolist()) if p):
            rows = torch.tensor([s == space for s in batch["space"]], device=target.device) & pseudo
            target[rows] = convert(target[rows], space, self.output_space.space)
        confidence = batch["confidence"].float()
        if not self.cfg.confidence:
            confidence = torch.ones_like(confidence)
        return target, batch["valid"], confidence

    def __call__(self, model, batch: dict):
        c = self.cfg
        pseudo = batch["group"] == self.pseudo_group
        features = self._student_features(model) if c.feature_weight else None
        images = batch["image"]
        logs = {}
        loss = torch.zeros((), device=images.device)
        if bool(pseudo.any()):
            target, valid, confidence = self.pseudo_targets(batch, pseudo)
            valid = valid & (confidence > c.confidence_threshold)
            tensors = {"image": images, "target": target, "valid": valid, "confidence": confidence}
            regions = None
            if c.perturb.enabled and torch.rand((), generator=self.generator).item() < c.perturb.cutmix_p:
                tensors, regions = cutmix(pseudo, tensors, self.generator)
            images = tensors["image"]
        pred = model(pixel_values=self.preprocessing.normalize(images)).predicted_depth
        if bool(pseudo.any()):
            p, t, v, w = pred[pseudo], tensors["target"][pseudo], tensors["valid"][pseudo], tensors["confidence"][pseudo]
            r = None if regions is None else regions[pseudo]
            if self.output_space.geometry == "utss":  # relative disparity student
                pseudo_loss = ssi_loss(p, t, v, trim=c.trim, regions=r, weight=w)
                pseudo_loss = pseudo_loss + c.gradient_weight * gradient_matching_loss(p, t, v, alignment="median", regions=r)
            else:  # geometry-preserving student: scale-invariant in log-depth
                pseudo_loss = uts_loss(p, t, v, trim=c.trim, regions=r, weight=w)
            loss = loss + pseudo_loss
            logs["pseudo"] = pseudo_loss.detach()
            if c.feature_weight and self.frozen_encoder is not None:
                feat = self.feature_loss(model, features.map[pseudo], images[pseudo])
                loss = loss + c.feature_weight * feat
                logs["feature"] = feat.detach()
        labeled = ~pseudo
        if bool(labeled.any()):
            sub = {k: (v[labeled] if torch.is_tensor(v) else [x for x, keep in zip(v, labeled.tolist()) if keep]) for k, v in batch.items()}
            labeled_loss, _ = self.labeled.loss_on(pred[labeled], sub)
            loss = loss + labeled_loss
            logs["labeled"] = labeled_loss.detach()
        return loss, logs
