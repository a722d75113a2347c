"""The student's objective: pseudo-label loss (per CutMix region, top-10% ignored, optionally
confidence-weighted) + feature alignment to a frozen DINOv2 on pseudo-labeled images + the
teacher's objective on labeled rows when the batch mixes them in (Depth Anything V1)."""
from __future__ import annotations

import torch

from distill.losses import feature_alignment_loss, gradient_matching_loss, ssi_loss, uts_loss
from distill.preprocessing import DEFAULT, Preprocessing
from distill.spaces import OutputSpace, convert
from student.config import StudentObjectiveConfig
from student.perturb import cutmix
from teacher.objective import TeacherObjective


class FinalTokens:
    """Captures the final-layer patch tokens (LayerNorm applied) of a DINOv2 backbone as it runs,
    so the student's depth forward also yields its features without a second encoder pass."""

    def __init__(self, backbone):
        self.tokens = None
        backbone.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.tokens = output.feature_maps[-1][:, 1:]  # drop the class token


def attach_feature_projection(model, frozen_encoder) -> bool:
    """Where the frozen reference has another width than the student (e.g. a ViT-L reference for a
    ViT-S student), a linear projection of the student's tokens to the reference's width, trained
    with the student. It lives under ``model.training_heads``: checkpointed and synchronised with
    the model, left out of the final model (``distill.engine``). Returns whether one was added."""
    student, reference = model.config.backbone_config, frozen_encoder.config
    if student.patch_size != reference.patch_size:
        raise ValueError(f"frozen_dinov2 has patch size {reference.patch_size}, the student {student.patch_size}: "
                         "their tokens do not correspond")
    if student.hidden_size == reference.hidden_size:
        return False
    model.training_heads = torch.nn.ModuleDict(
        {"feature_projection": torch.nn.Linear(student.hidden_size, reference.hidden_size)})
    return True


class StudentObjective:
    """``objective(model, batch) -> (loss, logs)`` for ``distill.engine.train``. Each model sees its
    own input normalisation: ``preprocessing`` (the student), ``frozen_preprocessing`` (the frozen
    reference), ``teacher_preprocessing`` (the online teacher)."""

    def __init__(self, cfg: StudentObjectiveConfig, output_space: OutputSpace, pseudo_group: int,
                 frozen_encoder=None, teacher=None, seed: int = 0, preprocessing: Preprocessing = DEFAULT,
                 frozen_preprocessing: Preprocessing = DEFAULT, teacher_preprocessing: Preprocessing = DEFAULT):
        self.cfg, self.output_space, self.pseudo_group = cfg, output_space, pseudo_group
        self.frozen_encoder, self.teacher = frozen_encoder, teacher
        self.preprocessing, self.frozen_preprocessing = preprocessing, frozen_preprocessing
        self.teacher_preprocessing = teacher_preprocessing
        self.labeled = TeacherObjective(cfg.labeled, preprocessing)
        self.generator = torch.Generator().manual_seed(seed)  # CutMix boxes: reproducible on resume
        self._features = None

    def _student_features(self, model):
        if self._features is None:
            backbone = getattr(model, "module", model).backbone
            self._features = FinalTokens(backbone)
        return self._features

    def pseudo_targets(self, batch: dict, pseudo: torch.Tensor):
        """Pseudo-labels in the student's output space, from the shards or (online) the teacher
        run on the clean images."""
        if self.teacher is not None:
            target = torch.zeros_like(batch["target"], dtype=torch.float32)
            with torch.no_grad():
                pred = self.teacher(pixel_values=self.teacher_preprocessing.normalize(batch["image"][pseudo])).predicted_depth.float()
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
                with torch.no_grad():
                    frozen = self.frozen_encoder(pixel_values=self.frozen_preprocessing.normalize(images[pseudo])).feature_maps[-1][:, 1:]
                tokens = features.tokens[pseudo]
                heads = getattr(getattr(model, "module", model), "training_heads", None)
                if heads is not None:
                    tokens = heads["feature_projection"](tokens)
                feat = feature_alignment_loss(tokens, frozen, margin=c.feature_margin)
                loss = loss + c.feature_weight * feat
                logs["feature"] = feat.detach()
        labeled = ~pseudo
        if bool(labeled.any()):
            sub = {k: (v[labeled] if torch.is_tensor(v) else [x for x, keep in zip(v, labeled.tolist()) if keep]) for k, v in batch.items()}
            labeled_loss, _ = self.labeled.loss_on(pred[labeled], sub)
            loss = loss + labeled_loss
            logs["labeled"] = labeled_loss.detach()
        return loss, logs
