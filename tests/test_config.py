"""Config system: YAML + typed dataclasses + dotted overrides; one-line errors with exit code 2."""
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Literal

import pytest

from distill.config import ConfigError, load_config, parse_cli, save_config


@dataclass
class Optim:
    lr: float = 5e-6
    decoder_lr_scale: float = 10.0
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Dataset:
    name: str
    weight: float = 1.0


@dataclass
class Train:
    output_dir: str = "runs/x"
    max_steps: int = 100
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    resume: str | None = None
    optim: Optim = field(default_factory=Optim)
    datasets: list[Dataset] = field(default_factory=list)


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, "max_steps: 10\noptim:\n  lr: 1e-4\ndatasets:\n  - {name: hypersim}\n  - {name: vkitti, weight: 2}\n")
    cfg = load_config(Train, path, ["output_dir=/tmp/o", "optim.betas=[0.8, 0.9]", "datasets.1.weight=3", "precision=bf16"])
    assert cfg.max_steps == 10 and cfg.output_dir == "/tmp/o" and cfg.precision == "bf16"
    assert cfg.optim.lr == 1e-4 and cfg.optim.betas == (0.8, 0.9)
    assert [(d.name, d.weight) for d in cfg.datasets] == [("hypersim", 1.0), ("vkitti", 3.0)]
    assert load_config(Train, None, ["resume=null"]).resume is None
    # YAML 1.2 booleans: "no" is a string (precision=no), only true/false are booleans
    assert load_config(Train, None, ["output_dir=no", "compile=true"]).output_dir == "no"
    assert load_config(Train, write(tmp_path, "output_dir: off\ncompile: false\n")).output_dir == "off"
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Train, tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("", ["optim.lrr=1"], "unknown key 'optim.lrr'; valid keys under 'optim': lr, decoder_lr_scale, betas"),
        ("", ["max_steps=ten"], "max_steps: expected an integer, got 'ten'"),
        ("", ["max_steps=1.5"], "max_steps: expected an integer"),
        ("", ["precision=fp8"], "precision: 'fp8' is not one of 'fp32', 'bf16', 'fp16'"),
        ("", ["compile=yes please"], "compile: expected true or false"),
        ("datasets:\n  - {weight: 2}\n", [], "missing required key 'datasets.0.name'"),
        ("bogus: 1\n", [], "unknown key 'bogus'; valid keys: output_dir, max_steps"),
        ("datasets:\n  - {name: a}\n", ["datasets.4.weight=1"], "index '4' is not in a list of 1 items"),
        ("", ["max_steps"], "not of the form key=value"),
        ("[1, 2]\n", [], "expected a mapping"),
        ("a: [1\n", [], "not valid YAML"),
    ],
)
def test_errors_name_the_key(tmp_path, text, overrides, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(Train, path, overrides)
    assert message in str(err.value)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found: /nonexistent.yaml"):
        load_config(Train, "/nonexistent.yaml")


def test_cli_exit_code_2_one_line_no_traceback(tmp_path):
    path = write(tmp_path, "max_steps: 5\n")
    assert parse_cli(Train, ["--config", str(path), "max_steps=7"]).max_steps == 7
    script = (
        "import sys; sys.path.insert(0, 'tests'); from test_config import Train; "
        "from distill.config import parse_cli; parse_cli(Train, sys.argv[1:], prog='train')"
    )
    for args, expected in [
        (["--config", str(path), "optim.nope=1"], "unknown key 'optim.nope'"),
        (["--config", str(tmp_path / "missing.yaml")], "config file not found"),
        (["--lr", "3"], "unexpected argument '--lr'"),
    ]:
        proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("train: error: ") and expected in lines[0], proc.stderr
