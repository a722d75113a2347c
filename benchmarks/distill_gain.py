"""distill-gain v2: does a student beat its teacher in Depth Anything's regime, and what is each part of
the recipe worth? (v1, which inverted that regime, is in git history and the README's history.)

    python benchmarks/distill_gain.py [--output-dir runs/distill-gain-v2] [--quick] [--seeds 3]
        [--steps 600] [--budgets 40 200] [--later-budget-seeds 0] [--corpus 4000] [--prior true] [--lrs 0.0005 0.001]

The regime (all data from ``python -m distill.data.synthetic``, 120x160, exact depth):
- a **fixed labeled budget** of render-style scenes (GP2 mixture: 1/6 metric, 1/6 up to scale, the
  rest disparity up to scale and shift; a smaller budget is the first scenes of the larger one) on
  which the teacher trains to convergence (its validation curve is reported);
- an **unlabeled corpus >= 20x the largest budget**, of both styles (half render layouts, half the
  photo style textured with every training photo), its depth never read by training;
- validation: 32 render + 32 photo scenes; test: 128 render + 128 photo scenes (the photo ones
  textured only with test photos, which no training or validation scene uses). "broad" = the mean of
  the two styles. Every model is relative (disparity up to scale and shift: SSI + gradient matching,
  as Depth Anything V2; DPT's ReLU head cannot learn GP2's log-depth), scored with the
  affine-disparity protocol (predictions clamped to 40 m) at 112 px, single pass.

Rows per seed and budget (every student trains ``steps`` steps, as long as the teacher; noise on
students only; one student lr for every row, picked on validation on seed 0's full recipe):
  blind        the labeled scenes' mean (median-normalised) disparity map, whatever the image
  teacher      ``mini`` (0.69M parameters), source labels only
  teacher+     the teacher continued on its labels for the students' steps (the compute control)
  L1..L5       DA V1 Table 9 ladder, a ``mini`` student (the teacher's size): pseudo-labels only;
               + strong perturbations (colour jitter, blur, CutMix, stochastic depth 0.1); + feature
               alignment to the frozen offline prior (ImageNet EfficientNet-Lite0); + labeled 1 :
               pseudo 2; + confidence weighting (L5: the full recipe)
  L6           + one self-training round (L5 relabels the corpus, a new L5 learns from it)
  L7m / L7r    L5 on better labels: the teachers of every seed, flip + scales TTA, averaged (m) or
               one per sample (r)
  nano-labels  DA V2 Table 5: ``nano`` (61k parameters, 11x smaller) on the labeled budget only
  nano-pseudo  the same nano with the full recipe on the teacher's pseudo-labels
  H, H+        the prior as a factor: DPT-hybrid on ImageNet EfficientNet-Lite0 (``hybrid-lite0``,
               6.2M, 128 px) as the teacher, and continued
  H-L5, H-nano the full-recipe mini student and the nano student on H's labels (DA V2: smaller students)
  H-S          DA V1 with the prior: a hybrid-lite0 student (the teacher's size and start: the prior) with
               the full recipe on H's labels, against the better of H and H+ (input noise only: the
               hybrid has no DINOv2 layers to drop paths of)
The second budget runs teacher, teacher+, L5, nano-labels and nano-pseudo, on ``--later-budget-seeds``
seeds where given (fewer, to fit a time budget).

Every command goes to ``OUT/commands.sh``, its output to ``OUT/logs/``; a rerun skips what is
finished (models with ``final/``, labels with a manifest, scores with their JSON). Writes
``OUT/distill_gain.json``, ``OUT/distill_gain.png`` (bars, teacher curves) and prints the table.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from distill.config import ConfigError, parse_cli, run_main  # noqa: E402
from distill.quickstart import Stages, accelerate_launch  # noqa: E402

SIZE = (120, 160)
INPUT_SIZE = 112  # the ViT presets' crop; hybrids take 128 (a multiple of 32)
HYBRID_CROP = 128
# Aligned disparity near 0 is unbounded depth: predictions clamped to 40 m (the scenes' ground
# truth reaches 39.5 m), as NYU's protocol clamps to 10 m.
MAX_DEPTH = 40.0
PRIOR = "efficientnet-lite0"
STYLES = ("render", "photo")
EVAL_SETS = ("val-render", "val-photo", "test-render", "test-photo")
# What each student row adds (student.* settings, model noise, feature reference, labeled group).
NO_NOISE = {"perturb": {"enabled": False, "cutmix_p": 0.0}, "feature_weight": 0.0, "confidence": False}
LADDER = {
    "L1": dict(student=NO_NOISE, drop_path=0.0, labeled=False),
    "L2": dict(student={**NO_NOISE, "perturb": {"enabled": True, "cutmix_p": 0.5}}, drop_path=0.1, labeled=False),
    "L3": dict(student={"perturb": {"enabled": True, "cutmix_p": 0.5}, "feature_weight": 1.0, "confidence": False},
               drop_path=0.1, labeled=False),
    "L4": dict(student={"perturb": {"enabled": True, "cutmix_p": 0.5}, "feature_weight": 1.0, "confidence": False},
               drop_path=0.1, labeled=True),
    "L5": dict(student={"perturb": {"enabled": True, "cutmix_p": 0.5}, "feature_weight": 1.0, "confidence": True},
               drop_path=0.1, labeled=True),
}
TITLES = {
    "blind": "blind layout prior (mean labeled disparity)", "teacher": "teacher (mini, labels only)",
    "teacher+": "teacher continued (compute control)", "L1": "student: pseudo-labels only",
    "L2": "+ jitter, blur, CutMix, stochastic depth", "L3": "+ feature alignment to the prior",
    "L4": "+ labeled 1 : pseudo 2", "L5": "+ confidence (full recipe)", "L6": "+ one self-training round",
    "L7m": "L5 on 3 teachers x flip+scales, averaged", "L7r": "L5 on 3 teachers x flip+scales, one per sample",
    "nano-labels": "nano on labels only", "nano-pseudo": "nano, full recipe on pseudo-labels",
    "H": "hybrid-lite0 teacher (ImageNet prior)", "H+": "hybrid teacher continued",
    "H-L5": "mini student, full recipe, on H's labels", "H-nano": "nano student, full recipe, on H's labels",
    "H-S": "hybrid student (prior), full recipe, on H's labels",
}
FULL_RECIPES = ("L5", "L6", "L7m", "L7r")  # the full recipe row is the best of these on validation
ENSEMBLE = 3  # teachers (seeds 0, 1, 2) behind the L7 labels, whatever --seeds: a 1-seed run is a part of a 3-seed one


@dataclass
class DistillGainConfig:
    output_dir: str = "runs/distill-gain-v2"
    quick: bool = False  # one seed, 100 steps, budget 40, an 800-image corpus: the whole table in minutes
    seeds: int = 3
    later_budget_seeds: int = 0  # seeds of the budgets after the first (a cut the issue allows); 0: --seeds
    steps: int = 600  # teacher steps; students and the continued teacher train as many again
    batch_size: int = 12  # a multiple of 3: labeled 1 : pseudo 2
    budgets: list[int] = field(default_factory=lambda: [40, 200])  # labeled scenes; the first is the scarce one
    corpus: int = 4000  # unlabeled images, half render half photo style
    prior: bool = True  # the hybrid-teacher rows
    lrs: list[float] = field(default_factory=lambda: [5e-4, 1e-3])  # student lr candidates (picked on validation)
    val_scenes: int = 32  # per style
    test_scenes: int = 128  # per style


def use_preset(config: dict, preset: str, drop_path: float | None = None) -> None:
    """A run config's model: a hybrid starts from the prior at its square crop (and has no DINOv2
    layers to drop paths of); the ViT presets start from random weights, with ``drop_path``."""
    if preset.startswith("hybrid"):
        config["model"] = {"preset": preset, "dinov2": PRIOR}
        config["data"]["crop_size"] = HYBRID_CROP
    else:
        config["model"] = {"preset": preset, **({} if drop_path is None else {"drop_path_rate": drop_path})}


class Experiment:
    def __init__(self, args: DistillGainConfig):
        self.args, self.out = args, Path(args.output_dir).resolve()
        self.stages = Stages(self.out)
        self.data = self.out / "data"
        self.py = sys.executable
        self.lr: float | None = None

    # ---------------------------------------------------------------------------- data
    def generate(self) -> None:
        a = self.args
        half = a.corpus // 2
        sets = {"corpus-render": (half, 101, "render", "train"), "corpus-photo": (a.corpus - half, 102, "photo", "train"),
                "val-render": (a.val_scenes, 111, "render", "train"), "val-photo": (a.val_scenes, 112, "photo", "train"),
                "test-render": (a.test_scenes, 121, "render", "train"), "test-photo": (a.test_scenes, 122, "photo", "test")}
        for budget in a.budgets:
            for geometry, seed, num in self.labeled_parts(budget):
                sets[f"labeled-b{budget}-{geometry}"] = (num, seed, "render", "train")
        for name, (num, seed, style, photos) in sets.items():
            geometry = name.split("-")[-1] if name.startswith("labeled-") else "metric"
            if not (self.data / name / "dataset.yaml").is_file():
                self.stages.run("data", [self.py, "-m", "distill.data.synthetic", "--size", *map(str, SIZE), "--out",
                                         str(self.data / name), "--num", str(num), "--seed", str(seed), "--style", style,
                                         "--photos", photos, "--geometry", geometry])
        images = [p for s in STYLES for p in sorted((self.data / f"corpus-{s}" / "rgb").glob("*.png"))]
        (self.data / "corpus.txt").write_text("".join(f"{p}\n" for p in images))  # images only: depth never read

    @staticmethod
    def labeled_parts(budget: int) -> list[tuple[str, int, int]]:
        """(geometry, generator seed, scenes) of a labeled budget: GP2's 1 : 1 : 4 mixture."""
        metric = uts = max(1, budget // 6)
        return [("metric", 201, metric), ("uts", 202, uts), ("utss", 203, budget - metric - uts)]

    def labeled_group(self, budget: int, parts: int = 1) -> dict:
        """The labeled parts, weighted by their sizes (a budget's scenes of a seed are the first
        scenes of a larger budget's: budgets are nested)."""
        datasets = [{"reader": "folder", "root": str(self.data / f"labeled-b{budget}-{g}"), "weight": n}
                    for g, _, n in self.labeled_parts(budget)]
        return {"name": "labeled", "parts": parts, "datasets": datasets}

    # --------------------------------------------------------------------------- models
    def common(self, out: Path, seed: int, eval_every: int | None = None) -> list[str]:
        s = self.args.steps
        return [f"output_dir={out}", f"seed={seed}", f"max_steps={s}", f"batch_size={self.args.batch_size}",
                f"eval_every={eval_every or s}", f"save_every={s}", "tracker=none", "data.val_max_samples=64",
                "log_every=25", "resume=latest"]  # an interrupted row continues (or restarts) where it stopped

    def write_config(self, name: str, config: dict) -> Path:
        config["data"]["val"] = [{"reader": "folder", "root": str(self.data / f"val-{s}"), "options": {"max_depth": MAX_DEPTH}}
                                 for s in STYLES]
        path = self.out / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    def teacher(self, name: str, seed: int, budget: int, preset: str = "mini", init_from: Path | None = None) -> Path:
        """A teacher (or ``nano-labels``) on the labeled budget; ``init_from``: continue a teacher."""
        out = self.out / "models" / f"{name}-b{budget}-seed{seed}"
        if (out / "final" / "config.json").is_file():
            return out
        config = yaml.safe_load((ROOT / "configs" / "teacher" / "tiny.yaml").read_text())
        config["objective"] = {"kind": "ssi"}
        config["data"]["groups"] = [self.labeled_group(budget)]
        use_preset(config, preset)
        if init_from is not None:
            config["model"] = {"init_from": str(init_from / "final")}
            config["data"]["crop_size"] = HYBRID_CROP if "H" in name else INPUT_SIZE
        path = self.write_config(out.name, config)
        self.stages.run(name, accelerate_launch("distill/train_teacher.py", "--config", str(path),
                                                *self.common(out, seed, max(1, self.args.steps // 6))))
        return out

    def label(self, name: str, teachers: list[Path], tta: str = "flip", inputs: Path | None = None) -> Path:
        out = self.out / "labels" / name
        if not (out / "manifest.json").is_file():
            self.stages.run("pseudolabel", accelerate_launch(
                "distill/pseudolabel.py", "--teacher", ",".join(str(t) for t in teachers), "--input",
                str(inputs or self.data / "corpus.txt"), "--output", str(out), "--resize", "depth_anything", "--input-size",
                str(INPUT_SIZE), "--tta", tta, "--store-image", "reencode", "--image-ext", "png", "--shard-size", "500",
                "--no-progress"))
        return out

    def student(self, row: str, seed: int, budget: int, labels: Path, lr: float, preset: str = "mini",
                choose: str | None = None, name: str | None = None) -> Path:
        out = self.out / "models" / f"{name or row}-b{budget}-seed{seed}-lr{lr:g}"
        if (out / "final" / "config.json").is_file():
            return out
        spec = LADDER["L5" if row not in LADDER else row]
        config = yaml.safe_load((ROOT / "configs" / "student" / "tiny.yaml").read_text())
        config["student"].update({k: v for k, v in spec["student"].items() if k != "perturb"})
        config["student"]["perturb"].update(spec["student"]["perturb"])
        config["student"]["labeled"] = {"kind": "ssi"}  # labeled rows: the teacher's relative objective
        use_preset(config, preset, spec["drop_path"])
        config["optim"]["lr"] = lr
        config["frozen_reference"] = PRIOR  # read only where feature_weight > 0
        pseudo = {"reader": "shards", "root": str(labels), **({"options": {"teacher": choose}} if choose else {})}
        config["data"]["groups"] = [{"name": "pseudo", "parts": 2 if spec["labeled"] else 1, "datasets": [pseudo]}]
        if spec["labeled"]:
            config["data"]["groups"].append(self.labeled_group(budget))
        path = self.write_config(out.name, config)
        self.stages.run(row, accelerate_launch("distill/train_student.py", "--config", str(path),
                                               *self.common(out, seed)))
        return out

    # ---------------------------------------------------------------------------- scores
    def score(self, model: Path, dataset: str) -> dict:
        from distill import evaluate

        path = self.out / "eval" / f"{model.name}_{dataset}.json"
        if not path.is_file():
            self.stages.run("evaluate", [self.py, "distill/evaluate.py", "--model", str(model), "--benchmark", "folder",
                                         "--data-root", str(self.data / dataset), "--protocol", "affine-disparity",
                                         "--max-depth", str(MAX_DEPTH),
                                         "--input-size", str(INPUT_SIZE), "--output", str(path)], main=evaluate.main)
        result = json.loads(path.read_text())
        return {"abs_rel": result["abs_rel"], "d1": result["d1"]}

    def scores(self, model: Path, test: bool = True) -> dict:
        return {ds: self.score(model, ds) for ds in EVAL_SETS if test or ds.startswith("val")}

    def blind(self, budget: int) -> dict:
        """The labeled scenes' mean disparity map (metric and up-to-scale parts, each scene divided by
        its median), scored as a prediction for every scene: what the layout statistics alone give."""
        import torch

        from distill.data.readers import FolderReader
        from distill.evaluation import mean_metrics
        from distill.metrics import METRIC_NAMES, per_image_metrics, protocol_depth
        from distill.spaces import RELATIVE_DISPARITY

        path = self.out / "eval" / f"blind-b{budget}.json"
        if path.is_file():
            return json.loads(path.read_text())
        maps = []
        for geometry, _, n in self.labeled_parts(budget)[:2]:
            reader = FolderReader(self.data / f"labeled-b{budget}-{geometry}")
            for i in range(n):
                s = reader[i]
                disparity = np.where(s.valid & (s.target > 0), 1 / np.maximum(s.target, 1e-6), np.nan)
                maps.append(disparity / np.nanmedian(disparity))
        prior = np.nan_to_num(np.nanmean(np.stack(maps), 0), nan=0.0).astype(np.float32)
        result = {}
        for ds in EVAL_SETS:
            reader, rows = FolderReader(self.data / ds), []
            for i in range(len(reader)):
                s = reader[i]
                gt, mask = torch.from_numpy(s.target)[None], torch.from_numpy(s.valid)[None] & (torch.from_numpy(s.target)[None] > 0)
                mask &= gt <= MAX_DEPTH
                depth = protocol_depth(torch.from_numpy(prior)[None], RELATIVE_DISPARITY, gt, mask, "affine-disparity",
                                       (1e-3, MAX_DEPTH))
                m = per_image_metrics(depth, gt, mask)
                rows.append({"skipped": not bool(m["valid"][0]), **{k: float(m[k][0]) for k in METRIC_NAMES}})
            result[ds] = {k: v for k, v in mean_metrics(rows).items() if k in ("abs_rel", "d1")}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
        return result

    def curve(self, model: Path) -> list[tuple[int, float]]:
        """(step, validation AbsRel) of a training run."""
        lines = (model / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["val/abs_rel"]) for r in map(json.loads, lines) if "val/abs_rel" in r]

    # ---------------------------------------------------------------------------- rows
    def choose_lr(self, labels: Path, budget: int) -> float:
        """One student lr for every row: the candidate whose seed-0 full recipe (L5) has the best
        validation AbsRel (both styles), before any test score is read."""
        path = self.out / "eval" / "student_lr.json"
        if path.is_file():
            return json.loads(path.read_text())["lr"]
        val = {}
        for lr in self.args.lrs:
            s = self.scores(self.student("L5", 0, budget, labels, lr), test=False)
            val[lr] = float(np.mean([s[f"val-{st}"]["abs_rel"] for st in STYLES]))
        lr = min(val, key=val.get)
        path.write_text(json.dumps({"lr": lr, "val_abs_rel": {f"{k:g}": v for k, v in val.items()}}))
        return lr

    def run_budget(self, seed: int, budget: int, teachers: dict[int, Path], scarce: bool) -> dict[str, Path]:
        models = {"teacher": teachers[seed]}
        models["teacher+"] = self.teacher("teacher+", seed, budget, init_from=teachers[seed])
        labels = self.label(f"teacher-b{budget}-seed{seed}", [teachers[seed]])
        if self.lr is None:
            self.lr = self.choose_lr(labels, budget)
        lr = self.lr
        for row in (LADDER if scarce else ("L5",)):
            models[row] = self.student(row, seed, budget, labels, lr)
        models["nano-labels"] = self.teacher("nano-labels", seed, budget, preset="nano")
        models["nano-pseudo"] = self.student("L5", seed, budget, labels, lr, preset="nano", name="nano-pseudo")
        if not scarce:
            return models
        if self.args.prior:
            models["H"] = self.teacher("H", seed, budget, preset="hybrid-lite0")
            models["H+"] = self.teacher("H+", seed, budget, init_from=models["H"])
            hybrid_labels = self.label(f"H-b{budget}-seed{seed}", [models["H"]])
            models["H-L5"] = self.student("L5", seed, budget, hybrid_labels, lr, name="H-L5")
            models["H-nano"] = self.student("L5", seed, budget, hybrid_labels, lr, preset="nano", name="H-nano")
            models["H-S"] = self.student("L5", seed, budget, hybrid_labels, lr, preset="hybrid-lite0", name="H-S")
        relabels = self.label(f"L5-b{budget}-seed{seed}", [models["L5"]])
        models["L6"] = self.student("L5", seed, budget, relabels, lr, name="L6")
        return models

    def ensemble_rows(self, seed: int, budget: int, teachers: dict[int, Path]) -> dict[str, Path]:
        """L7: the costliest rows (3 teachers x flip + scales labeling), run after every seed's other rows so an
        interrupted run has whole seeds of everything else."""
        ensemble = self.label(f"teachers-b{budget}-seed{seed}", [teachers[(seed + k) % ENSEMBLE] for k in range(ENSEMBLE)],
                              tta="flip+scales")
        return {name: self.student("L5", seed, budget, ensemble, self.lr, choose=choose, name=name)
                for name, choose in (("L7m", "mean"), ("L7r", "random"))}


# ------------------------------------------------------------------------------------ report
def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def broad(scores: dict, split: str) -> float:
    """The mean AbsRel of the two styles of a split (val or test)."""
    return float(np.mean([scores[f"{split}-{s}"]["abs_rel"] for s in STYLES]))


def summarise(scores: dict) -> dict:
    """scores[row][seed] = {dataset: {abs_rel, d1}} (one budget) -> statistics, the rows picked on
    validation (the better of teacher / teacher+, the best full recipe) per seed, and paired gains
    (1 - row / base on broad test AbsRel, positive: row better)."""
    seeds = sorted(scores["teacher"])
    rows = [r for r in scores if all(s in scores[r] for s in seeds)]
    stats = {r: {ds: mean_std([scores[r][s][ds]["abs_rel"] for s in seeds]) for ds in scores[r][seeds[0]]} for r in rows}
    for r in rows:
        stats[r]["test-broad"] = mean_std([broad(scores[r][s], "test") for s in seeds])

    def pick(candidates, s):  # on validation only
        present = [c for c in candidates if c in scores and s in scores[c]]
        return min(present, key=lambda c: broad(scores[c][s], "val"))

    def paired(row_of, base_of, split="test"):
        return [1 - broad(scores[row_of(s)][s], split) / broad(scores[base_of(s)][s], split) for s in seeds]

    baseline = {s: pick(("teacher", "teacher+"), s) for s in seeds}
    full = {s: pick(FULL_RECIPES, s) for s in seeds}
    out = {"seeds": seeds, "stats": stats, "baseline_rows": baseline, "full_recipe_rows": full,
           "full_recipe_vs_baseline": paired(full.get, baseline.get)}
    if all(r in rows for r in ("H", "H+", "H-S")):  # DA V1 with the prior: a student of the teacher's size and start
        prior_baseline = {s: pick(("H", "H+"), s) for s in seeds}
        out["prior_baseline_rows"] = prior_baseline
        out["prior_student_vs_baseline"] = paired(lambda s: "H-S", prior_baseline.get)
    per_style = {}
    for style in STYLES:
        per_style[style] = [1 - scores[full[s]][s][f"test-{style}"]["abs_rel"] / scores[baseline[s]][s][f"test-{style}"]["abs_rel"]
                            for s in seeds]
    out["full_recipe_vs_baseline_per_style"] = per_style
    pairs = {"da_v2_nano_pseudo_vs_labels": ("nano-pseudo", "nano-labels"), "L1_vs_teacher": ("L1", "teacher"),
             "L2_vs_L1": ("L2", "L1"), "L3_vs_L2": ("L3", "L2"), "L4_vs_L3": ("L4", "L3"), "L5_vs_L4": ("L5", "L4"),
             "L6_vs_L5": ("L6", "L5"), "L7m_vs_L5": ("L7m", "L5"), "L7r_vs_L5": ("L7r", "L5"),
             "prior_teacher_H_vs_teacher": ("H", "teacher"), "prior_H+_vs_teacher+": ("H+", "teacher+"),
             "prior_student_H-L5_vs_L5": ("H-L5", "L5"), "prior_nano_H-nano_vs_nano-pseudo": ("H-nano", "nano-pseudo"),
             "H-nano_vs_nano-labels": ("H-nano", "nano-labels"), "H-L5_vs_H": ("H-L5", "H"), "H-S_vs_H": ("H-S", "H"),
             "H-S_vs_H+": ("H-S", "H+")}
    out["gains"] = {name: paired(lambda s, a=a: a, lambda s, b=b: b) for name, (a, b) in pairs.items()
                    if a in rows and b in rows}
    return out


def table(summary: dict, budget: int) -> str:
    def cell(ms):
        return f"{ms[0]:.3f} ± {ms[1]:.3f}"

    lines = [f"budget {budget} labeled scenes, seeds {summary['seeds']}",
             "| row | model | test broad | test render | test photo | val render | val photo |", "|---|---|---|---|---|---|---|"]
    for row, title in TITLES.items():
        s = summary["stats"].get(row)
        if s is not None:
            lines.append(f"| {row} | {title} | {cell(s['test-broad'])} | {cell(s['test-render'])} | {cell(s['test-photo'])} "
                         f"| {cell(s['val-render'])} | {cell(s['val-photo'])} |")
    def pct(values):
        return ", ".join(f"{v:+.1%}" for v in values)
    lines += ["", f"baseline per seed (picked on val): {summary['baseline_rows']}; full recipe per seed: {summary['full_recipe_rows']}",
              f"full recipe vs baseline (broad test, per seed): {pct(summary['full_recipe_vs_baseline'])}"]
    for style, values in summary["full_recipe_vs_baseline_per_style"].items():
        lines.append(f"  {style} test: {pct(values)}")
    if "prior_student_vs_baseline" in summary:
        lines.append(f"prior: H-S vs the better of H / H+ per seed {summary['prior_baseline_rows']}: "
                     f"{pct(summary['prior_student_vs_baseline'])}")
    lines += [f"{name}: {pct(values)}" for name, values in summary["gains"].items()]
    return "\n".join(lines)


def figure(path: Path, summaries: dict, curves: dict) -> None:
    """Bars of broad test AbsRel (mean ± std) per row and budget, and the teachers' validation curves."""
    from PIL import Image, ImageDraw

    bar_h, left, width = 16, 300, 900
    rows = [(b, r) for b, s in summaries.items() for r in TITLES if r in s["stats"]]
    chart = Image.new("RGB", (width, 40 + len(rows) * bar_h + 220), "white")
    draw = ImageDraw.Draw(chart)
    draw.text((8, 8), "test AbsRel, broad (render + photo) / 2, mean ± std over seeds", fill="black")
    top = max(sum(summaries[b]["stats"][r]["test-broad"]) for b, r in rows)
    scale = (width - left - 80) / top
    for i, (b, r) in enumerate(rows):
        y = 30 + i * bar_h
        mean, std = summaries[b]["stats"][r]["test-broad"]
        colour = (60, 110, 200) if r.startswith(("L", "nano-p", "H-")) else (170, 170, 170)
        draw.text((8, y + 2), f"[{b}] {r}: {TITLES[r]}"[:46], fill="black")
        draw.rectangle([left, y + 2, left + mean * scale, y + bar_h - 2], fill=colour)
        draw.line([left + (mean - std) * scale, y + bar_h / 2, left + (mean + std) * scale, y + bar_h / 2], fill="black", width=2)
        draw.text((left + (mean + std) * scale + 6, y + 2), f"{mean:.3f}", fill="black")
    y0 = 40 + len(rows) * bar_h + 10
    draw.text((8, y0), "teacher validation AbsRel vs step (mini: blue, hybrid: orange), seed 0", fill="black")
    points = [v for c in curves.values() for _, v in c]
    if points:
        lo, hi = min(points), max(points)
        steps = max(s for c in curves.values() for s, _ in c) or 1
        for name, c in curves.items():
            colour = (230, 120, 30) if name.startswith("H") else (60, 110, 200)
            xy = [(left + s / steps * (width - left - 40), y0 + 190 - (v - lo) / max(hi - lo, 1e-9) * 160) for s, v in c]
            if len(xy) > 1:
                draw.line(xy, fill=colour, width=2)
            for (x, yy), (_, v) in zip(xy, c):
                draw.text((x + 2, yy - 12), f"{v:.3f}", fill=colour)
            draw.text((8, y0 + 20 + 14 * list(curves).index(name)), name, fill=colour)
    chart.save(path)


PROG = "python benchmarks/distill_gain.py"


def _main(argv=None) -> int:
    args = parse_cli(DistillGainConfig, argv, prog=PROG)
    if args.quick:
        args.seeds, args.steps, args.budgets, args.corpus, args.val_scenes, args.test_scenes = 1, 100, [40], 800, 16, 32
    if args.later_budget_seeds < 0:
        raise ConfigError(f"later_budget_seeds={args.later_budget_seeds}: 0 (as --seeds) or more")
    if min(args.seeds, args.steps, args.batch_size, args.corpus, args.val_scenes, args.test_scenes, *args.budgets) < 1:
        raise ConfigError("seeds, steps, batch size, budgets and scene counts must be >= 1")
    if args.batch_size % 3:
        raise ConfigError(f"batch_size={args.batch_size}: must be a multiple of 3 (labeled 1 : pseudo 2)")
    if args.corpus < 20 * max(args.budgets):
        raise ConfigError(f"corpus={args.corpus}: at least 20x the largest budget ({20 * max(args.budgets)})")
    if min(args.budgets) < 6:
        raise ConfigError(f"budgets={args.budgets}: at least 6 scenes (the 1 : 1 : 4 geometry mixture)")
    started = time.perf_counter()
    exp = Experiment(args)
    exp.generate()
    report = exp.out / "distill_gain.json"
    earlier = json.loads(report.read_text()) if report.is_file() else {}
    summaries, scores, curves = {}, {}, {}
    for b, budget in enumerate(args.budgets):
        seeds = args.seeds if b == 0 else args.later_budget_seeds or args.seeds
        # the teachers of every seed first: the ensemble rows (L7, first budget) label with all of them
        teachers = {s: exp.teacher("teacher", s, budget) for s in range(max(seeds, ENSEMBLE) if b == 0 else seeds)}
        budget_scores = scores.setdefault(budget, {})
        runs = [(seed, exp.run_budget, (seed, budget, teachers, b == 0)) for seed in range(seeds)]
        runs += [(seed, exp.ensemble_rows, (seed, budget, teachers)) for seed in range(seeds) if b == 0]
        for seed, rows, row_args in runs:  # scored as they finish: an interrupted run leaves its test scores
            models = rows(*row_args)
            for row, model in models.items():
                budget_scores.setdefault(row, {})[seed] = exp.scores(model)
            budget_scores.setdefault("blind", {})[seed] = exp.blind(budget)
            if seed == 0 and "teacher" in models:
                curves[f"teacher b{budget}"] = exp.curve(models["teacher"])
                if "H" in models:
                    curves[f"H b{budget}"] = exp.curve(models["H"])
        summaries[budget] = summarise(scores[budget])
        print(table(summaries[budget], budget), flush=True)
    minutes = (time.perf_counter() - started) / 60
    result = {"settings": vars(args), "student_lr": exp.lr, "summaries": summaries, "scores": scores, "curves": curves,
              "stage_seconds": exp.stages.times, "minutes": minutes,
              "minutes_all_invocations": earlier.get("minutes_all_invocations", 0.0) + minutes}
    report.write_text(json.dumps(result, indent=1))
    figure(exp.out / "distill_gain.png", summaries, curves)
    print(f"wrote {report} and {exp.out / 'distill_gain.png'} ({minutes:.1f} min; "
          f"{result['minutes_all_invocations']:.1f} min with earlier invocations on this directory)")
    return 0


def main(argv=None) -> int:
    return run_main(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
