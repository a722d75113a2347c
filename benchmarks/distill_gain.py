"""Does the student beat its teacher on the domain of its unlabeled images, and what is each part
of the recipe worth? Depth Anything's central claim, on data anyone can regenerate.

    python benchmarks/distill_gain.py [--output-dir runs/distill-gain] [--quick] [--seeds 3]
        [--steps 300] [--batch-size 12] [--corpus 2000]

Domains, all from ``python -m distill.data.synthetic`` (exact depth):
- source: the ``render`` style, the teacher's labeled data (rendered on the fly, GP2 mixture of
  metric / uts / utss labels as in ``configs/teacher/tiny.yaml``);
- target: the ``photo`` style (surfaces textured with real photographs, tinted light, other
  layouts, camera noise, blur, exposure and white balance, JPEG). Disjoint generator seeds for the
  unlabeled corpus, the validation and the test scenes; test scenes are textured only with photos
  that no corpus or validation scene uses (``--photos test``). Target depth is read only by scoring.

Rows (each a real run of the stage commands; every model gets the same optimizer steps and batch
size; seed k of every student learns from teacher seed k; all scored single-pass, no TTA):
  1 teacher (source labels only)                 6 + confidence weighting
  2 student: pseudo-labels only                  7 + labeled source : pseudo-labeled target = 1 : 2
  3 + colour jitter and blur                     8 one more round: row 7's student relabels the corpus
  4 + CutMix                                       and teaches a new student (noisy-student style)
  5 + feature alignment (to the teacher's        9 the ``nano`` preset, full recipe, against nano
      encoder: no pretrained DINOv2 here)          trained on source labels only (9a)
The "full recipe" row (7 or 8) is picked on target validation before the test is read.

Every command line of an invocation goes to ``OUT/commands.sh``, its output to ``OUT/logs/``; a rerun skips what is
finished (models with ``final/``, labels with a manifest, evaluations with their JSON). Writes
``OUT/distill_gain.json`` (every score, per seed) and ``OUT/distill_gain.png`` (bars with +-1 std,
and a strip input | teacher | student | ground truth on target test scenes), and prints the table.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from distill.config import ConfigError, parse_cli, run_main  # noqa: E402
from distill.quickstart import Stages, accelerate_launch  # noqa: E402

SIZE = (120, 160)
INPUT_SIZE = 112  # the tiny presets' crop; labeling and scoring at that scale
ROWS = {  # row: (title, student.* settings, labeled source group, model preset)
    "1": "teacher (source labels only)",
    "2": "student, pseudo-labels only",
    "3": "+ colour jitter and blur",
    "4": "+ CutMix",
    "5": "+ feature alignment (teacher encoder)",
    "6": "+ confidence weighting",
    "7": "+ labeled source 1 : pseudo 2",
    "8": "+ one more self-training round",
    "9a": "nano, source labels only",
    "9": "nano student, full recipe",
}
ABLATION = {  # the student rows 2-7: what each adds on top of the row before
    "2": {"perturb": {"enabled": False, "cutmix_p": 0.0}, "feature_weight": 0.0, "confidence": False},
    "3": {"perturb": {"enabled": True, "cutmix_p": 0.0}, "feature_weight": 0.0, "confidence": False},
    "4": {"perturb": {"enabled": True, "cutmix_p": 0.5}, "feature_weight": 0.0, "confidence": False},
    "5": {"perturb": {"enabled": True, "cutmix_p": 0.5}, "feature_weight": 1.0, "confidence": False},
    "6": {"perturb": {"enabled": True, "cutmix_p": 0.5}, "feature_weight": 1.0, "confidence": True},
}
ABLATION["7"] = ABLATION["6"]


@dataclass
class DistillGainConfig:
    output_dir: str = "runs/distill-gain"
    quick: bool = False  # one seed, 120 steps, a 600-image corpus: the whole table in minutes
    seeds: int = 3
    steps: int = 300  # optimizer steps of every model (teacher and students alike)
    batch_size: int = 12  # a multiple of 3: rows 7-9 split every batch labeled 1 : pseudo 2
    corpus: int = 2000  # unlabeled target images
    val_scenes: int = 64
    test_scenes: int = 128


class Experiment:
    def __init__(self, args: DistillGainConfig):
        self.args, self.out = args, Path(args.output_dir).resolve()
        self.stages = Stages(self.out)
        self.data = self.out / "data"
        self.py = sys.executable

    # ---------------------------------------------------------------------------- data
    def generate(self) -> None:
        synthetic = [self.py, "-m", "distill.data.synthetic", "--size", *map(str, SIZE)]
        sets = {"corpus": (self.args.corpus, 101, "photo", "train"), "target-val": (self.args.val_scenes, 102, "photo", "train"),
                "target-test": (self.args.test_scenes, 103, "photo", "test"), "source-test": (self.args.test_scenes, 104, "render", "train")}
        for name, (num, seed, style, photos) in sets.items():
            if not (self.data / name / "dataset.yaml").is_file():
                self.stages.run("data", synthetic + ["--out", str(self.data / name), "--num", str(num), "--seed", str(seed),
                                                     "--style", style, "--photos", photos])
        corpus = self.data / "corpus.txt"  # the corpus as images only: its depth is never read
        corpus.write_text("".join(f"{p}\n" for p in sorted((self.data / "corpus" / "rgb").glob("*.png"))))

    # --------------------------------------------------------------------------- models
    def steps_args(self, out: Path, seed: int) -> list[str]:
        s = self.args.steps
        return [f"output_dir={out}", f"seed={seed}", f"max_steps={s}", f"batch_size={self.args.batch_size}",
                f"eval_every={s}", f"save_every={s}", "tracker=none", "data.val_max_samples=16"]

    def teacher(self, name: str, seed: int, preset: str = "tiny") -> Path:
        out = self.out / "models" / f"{name}-seed{seed}"
        if not (out / "final" / "config.json").is_file():
            self.stages.run(name, accelerate_launch("distill/train_teacher.py", "--config", "configs/teacher/tiny.yaml",
                                                    *self.steps_args(out, seed), f"model.preset={preset}"))
        return out

    def label(self, name: str, model: Path) -> Path:
        out = self.out / "labels" / name
        if not (out / "manifest.json").is_file():
            self.stages.run("pseudolabel", accelerate_launch(
                "distill/pseudolabel.py", "--teacher", str(model), "--input", str(self.data / "corpus.txt"),
                "--output", str(out), "--resize", "depth_anything", "--input-size", str(INPUT_SIZE), "--tta", "flip", "--store-image", "reencode",
                "--image-ext", "png", "--shard-size", "500", "--no-progress"))
        return out

    def student(self, row: str, seed: int, labels: Path, teacher: Path, preset: str = "tiny") -> Path:
        out = self.out / "models" / f"row{row}-seed{seed}"
        if (out / "final" / "config.json").is_file():
            return out
        config = yaml.safe_load((ROOT / "configs" / "student" / "tiny.yaml").read_text())
        settings = ABLATION["7" if row in ("8", "9") else row]
        config["student"].update({k: v for k, v in settings.items() if k != "perturb"})
        config["student"]["perturb"].update(settings["perturb"])
        config["model"]["preset"] = preset
        config["optim"]["lr"] = 1.0e-3  # the teacher's: every row with the same optimizer settings
        config["frozen_dinov2"] = str(teacher)  # only read where feature_weight > 0
        config["data"]["groups"] = [{"name": "pseudo", "parts": 1, "datasets": [{"reader": "shards", "root": str(labels)}]}]
        if row in ("7", "8", "9"):  # Depth Anything V1: labeled 1 : pseudo-labeled 2 in every batch
            source = yaml.safe_load((ROOT / "configs" / "teacher" / "tiny.yaml").read_text())["data"]["groups"][0]
            config["data"]["groups"] = [{**config["data"]["groups"][0], "parts": 2}, source]
        config["data"]["val"] = [{"reader": "folder", "root": str(self.data / "target-val")}]
        path = self.out / "configs" / f"row{row}-seed{seed}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.stages.run(f"row{row}", accelerate_launch("distill/train_student.py", "--config", str(path),
                                                       *self.steps_args(out, seed)))
        return out

    def score(self, model: Path, dataset: str) -> dict:
        from distill import evaluation

        path = self.out / "eval" / f"{model.name}_{dataset}.json"
        if not path.is_file():
            self.stages.run("evaluate", [self.py, "distill/evaluate.py", "--model", str(model), "--benchmark", "folder",
                                         "--data-root", str(self.data / dataset), "--protocol", "scale-log",
                                         "--input-size", str(INPUT_SIZE), "--output", str(path)], main=evaluation.main)
        result = json.loads(path.read_text())
        return {"abs_rel": result["abs_rel"], "d1": result["d1"]}

    def label_quality(self, labels: Path) -> dict:
        """How good the pseudo-labels are, scored against the corpus's depth (read for this
        diagnostic only, never by training): scale-log AbsRel and d1, averaged over images."""
        import torch

        from distill.data.readers import FolderReader, ShardReader
        from distill.evaluation import mean_metrics
        from distill.metrics import METRIC_NAMES, per_image_metrics, protocol_depth
        from distill.spaces import OutputSpace

        path = self.out / "eval" / f"labels-{labels.name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        corpus, shards = FolderReader(self.data / "corpus"), ShardReader(labels)
        rows = []
        for i in range(len(shards)):
            label = shards[i]
            truth = corpus[int(label.key.split("_")[1])]  # scene_000123_<hash>: corpus image 123
            pred, gt = torch.from_numpy(label.target)[None], torch.from_numpy(truth.target)[None]
            mask = torch.from_numpy(truth.valid)[None] & (gt > 0) & torch.from_numpy(label.valid)[None]
            depth = protocol_depth(pred, OutputSpace(label.space, label.geometry), gt, mask, "scale-log")
            m = per_image_metrics(depth, gt, mask)
            rows.append({"skipped": not bool(m["valid"][0]), **{k: float(m[k][0]) for k in METRIC_NAMES}})
        result = {k: v for k, v in mean_metrics(rows).items() if k in ("abs_rel", "d1")}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
        return result

    def run_seed(self, seed: int) -> dict[str, Path]:
        models = {"1": self.teacher("teacher", seed)}
        labels = self.label(f"teacher-seed{seed}", models["1"])
        for row in ("2", "3", "4", "5", "6", "7"):
            models[row] = self.student(row, seed, labels, models["1"])
        relabels = self.label(f"row7-seed{seed}", models["7"])
        models["8"] = self.student("8", seed, relabels, models["1"])
        models["9a"] = self.teacher("nano-source", seed, preset="nano")
        models["9"] = self.student("9", seed, labels, models["1"], preset="nano")
        return models


# ------------------------------------------------------------------------------------ report
def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarise(scores: dict) -> dict:
    """scores[row][seed][dataset] -> mean/std per row and dataset, paired differences to the teacher,
    the full-recipe row picked on target validation, and the domain gap."""
    seeds = sorted(scores["1"])
    stats = {row: {ds: {m: mean_std([scores[row][s][ds][m] for s in seeds]) for m in ("abs_rel", "d1")}
                   for ds in ("target-val", "target-test", "source-test")} for row in scores}
    full = min(("7", "8"), key=lambda r: stats[r]["target-val"]["abs_rel"][0])
    def paired(row, base):  # relative AbsRel gain of row over base, seed by seed (positive: row is better)
        return [1 - scores[row][s]["target-test"]["abs_rel"] / scores[base][s]["target-test"]["abs_rel"] for s in seeds]
    teacher = stats["1"]
    return {
        "seeds": seeds, "full_recipe_row": full, "stats": stats,
        "teacher_domain_gap": teacher["target-test"]["abs_rel"][0] / teacher["source-test"]["abs_rel"][0],
        "full_recipe_vs_teacher": paired(full, "1"),
        "nano_student_vs_nano_source": paired("9", "9a"),
        "step_gains": {row: paired(row, prev) for prev, row in zip(("2", "3", "4", "5", "6"), ("3", "4", "5", "6", "7"))},
    }


def table(summary: dict) -> str:
    def cell(ms, digits=3):
        return f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"
    lines = ["| row | model | target test AbsRel | target test δ1 | target val AbsRel | source test AbsRel | source test δ1 |",
             "|---|---|---|---|---|---|---|"]
    for row, title in ROWS.items():
        s = summary["stats"].get(row)
        if s is None:
            continue
        mark = " (full recipe)" if row == summary["full_recipe_row"] else ""
        lines.append(f"| {row} | {title}{mark} | {cell(s['target-test']['abs_rel'])} | {cell(s['target-test']['d1'])} | "
                     f"{cell(s['target-val']['abs_rel'])} | {cell(s['source-test']['abs_rel'])} | {cell(s['source-test']['d1'])} |")
    gains = ", ".join(f"{g:+.1%}" for g in summary["full_recipe_vs_teacher"])
    nano = ", ".join(f"{g:+.1%}" for g in summary["nano_student_vs_nano_source"])
    steps = "; ".join(f"row {r}: " + ", ".join(f"{g:+.1%}" for g in v) for r, v in summary["step_gains"].items())
    lines += ["", f"teacher domain gap (target / source test AbsRel): {summary['teacher_domain_gap']:.2f}x",
              f"full recipe (row {summary['full_recipe_row']}, picked on target val) vs teacher, per seed: {gains}",
              f"nano student vs nano on source labels, per seed: {nano}",
              f"each part vs the row before, per seed: {steps}"]
    for name, q in summary.get("label_quality", {}).items():
        lines.append(f"corpus labels, {name}: AbsRel {cell(q['abs_rel'])}, d1 {cell(q['d1'])}")
    return "\n".join(lines)


def figure(path: Path, summary: dict, exp: Experiment, models: dict[str, Path], num_images: int = 4) -> None:
    """Bars (target and source test AbsRel, mean +- std per row), then input | teacher | student |
    ground truth for a few target test scenes (seed 0's teacher and full-recipe student)."""
    import cv2
    from PIL import Image, ImageDraw

    from distill.data.readers import FolderReader
    from distill.models import resolve_model
    from distill.quickstart import predict_depth
    from distill.visualisation import colorize

    rows = [r for r in ROWS if r in summary["stats"]]
    width, bar_h, left = 4 * SIZE[1], 22, 250
    top = 30
    chart = Image.new("RGB", (width, top + len(rows) * bar_h * 2 + 30), "white")
    draw = ImageDraw.Draw(chart)
    draw.text((8, 8), "AbsRel (mean ± std over seeds): target test (blue), source test (grey)", fill="black")
    scale = (width - left - 70) / max(max(sum(summary["stats"][r][ds]["abs_rel"]) for ds in ("target-test", "source-test"))
                                       for r in rows)
    for i, row in enumerate(rows):
        y = top + i * bar_h * 2
        draw.text((8, y + 8), f"{row} {ROWS[row]}"[:38], fill="black")
        for j, (ds, colour) in enumerate((("target-test", (60, 110, 200)), ("source-test", (170, 170, 170)))):
            mean, std = summary["stats"][row][ds]["abs_rel"]
            yy = y + j * bar_h
            draw.rectangle([left, yy + 3, left + mean * scale, yy + bar_h - 3], fill=colour)
            draw.line([left + (mean - std) * scale, yy + bar_h / 2, left + (mean + std) * scale, yy + bar_h / 2], fill="black", width=2)
            draw.text((left + (mean + std) * scale + 6, yy + 5), f"{mean:.3f}", fill="black")
    teacher, student = resolve_model(str(models["1"])), resolve_model(str(models[summary["full_recipe_row"]]))
    teacher.model.eval(), student.model.eval()
    test = FolderReader(exp.data / "target-test")
    strips = []
    for i in range(min(num_images, len(test))):
        sample = test[i]
        gt = np.where(sample.valid, sample.target, 0)
        cells = [sample.image]
        for model in (teacher, student):
            depth = predict_depth(model, sample.image)
            cells.append(colorize(depth, np.isfinite(depth) & (depth > 0)))
        cells.append(colorize(gt, gt > 0))
        strips.append(np.concatenate([cv2.resize(c, SIZE[::-1]) for c in cells], 1))
    header = Image.new("RGB", (width, 20), "white")
    for k, title in enumerate(("target test input", "teacher", f"student (row {summary['full_recipe_row']})", "ground truth")):
        ImageDraw.Draw(header).text((k * SIZE[1] + 6, 4), title, fill="black")
    Image.fromarray(np.concatenate([np.asarray(chart), np.asarray(header), *strips], 0)).save(path)


PROG = "python benchmarks/distill_gain.py"


def _main(argv=None) -> int:
    args = parse_cli(DistillGainConfig, argv, prog=PROG)
    if args.quick:
        args.seeds, args.steps, args.corpus, args.val_scenes, args.test_scenes = 1, 120, 600, 32, 64
    if min(args.seeds, args.steps, args.batch_size, args.corpus, args.val_scenes, args.test_scenes) < 1:
        raise ConfigError("seeds, steps, batch size and scene counts must be >= 1")
    if args.batch_size % 3:
        raise ConfigError(f"batch_size={args.batch_size}: must be a multiple of 3 (labeled 1 : pseudo 2)")
    started = time.perf_counter()
    exp = Experiment(args)
    exp.generate()
    scores, models, quality = {}, {}, {}
    for seed in range(args.seeds):
        models[seed] = exp.run_seed(seed)
        for row, model in models[seed].items():
            scores.setdefault(row, {})[seed] = {ds: exp.score(model, ds) for ds in ("target-val", "target-test", "source-test")}
        quality[seed] = {"teacher, single pass": exp.score(models[seed]["1"], "corpus"),
                         "teacher, flip TTA (labels of rows 2-7, 9)": exp.label_quality(exp.out / "labels" / f"teacher-seed{seed}"),
                         "row 7, flip TTA (labels of row 8)": exp.label_quality(exp.out / "labels" / f"row7-seed{seed}")}
        if seed == 0:  # fix the style before the students mean anything: is the domain gap real?
            gap = scores["1"][0]["target-test"]["abs_rel"] / scores["1"][0]["source-test"]["abs_rel"]
            print(f"teacher seed 0: target / source test AbsRel = {gap:.2f}x", flush=True)
    summary = summarise(scores)
    summary["label_quality"] = {name: {m: mean_std([quality[s][name][m] for s in quality]) for m in ("abs_rel", "d1")}
                                for name in quality[0]}
    report = exp.out / "distill_gain.json"
    earlier = json.loads(report.read_text()) if report.is_file() else {}  # a resumed run adds to its time
    minutes = (time.perf_counter() - started) / 60
    summary.update({"settings": vars(args), "scores": scores, "stage_seconds": exp.stages.times, "minutes": minutes,
                    "minutes_all_invocations": earlier.get("minutes_all_invocations", earlier.get("minutes", 0.0)) + minutes})
    report.write_text(json.dumps(summary, indent=1))
    figure(exp.out / "distill_gain.png", summary, exp, models[0])
    print(table(summary))
    print(f"wrote {report} and {exp.out / 'distill_gain.png'} ({minutes:.1f} min; "
          f"{summary['minutes_all_invocations']:.1f} min with earlier invocations on this directory)")
    return 0


def main(argv=None) -> int:
    return run_main(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
