"""The whole pipeline on data the project makes or ships, in one command (CPU, minutes).

    python -m distill.quickstart [--output-dir runs/quickstart] [--teacher-steps 1000]
        [--student-steps 1000] [--unlabeled-scenes 500] [--test-scenes 64]

Stages, each the real command of its stage with the ``tiny`` presets (the exact command lines go to
``OUT/commands.sh``, their output to ``OUT/logs/``):

1. data: held-out synthetic scenes (``python -m distill.data.synthetic``): an unlabeled set for
   pseudo-labeling (its ground truth is never read) and a test set; scikit-image's bundled
   photographs as a real unlabeled corpus; the Middlebury 2014 Motorcycle pair scikit-image ships
   (ground-truth disparity, inf = invalid) written as a ``folder`` benchmark.
2. teacher: ``accelerate launch distill/train_teacher.py --config configs/teacher/tiny.yaml``
   (GP2 on synthetic scenes rendered on the fly).
3. pseudo-labels: ``accelerate launch distill/pseudolabel.py`` over the photos and the unlabeled scenes.
4. student: ``accelerate launch distill/train_student.py --config configs/student/tiny.yaml`` on
   those shards (CutMix, colour jitter, blur, feature alignment to a frozen encoder).
5. evaluation of teacher and student (``distill/evaluate.py``) on the synthetic test scenes,
   Motorcycle and, when present, ``../shared/data/nyu2_sample``.
6. release: ``distill/release.py --dry-run`` (model card, checked with ``pipeline("depth-estimation")``).
7. ``OUT/summary.png`` (inputs, teacher and student depth, ground truth where there is one) and a
   table printed and saved as ``OUT/summary.json``.

The models start from random weights (no model hub here), so the numbers are those of a few
minutes of CPU training; the point is that every stage runs, connects and is measured. On a
machine with a GPU the same stages run there.
"""
from __future__ import annotations

import codecs
import contextlib
import json
import math
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from distill.config import ConfigError, parse_cli, run_main

ROOT = Path(__file__).resolve().parent.parent
NYU_SAMPLE = ROOT.parent / "shared" / "data" / "nyu2_sample"
# scikit-image's bundled photographs of real scenes (no download): the unlabeled real corpus.
SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "clock", "coffee", "rocket")
INPUT_SIZE = 112  # the tiny presets train on 112-pixel crops; labeling and evaluation use that scale
SUMMARY_METRICS = ("abs_rel", "d1")


# Escape sequences and control characters other than tab: never copied onto the console line.
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")
_LINE_END = re.compile(r"[\r\n]")
_MAX_PARTIAL = 4096


class LiveLine:
    """A stage's latest output line on the console, ``[name] <line>``.

    On a terminal: one line redrawn in place (``\\r``, the line cut to the terminal's width, clear to
    the end of the line), at most every ``TTY_INTERVAL`` seconds; ``clear`` wipes it. Elsewhere (CI,
    a file, pytest): no carriage returns, the latest line printed as a plain line at most every
    ``PLAIN_INTERVAL`` seconds (the first one after that long), so a long stage still shows progress.
    """

    TTY_INTERVAL = 0.25
    PLAIN_INTERVAL = 30.0

    def __init__(self, name: str, stream=None, clock=time.monotonic):
        self.name, self.clock = name, clock
        self.stream = sys.stdout if stream is None else stream
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self.interval = self.TTY_INTERVAL if self.tty else self.PLAIN_INTERVAL
        self.latest = ""      # the latest non-empty line seen
        self.pending = False  # ``latest`` not shown yet
        self.drawn = False    # a live line is on the terminal
        self.last = -math.inf if self.tty else clock()  # when a line was last shown

    def update(self, line: str) -> None:
        """``line``: the stage's newest output line (empty ones are ignored); shown when it is time."""
        line = _CONTROL.sub("", line).strip()
        # the line on show again (a read ended in it, the next one completed it): nothing new to show
        if line and (line != self.latest or self.pending):
            self.latest, self.pending = line, True
            self.refresh()

    def due(self) -> float | None:
        """Seconds until the pending line may be shown; None when nothing is pending."""
        return max(0.0, self.last + self.interval - self.clock()) if self.pending else None

    def refresh(self) -> None:
        """Show the pending line if the last one was shown long enough ago."""
        now = self.clock()
        if not self.pending or now - self.last < self.interval:
            return
        text = f"[{self.name}] {self.latest}"
        if self.tty:
            width = max(shutil.get_terminal_size().columns - 1, 10)  # the last column would wrap on some terminals
            self.stream.write("\r" + text[:width] + "\x1b[K")
            self.drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.last, self.pending = now, False

    def clear(self) -> None:
        """Wipe the live line (a terminal only), leaving the cursor at the start of the empty line."""
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False


def follow_output(fd: int, log, display) -> None:
    """Copy everything readable from ``fd`` (until end of file) to ``log`` (binary, byte for byte)
    and pass each line, split at ``\\r`` or ``\\n`` (progress bars redraw with ``\\r``), to
    ``display.update``; the line not ended yet too, when a read ends in it. Reads whatever has arrived
    (``os.read``), without waiting for a newline; while ``display.due()`` says a line is pending, waits
    at most that long and then calls ``display.refresh()``."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    partial = ""
    while True:
        wait = display.due()
        if wait is not None and not select.select([fd], [], [], wait)[0]:
            display.refresh()
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        log.write(chunk)
        log.flush()
        *lines, partial = _LINE_END.split(partial + decoder.decode(chunk))
        partial = partial[:_MAX_PARTIAL]  # a line that never ends is shown by its start; no quadratic re-splitting
        for line in lines:
            display.update(line)
        if partial:
            display.update(partial)
    rest = partial + decoder.decode(b"", final=True)
    if rest:
        display.update(rest)


class Stages:
    """Runs the stages, timing each, its output in ``logs/<name>.log``, its command in ``commands.sh``;
    a stage run as a new process shows its latest output line on the console while it runs (``LiveLine``)."""

    def __init__(self, out: Path):
        self.out, self.times = out, {}
        (out / "logs").mkdir(parents=True, exist_ok=True)
        self.script = out / "commands.sh"
        self.script.write_text("#!/bin/sh\n# The commands the quickstart ran, in order.\nset -e\n")

    def run(self, name: str, cmd: list[str], main=None) -> None:
        """Run ``cmd``; with ``main`` (the script's ``main(argv)``) in this process instead of a new
        interpreter (the same code, without paying for the imports again)."""
        with open(self.script, "a") as f:
            f.write(shlex.join(cmd) + "\n")
        log = self.out / "logs" / f"{name}.log"
        print(f"[{name}] {shlex.join(cmd)}", flush=True)
        start = time.perf_counter()
        if main is None:
            display = LiveLine(name)
            # unbuffered: the stage's own prints reach the log and the live line as they happen
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            with open(log, "ab") as f, subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                                         stderr=subprocess.STDOUT, env=env) as proc:
                try:
                    follow_output(proc.stdout.fileno(), f, display)
                finally:
                    display.clear()
                code = proc.wait()
        else:
            with open(log, "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                code = main(cmd[2:])
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start
        if code:
            tail = log.read_text(errors="replace").splitlines()[-25:]
            raise SystemExit(f"quickstart: stage {name!r} failed (exit {code}); end of {log}:\n" + "\n".join(tail))
        print(f"[{name}] done in {time.perf_counter() - start:.0f} s", flush=True)


def accelerate_launch(script: str, *args: str) -> list[str]:
    # One process; explicit values so accelerate needs no config file and prints no warnings.
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", script, *args]


# What a quickstart writes in its output directory; a rerun replaces it.
OUTPUTS = ("commands.sh", "logs", "data", "teacher", "pseudo-labels", "student", "eval", "release", "summary.png",
           "summary.json")


def clear_earlier_quickstart(out: Path) -> None:
    """Remove an earlier quickstart's outputs; refuse a non-empty directory that is not one."""
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / "commands.sh").is_file():
        raise SystemExit(f"quickstart: {out} is not empty and holds no earlier quickstart (no commands.sh); "
                         "choose another --output-dir")
    print(f"replacing the earlier quickstart in {out}", flush=True)
    for name in OUTPUTS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


# ------------------------------------------------------------------------------------ data
def write_photos(folder: Path) -> list[Path]:
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in SKIMAGE_PHOTOS:
        image = np.asarray(getattr(skimage.data, name)())
        path = folder / f"{name}.jpg"
        Image.fromarray(image[..., :3] if image.ndim == 3 else image).convert("RGB").save(path, quality=95)
        paths.append(path)
    return paths


def write_motorcycle(folder: Path) -> None:
    """The Middlebury 2014 Motorcycle pair as a ``folder`` benchmark: the left image and its
    disparity (pixels; inf in the file = invalid, stored as 0). Middlebury disparity is focal x
    baseline / depth minus a constant offset, i.e. disparity up to scale and shift: ``utss``."""
    import skimage.data
    import yaml

    left, _, disparity = skimage.data.stereo_motorcycle()
    disparity = np.asarray(disparity, dtype=np.float32)
    disparity = np.where(np.isfinite(disparity) & (disparity > 0), disparity, 0).astype(np.float32)
    (folder / "rgb").mkdir(parents=True, exist_ok=True)
    (folder / "depth").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(left)).save(folder / "rgb" / "motorcycle.png")
    np.save(folder / "depth" / "motorcycle.npy", disparity)
    info = {"name": "middlebury-motorcycle", "space": "disparity", "geometry": "utss", "depth_scale": 1.0,
            "format": {"rgb": "rgb/{key}.png", "depth": "depth/{key}.npy", "invalid_value": 0},
            "source": "skimage.data.stereo_motorcycle (Middlebury 2014)"}
    (folder / "dataset.yaml").write_text(yaml.safe_dump(info, sort_keys=False))


# ------------------------------------------------------------------------------------ summary
def predict_depth(model, image: np.ndarray) -> np.ndarray:
    """A resolved model's (``distill.models.resolve_model``) prediction for one uint8 image, at the
    image's size, as depth up to scale."""
    import torch

    from distill.evaluation import predict_images
    from distill.inference import InputRule
    from distill.spaces import to_depth

    rule = InputRule.of_model(model.processor, model.preprocessing, INPUT_SIZE)  # as the quickstart evaluates
    with torch.inference_mode():
        pred = predict_images(model.model, [image], rule, "cpu")[0].numpy()
    return to_depth(np.maximum(pred, 1e-6), model.output_space.space)


def summary_rows(data: Path) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(name, image, ground-truth depth or None) for the summary picture."""
    from distill.data.readers import FolderReader, NYUReader

    rows = []
    for name in ("astronaut", "coffee"):
        rows.append((name, np.asarray(Image.open(data / "photos" / f"{name}.jpg").convert("RGB")), None))
    moto = FolderReader(data / "middlebury-motorcycle")[0]
    rows.append(("motorcycle", moto.image, np.where(moto.valid, 1 / np.maximum(moto.target, 1e-6), 0)))
    test_scenes = FolderReader(data / "test-synthetic")
    for i in (0, 1):
        scene = test_scenes[i]
        rows.append((f"synthetic {i}", scene.image, np.where(scene.valid, scene.target, 0)))
    if NYU_SAMPLE.is_dir():
        frame = NYUReader(NYU_SAMPLE)[0]
        rows.append(("NYU", frame.image, np.where(frame.valid, frame.target, 0)))
    return rows


def summary_png(path: Path, models: dict[str, Path], data: Path, height: int = 160, width: int = 240) -> None:
    """A header, then one row per input: image | each of ``models`` (title -> model directory) | ground
    truth (blank where there is none), each cell ``height`` x ``width`` (aspect kept, centred on white); every depth coloured
    by inverse depth on its own range (predictions are up to scale)."""
    import cv2

    from distill.models import resolve_model
    from distill.visualisation import colorize

    def cell(picture):
        scale = min(height / picture.shape[0], width / picture.shape[1])
        h, w = max(1, round(picture.shape[0] * scale)), max(1, round(picture.shape[1] * scale))
        canvas = np.full((height, width, 3), 255, np.uint8)
        top, left = (height - h) // 2, (width - w) // 2
        canvas[top:top + h, left:left + w] = cv2.resize(picture, (w, h), interpolation=cv2.INTER_AREA)
        return canvas

    titles = ("input", *models, "ground truth")
    header = np.full((28, len(titles) * width, 3), 255, np.uint8)
    for i, title in enumerate(titles):
        cv2.putText(header, title, (i * width + 8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    resolved = [resolve_model(str(directory)) for directory in models.values()]
    for model in resolved:
        model.model.eval()
    rows = [header]
    for _, image, gt in summary_rows(data):
        cells = [image]
        for model in resolved:
            depth = predict_depth(model, image)
            cells.append(colorize(depth, np.isfinite(depth) & (depth > 0)))
        cells.append(colorize(gt, gt > 0) if gt is not None else np.full_like(image, 255))
        rows.append(np.pad(np.concatenate([cell(c) for c in cells], 1), ((0, 4), (0, 0), (0, 0)), constant_values=255))
    Image.fromarray(np.concatenate(rows, 0)).save(path)


def table(results: dict) -> str:
    lines = [f"{'benchmark':24s} {'protocol':17s} {'images':>6s}  {'teacher AbsRel':>14s} {'student AbsRel':>14s}"
             f"  {'teacher δ1':>10s} {'student δ1':>10s}"]
    for bench, by_model in results.items():
        t, s = by_model["teacher"], by_model["student"]
        lines.append(f"{bench:24s} {t['protocol']:17s} {t['num_images']:6d}  {t['abs_rel']:14.3f} {s['abs_rel']:14.3f}"
                     f"  {t['d1']:10.3f} {s['d1']:10.3f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ main
@dataclass
class QuickstartConfig:
    output_dir: str = "runs/quickstart"  # every stage's output (an earlier quickstart's is replaced)
    teacher_steps: int = 1000  # teacher training steps
    student_steps: int = 1000  # student training steps
    unlabeled_scenes: int = 500  # held-out synthetic scenes to pseudo-label
    test_scenes: int = 64  # synthetic scenes to evaluate on


PROG = "python -m distill.quickstart"


def main(argv=None) -> int:
    return run_main(PROG, _main, argv)


def write_data(out: Path, args: QuickstartConfig, stages: Stages) -> Path:
    """The photos, Middlebury's Motorcycle, synthetic scenes; returns the list file of unlabeled images."""
    data = out / "data"
    start = time.perf_counter()
    photos = write_photos(data / "photos")
    write_motorcycle(data / "middlebury-motorcycle")
    stages.times["data"] = time.perf_counter() - start
    synthetic = [sys.executable, "-m", "distill.data.synthetic", "--size", "120", "160", "--geometry", "metric"]
    stages.run("data", synthetic + ["--out", str(data / "unlabeled-synthetic"), "--num", str(args.unlabeled_scenes), "--seed", "77"])
    stages.run("data", synthetic + ["--out", str(data / "test-synthetic"), "--num", str(args.test_scenes), "--seed", "2026"])
    scenes = sorted((data / "unlabeled-synthetic" / "rgb").glob("*.png"))
    unlabeled = data / "unlabeled.txt"  # images only: the scenes' depth maps are never read
    unlabeled.write_text("".join(f"{path}\n" for path in [*photos, *scenes]))
    return unlabeled


def evaluate_models(out: Path, stages: Stages, models: dict[str, Path], protocol: str | None = None) -> dict:
    """``models`` (role -> model directory) on the quickstart's benchmarks (the NYU sample where it
    exists), each under its protocol or ``protocol``; results[benchmark][role]. Affine-disparity on
    the synthetic scenes caps predictions at their renderer's range (a disparity aligned near 0
    is depth without bound)."""
    from distill import evaluate
    from distill.data.synthetic import MAX_DEPTH

    data = out / "data"
    benchmarks = {"synthetic (test scenes)": ("folder", data / "test-synthetic", "scale-log", MAX_DEPTH),
                  "Middlebury Motorcycle": ("folder", data / "middlebury-motorcycle", "affine-disparity", None)}
    if NYU_SAMPLE.is_dir():
        benchmarks["NYU sample"] = ("nyu", NYU_SAMPLE, "scale-log", None)
    results: dict = {}
    for bench, (kind, root, bench_protocol, cap) in benchmarks.items():
        used = protocol or bench_protocol
        capped = ["--max-depth", str(cap)] if cap is not None and used == "affine-disparity" else []
        for role, model in models.items():
            path = out / "eval" / f"{role}_{bench.split()[0].lower()}.json"
            stages.run("evaluate", [sys.executable, "distill/evaluate.py", "--model", str(model), "--benchmark", kind,
                                    "--data-root", str(root), "--protocol", used, *capped,
                                    "--input-size", str(INPUT_SIZE), "--output", str(path)], main=evaluate.main)
            results.setdefault(bench, {})[role] = json.loads(path.read_text())
    return results


def _report(out: Path, stages: Stages, results: dict, runs: dict, started: float) -> None:
    """summary.json, the table and where everything is."""
    manifest = json.loads((runs["pseudo-labels"] / "manifest.json").read_text())
    summary = {
        "results": {b: {r: {k: m[k] for k in ("protocol", "num_images", *SUMMARY_METRICS)} for r, m in by.items()}
                    for b, by in results.items()},
        "pseudo_labels": {"labeled": manifest["labeled"], "skipped": manifest["skipped"]},
        "stage_seconds": {k: round(v, 1) for k, v in stages.times.items()},
        "total_seconds": round(time.perf_counter() - started, 1),
        "teacher": str(runs["teacher"] / "final"), "student": str(runs["student"] / "final"), "release": str(runs["release"]),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print()
    print(table(results))
    print(f"\npseudo-labels: {manifest['labeled']} images labeled, {manifest['skipped']} skipped")
    print("time per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in stages.times.items())
          + f"; total {summary['total_seconds']:.0f} s")
    print(f"summary picture: {out / 'summary.png'}; release folder: {runs['release']}; commands: {stages.script}")


def _main(argv=None) -> int:
    args = parse_cli(QuickstartConfig, argv, prog=PROG)
    if min(args.teacher_steps, args.student_steps, args.unlabeled_scenes, args.test_scenes) < 1:
        raise ConfigError("steps and scene counts must be >= 1")
    out = Path(args.output_dir).resolve()
    clear_earlier_quickstart(out)
    stages = Stages(out)
    started = time.perf_counter()
    runs = {name: out / name for name in ("teacher", "pseudo-labels", "student", "release")}
    unlabeled = write_data(out, args, stages)  # 1. data
    stages.run("teacher", accelerate_launch(  # 2. teacher
        "distill/train_teacher.py", "--config", "configs/teacher/tiny.yaml", f"output_dir={runs['teacher']}",
        f"max_steps={args.teacher_steps}", f"eval_every={args.teacher_steps}", f"save_every={args.teacher_steps}"))
    stages.run("pseudolabel", accelerate_launch(  # 3. pseudo-labels
        "distill/pseudolabel.py", "--teacher", str(runs["teacher"] / "final"),
        "--input", str(unlabeled), "--output", str(runs["pseudo-labels"]), "--tta", "flip",
        "--store-image", "reencode", "--image-max-side", "160", "--shard-size", "100"))
    stages.run("student", accelerate_launch(  # 4. student
        "distill/train_student.py", "--config", "configs/student/tiny.yaml", f"output_dir={runs['student']}",
        f"max_steps={args.student_steps}", f"eval_every={args.student_steps}", f"save_every={args.student_steps}",
        f"data.groups.0.datasets.0.root={runs['pseudo-labels']}"))
    results = evaluate_models(out, stages, {"teacher": runs["teacher"] / "final",  # 5. evaluation
                                            "student": runs["student"] / "final"})
    from distill import release  # 6. release (dry run: built and checked with pipeline("depth-estimation"), nothing sent)

    student_evals = sorted(str(p) for p in (out / "eval").glob("student_*.json"))
    stages.run("release", [sys.executable, "distill/release.py", "--model", str(runs["student"] / "final"), "--repo-id",
                           "your-name/depth-distill-quickstart-tiny", "--dry-run", "--output-dir", str(runs["release"]),
                           "--input-size", str(INPUT_SIZE), "--eval", *student_evals], main=release.main)
    start = time.perf_counter()  # 7. summary
    summary_png(out / "summary.png", {"teacher": runs["teacher"] / "final", "student": runs["student"] / "final"},
                out / "data")
    stages.times["summary"] = time.perf_counter() - start
    _report(out, stages, results, runs, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
