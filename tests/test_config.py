"""Config system: YAML + typed dataclasses + dotted overrides; one-line errors with exit code 2."""
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Literal

import pytest

from distill.config import ConfigError, fail, load_config, parse_cli, run_main, save_config


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
class Data:
    crop_size: int = 518
    hflip: bool = True
    num_workers: int = 4


@dataclass
class Train:
    output_dir: str = "runs/x"
    max_steps: int = 100
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    resume: str | None = None
    optim: Optim = field(default_factory=Optim)
    datasets: list[Dataset] = field(default_factory=list)
    data: Data = field(default_factory=Data)
    amp: bool | None = None


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
        (["--lr", "3"], "unknown option '--lr'; did you mean '--optim.lr'?"),
        (["max_steps"], "unexpected argument 'max_steps'"),
    ]:
        proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("train: error: ") and expected in lines[0], proc.stderr


# --- parse_cli: every key is also a flag --------------------------------------------------------


@pytest.mark.parametrize(
    "flags, items",
    [
        (["--max_steps", "7"], ["max_steps=7"]),
        (["--max-steps", "7"], ["max_steps=7"]),
        (["--max-steps=7"], ["max_steps=7"]),
        (["--optim.lr", "1e-4"], ["optim.lr=1e-4"]),
        (["--optim.decoder-lr-scale=3"], ["optim.decoder_lr_scale=3"]),
        (["--data.crop-size", "112", "--data.num_workers=0"], ["data.crop_size=112", "data.num_workers=0"]),
        (["--optim.betas", "[0.8, 0.9]"], ["optim.betas=[0.8, 0.9]"]),
        (["--precision", "bf16", "--output-dir", "no"], ["precision=bf16", "output_dir=no"]),
        (["--resume", "null"], ["resume=null"]),
        (["--datasets", "[{name: a}, {name: b}]", "--datasets.1.weight", "3"], ["datasets=[{name: a}, {name: b}]", "datasets.1.weight=3"]),
        (["--output-dir=a=b"], ["output_dir=a=b"]),
    ],
)
def test_flag_equals_key_value(flags, items):
    assert parse_cli(Train, flags) == parse_cli(Train, items) == load_config(Train, None, items)


def test_flag_values():
    cfg = parse_cli(Train, ["--max-steps", "7", "--optim.lr", "1e-4", "--data.crop-size=112", "--optim.betas", "[0.8, 0.9]"])
    assert (cfg.max_steps, cfg.optim.lr, cfg.data.crop_size, cfg.optim.betas) == (7, 1e-4, 112, (0.8, 0.9))
    cfg = parse_cli(Train, ["--datasets", "[{name: a}, {name: b}]", "--datasets.1.weight", "3", "--optim.lr", "-1e-3"])
    assert [(d.name, d.weight) for d in cfg.datasets] == [("a", 1.0), ("b", 3.0)] and cfg.optim.lr == -1e-3
    assert parse_cli(Train, ["--output-dir=a=b"]).output_dir == "a=b"


@pytest.mark.parametrize(
    "argv, compile, amp, hflip, max_steps",
    [
        (["--compile"], True, None, True, 100),
        (["--no-compile"], False, None, True, 100),
        (["--compile", "--max-steps", "3"], True, None, True, 3),  # a bool flag takes no next flag
        (["--compile", "max_steps=3"], True, None, True, 3),
        (["--compile", "false"], False, None, True, 100),
        (["--compile", "TRUE", "--no-amp"], True, False, True, 100),
        (["--compile=false", "--amp"], False, True, True, 100),  # bool | None is a bool
        (["--amp", "false"], False, False, True, 100),
        (["--no-data.hflip"], False, None, False, 100),
        (["--data.no-hflip"], False, None, False, 100),
        (["--data.hflip", "--compile"], True, None, True, 100),
        (["--compile", "--no_compile"], False, None, True, 100),
    ],
)
def test_bool_flags(argv, compile, amp, hflip, max_steps):
    cfg = parse_cli(Train, argv)
    assert (cfg.compile, cfg.amp, cfg.data.hflip, cfg.max_steps) == (compile, amp, hflip, max_steps)


def test_aliases():
    aliases = {"workers": "data.num_workers", "learning-rate": "optim.lr", "jit": "compile"}
    cfg = parse_cli(Train, ["--workers", "2", "--learning_rate=0.5", "--jit"], aliases=aliases)
    assert (cfg.data.num_workers, cfg.optim.lr, cfg.compile) == (2, 0.5, True)
    assert parse_cli(Train, ["--no-jit"], aliases=aliases).compile is False
    assert parse_cli(Train, ["--workers", "2"], aliases=aliases) == parse_cli(Train, ["data.num_workers=2"])


def test_precedence_file_then_items_in_order(tmp_path):
    path = write(tmp_path, "max_steps: 5\ncompile: true\noptim:\n  lr: 0.1\n")
    assert parse_cli(Train, ["--config", str(path)]).max_steps == 5
    cfg = parse_cli(Train, ["max_steps=7", "--config", str(path), "--max-steps", "8", "--no-compile"])
    assert (cfg.max_steps, cfg.compile, cfg.optim.lr) == (8, False, 0.1)
    cfg = parse_cli(Train, [f"--config={path}", "--max-steps", "8", "max_steps=9", "--compile", "--no-compile"])
    assert (cfg.max_steps, cfg.compile) == (9, False)
    assert parse_cli(Train, ["max_steps=9", "--max-steps=3"]).max_steps == 3


def cli_error(capsys, argv, **kwargs) -> str:
    with pytest.raises(SystemExit) as exc:
        parse_cli(Train, argv, prog="train", **kwargs)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and err.startswith("train: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-stesp", "3"], "unknown option '--max-stesp'; did you mean '--max_steps'?"),
        (["--optim.lrr", "3"], "unknown option '--optim.lrr'; did you mean '--optim.lr'?"),
        (["--data.crop-sise=3"], "unknown option '--data.crop-sise'; did you mean '--data.crop_size'?"),
        (["--wokers", "2"], "unknown option '--wokers'; did you mean '--workers'?"),
        (["--zzzzzz", "2"], "unknown option '--zzzzzz'; --help lists the keys"),
        (["--optim.lr.x", "2"], "unknown option '--optim.lr.x'"),
        (["--no-max-steps"], "unknown option '--no-max-steps'"),
        (["--max-steps"], "option '--max-steps' needs a value"),
        (["--optim.lr", "--compile"], "option '--optim.lr' needs a value"),
        (["--config"], "option '--config' needs a value"),
        (["--no-compile=true"], "option '--no-compile' takes no value"),
        (["--max-steps", "ten"], "max_steps: expected an integer, got 'ten'"),
        (["--data.crop-size=1.5"], "data.crop_size: expected an integer, got 1.5"),
        (["--compile=maybe"], "compile: expected true or false, got 'maybe'"),
        (["--precision", "fp8"], "precision: 'fp8' is not one of 'fp32', 'bf16', 'fp16'"),
        (["bogus"], "unexpected argument 'bogus'"),
        (["-x"], "unexpected argument '-x'"),
        (["=3"], "unexpected argument '=3'"),
    ],
)
def test_cli_errors_one_line_exit_2(capsys, argv, message):
    assert message in cli_error(capsys, argv, aliases={"workers": "data.num_workers"})


def test_cli_error_names_the_file(capsys, tmp_path):
    path = write(tmp_path, "max_steps: ten\n")
    assert cli_error(capsys, ["--config", str(path)]) == f"train: error: {path}: max_steps: expected an integer, got 'ten'"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_key(capsys, flag):
    with pytest.raises(SystemExit) as exc:
        parse_cli(Train, ["max_steps=oops", flag], prog="train", aliases={"workers": "data.num_workers"})
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "usage: train [--config FILE] [key=value | --key value ...]"
    rows = {line.split()[0]: line.split()[1:] for line in out if line.startswith("  ")}
    assert rows["optim.lr"] == ["float", "5e-06"]
    assert rows["data.crop_size"] == ["int", "518"]
    assert rows["compile"] == ["bool", "false"]
    assert rows["precision"] == ["{fp32,bf16,fp16}", "fp32"]
    assert rows["resume"] == ["str", "|", "None", "null"]
    assert rows["datasets"] == ["list[Dataset]", "[]"]
    assert rows["--workers"] == ["->", "data.num_workers"]
    assert "optim" not in rows and "data" not in rows  # nested dataclasses are flattened


def test_real_train_config():
    from distill.engine import TrainConfig

    def same(flags, items):
        a, b = parse_cli(TrainConfig, flags), parse_cli(TrainConfig, items)
        assert a == b
        return a

    assert same(["--resume", "latest"], ["resume=latest"]).resume == "latest"
    assert same(["--max-steps", "100"], ["max_steps=100"]).max_steps == 100
    assert same(["--optim.lr", "1e-4"], ["optim.lr=1e-4"]).optim.lr == 1e-4
    assert same(["--data.crop-size", "112", "--data.no-hflip"], ["data.crop_size=112", "data.hflip=false"]).data.crop_size == 112
    groups = "[{name: labeled, datasets: [{reader: hypersim}]}]"
    cfg = same(["--data.groups", groups, "--data.groups.0.datasets.0.weight", "2"], [f"data.groups={groups}", "data.groups.0.datasets.0.weight=2"])
    assert cfg.data.groups[0].datasets[0].weight == 2.0


class StageError(ConfigError):
    pass


def test_run_main(capsys):
    seen = []

    def main(argv):
        seen.append(argv)
        return parse_cli(Train, argv).max_steps

    assert run_main("stage", main, ["max_steps=3"]) == 3 and seen == [["max_steps=3"]]
    assert run_main("stage", lambda argv: None) == 0

    def broken(argv):
        raise StageError("teacher checkpoint not found: /x")

    assert run_main("stage", broken, []) == 2
    assert capsys.readouterr().err == "stage: error: teacher checkpoint not found: /x\n"
    assert run_main("stage", main, ["--no-such-key", "1"]) == 2  # parse_cli's exit becomes the return code
    assert capsys.readouterr().err.count("\n") == 1

    def crash(argv):
        raise RuntimeError("a bug, not a user error")

    with pytest.raises(RuntimeError):  # only ConfigError becomes a one-line exit 2
        run_main("stage", crash, [])


def test_fail_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        fail("prog", "first\nsecond")
    assert exc.value.code == 2
    assert capsys.readouterr().err == "prog: error: first; second\n"


COMMAND_CONFIGS = [("teacher.config", "TeacherConfig"), ("student.config", "StudentConfig"), ("student.metric", "MetricConfig"),
                   ("pseudolabel.config", "PseudolabelConfig"), ("distill.evaluate", "EvaluateConfig"),
                   ("distill.release", "ReleaseConfig"), ("distill.export", "ExportConfig"),
                   ("distill.quickstart", "QuickstartConfig"), ("pseudolabel.curation.config", "CurateConfig")]


@pytest.mark.parametrize("module, name", COMMAND_CONFIGS)
def test_help_says_what_every_key_of_a_command_means(module, name, capsys):
    """``--help`` shows each key's meaning: the comment after the field in its dataclass."""
    import importlib

    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(SystemExit):
        parse_cli(cls, ["--help"], prog="cmd")
    rows = [re.split(r"\s{2,}", line.strip()) for line in capsys.readouterr().out.splitlines()
            if line.startswith("  ") and " -> " not in line]
    unexplained = [row[0] for row in rows if len(row) < 4]  # key, type, default, meaning
    assert rows and not unexplained, unexplained


def test_a_renamed_key_is_still_read(tmp_path):
    """``frozen_dinov2`` became ``frozen_reference``: old YAML files, items and flags keep working."""
    from student.config import StudentConfig

    old = write(tmp_path, "frozen_dinov2: facebook/dinov2-small\n")
    assert load_config(StudentConfig, old).frozen_reference == "facebook/dinov2-small"
    assert load_config(StudentConfig, None, ["frozen_dinov2=x"]).frozen_reference == "x"
    assert parse_cli(StudentConfig, ["--frozen-dinov2", "y"]).frozen_reference == "y"
    assert parse_cli(StudentConfig, ["frozen_reference=z"]).frozen_reference == "z"
