"""What does the labeling job's JPEG draft decoding cost in label quality, and what does it save?

    python benchmarks/label_fidelity.py [--teachers REF ...] [--no-quickstart-teacher] [--teacher-steps 1000] [--scenes 32]
        [--size 1200 1600] [--repeats 3] [--output-dir runs/label-fidelity]

Photo-style synthetic scenes (``distill.data.synthetic``, with ground-truth depth) are rendered at
``--size`` (1-3 MP) and saved as JPEG (quality 90): large enough that the labeling job decodes them at
a reduced DCT scale (``PIL.Image.draft``) before the teacher's processor resizes them. Every teacher
labels them twice through the labeling command, ``--draft true`` (the default) and ``--draft false``,
``--repeats`` times each, alternating, after one untimed warm-up run; the median wall time is reported. Each label set is scored
against the ground truth (AbsRel under the teacher's default protocol: scale-log for depth up to
scale, affine-disparity for relative disparity), and the two sets against each other (mean
per-image relative L2). The quickstart's teacher is trained first
(``configs/teacher/tiny.yaml``, ``--teacher-steps``; ``--no-quickstart-teacher`` skips it); any model
reference the labeling job takes may be added with ``--teachers`` (e.g. the distill-gain benchmark's hybrid teacher, runs/dg-full/models/H-b40-seed0).

The rule this measures (issue: label fidelity): the default stays ``draft`` only if the AbsRel
against ground truth moves by less than 1% of its value. Prints a table; writes ``OUT/label_fidelity.json``.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from distill.config import ConfigError, load_config, parse_cli, run_main  # noqa: E402
from distill.data.readers import FolderReader  # noqa: E402
from distill.data.synthetic import MAX_DEPTH  # noqa: E402
from distill.data.shards import ShardReader  # noqa: E402
from distill.metrics import default_protocol, depth_metrics, protocol_depth  # noqa: E402
from distill.quickstart import Stages, accelerate_launch  # noqa: E402
from distill.spaces import OutputSpace  # noqa: E402

PROG = "python benchmarks/label_fidelity.py"
JPEG_QUALITY = 90
MAX_CHANGE = 0.01  # the default stays draft if AbsRel vs ground truth moves by less than 1% of its value


@dataclass
class LabelFidelityConfig:
    teachers: list[str] = field(default_factory=list)  # model references, after the quickstart's teacher
    quickstart_teacher: bool = True  # train the quickstart's teacher (configs/teacher/tiny.yaml) and measure it first
    teacher_steps: int = 1000
    scenes: int = 32
    size: tuple[int, int] = (1200, 1600)  # (height, width) of the rendered photos
    repeats: int = 3
    seed: int = 4242
    output_dir: str = "runs/label-fidelity"


def render_jpegs(out: Path, args: LabelFidelityConfig, stages: Stages) -> tuple[Path, Path]:
    """Photo-style scenes with depth at ``args.size``; their images re-saved as JPEG, listed in a file."""
    from PIL import Image  # noqa: PLC0415

    scenes = out / f"scenes-{args.size[0]}x{args.size[1]}-{args.scenes}-seed{args.seed}"
    if not (scenes / "dataset.yaml").is_file():
        stages.run("render", [sys.executable, "-m", "distill.data.synthetic", "--out", str(scenes), "--num",
                              str(args.scenes), "--size", *map(str, args.size), "--style", "photo", "--geometry", "metric",
                              "--seed", str(args.seed)])
    listing = scenes / "jpegs.txt"
    paths = []
    for png in sorted((scenes / "rgb").glob("*.png")):
        jpeg = scenes / "jpeg" / (png.stem + ".jpg")
        if not jpeg.is_file():
            jpeg.parent.mkdir(parents=True, exist_ok=True)
            Image.open(png).convert("RGB").save(jpeg, quality=JPEG_QUALITY)
        paths.append(str(jpeg))
    listing.write_text("".join(p + "\n" for p in paths))
    return scenes, listing


def label(teacher: str, listing: Path, out: Path, draft: bool) -> float:
    """Label through the labeling job in this process (its model loading included); wall seconds."""
    import shutil  # noqa: PLC0415

    from pseudolabel.config import PseudolabelConfig  # noqa: PLC0415
    from pseudolabel.job import run  # noqa: PLC0415

    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(PseudolabelConfig, None, [f"teacher={teacher}", f"input={listing}", f"output={out}",
                                                f"draft={str(draft).lower()}", "batch_size=4", "num_workers=2",
                                                "progress=false"])
    start = time.perf_counter()
    manifest = run(cfg)
    seconds = time.perf_counter() - start
    if manifest["skipped"]:
        raise RuntimeError(f"{out}: {manifest['skipped']} images skipped")
    return seconds


def labels_by_image(out: Path) -> tuple[dict[str, np.ndarray], OutputSpace]:
    reader = ShardReader(out)
    labels, space = {}, None
    for i in range(len(reader)):
        s = reader[i]
        labels[Path(s.meta["path"]).stem] = s.target
        space = OutputSpace(s.space, s.geometry)
    return labels, space


def score(labels: dict[str, np.ndarray], space: OutputSpace, truth: dict[str, np.ndarray]) -> float:
    """Mean per-image AbsRel against the ground truth under the space's default protocol, aligned
    predictions clamped to the generator's depth range (an affine disparity fit can cross zero)."""
    values = []
    for key, gt in truth.items():
        gt_t = torch.from_numpy(gt)[None]
        mask = gt_t > 0
        depth = protocol_depth(torch.from_numpy(labels[key])[None], space, gt_t, mask, depth_range=(1e-3, MAX_DEPTH))
        values.append(depth_metrics(depth, gt_t, mask)["abs_rel"])
    return float(np.mean(values))


def agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Mean per-image relative L2 of two label sets (a relative model's disparity passes near 0, so a
    per-pixel ratio would say nothing)."""
    return float(np.mean([np.linalg.norm(a[k] - ref) / max(np.linalg.norm(ref), 1e-12) for k, ref in b.items()]))


def measure(teacher: str, listing: Path, out: Path, truth: dict[str, np.ndarray], repeats: int) -> dict:
    label(teacher, listing, out / "warm-up", True)  # first-run costs (imports, worker start-up) out of the timings
    times = {True: [], False: []}
    for r in range(repeats):
        for draft in ((True, False) if r % 2 == 0 else (False, True)):
            times[draft].append(label(teacher, listing, out / ("draft" if draft else "full"), draft))
    (draft_labels, space), (full_labels, _) = labels_by_image(out / "draft"), labels_by_image(out / "full")
    abs_rel = {"draft": score(draft_labels, space, truth), "full": score(full_labels, space, truth)}
    l2 = agreement(draft_labels, full_labels)
    change = abs(abs_rel["draft"] - abs_rel["full"]) / abs_rel["full"]
    return {"teacher": teacher, "space": [space.space, space.geometry], "protocol": default_protocol(space),
            "abs_rel_vs_truth": abs_rel, "relative_change": change, "draft_vs_full_rel_l2": l2, "seconds": {"draft": statistics.median(times[True]),
                                                    "full": statistics.median(times[False])},
            "keep_draft": change < MAX_CHANGE}


def _main(argv=None) -> int:
    args = parse_cli(LabelFidelityConfig, argv, prog=PROG)
    if min(args.scenes, args.repeats, args.teacher_steps, *args.size) < 1:
        raise ConfigError("scenes, repeats, teacher_steps and size must be >= 1")
    out = Path(args.output_dir).resolve()
    stages = Stages(out)
    scenes, listing = render_jpegs(out, args, stages)
    reader = FolderReader(scenes)
    truth = {Path(reader[i].key).name: reader[i].target for i in range(len(reader))}
    teachers = list(args.teachers)
    if args.quickstart_teacher:
        run_dir = out / "teacher"
        if not (run_dir / "final" / "config.json").is_file():
            stages.run("teacher", accelerate_launch("distill/train_teacher.py", "--config", "configs/teacher/tiny.yaml",
                                                    f"output_dir={run_dir}", f"max_steps={args.teacher_steps}",
                                                    f"eval_every={args.teacher_steps}", f"save_every={args.teacher_steps}"))
        teachers.insert(0, str(run_dir / "final"))
    if not teachers:
        raise ConfigError("no teacher: give --teachers or keep --quickstart-teacher")
    rows = [measure(t, listing, out / "labels" / f"teacher{i}", truth, args.repeats) for i, t in enumerate(teachers)]
    megapixels = args.size[0] * args.size[1] / 1e6
    print(f"{args.scenes} photo-style JPEGs at {args.size[0]}x{args.size[1]} ({megapixels:.1f} MP), median of {args.repeats}")
    print("| teacher | protocol | AbsRel draft | AbsRel full | change | draft vs full (rel. L2) | s draft | s full |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['teacher']} | {r['protocol']} | {r['abs_rel_vs_truth']['draft']:.4f} | {r['abs_rel_vs_truth']['full']:.4f} "
              f"| {100 * r['relative_change']:.2f}% | {r['draft_vs_full_rel_l2']:.4f} "
              f"| {r['seconds']['draft']:.1f} | {r['seconds']['full']:.1f} |")
    keep = all(r["keep_draft"] for r in rows)
    print(f"draft decoding {'stays the default' if keep else 'should not be the default'}: AbsRel vs ground truth moves "
          f"{'<' if keep else '>='} {100 * MAX_CHANGE:.0f}% of its value for {'every' if keep else 'some'} teacher")
    (out / "label_fidelity.json").write_text(json.dumps({"settings": vars(args), "rows": rows, "keep_draft": keep}, indent=1))
    return 0


def main(argv=None) -> int:
    return run_main(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
