"""The labeling job's own overhead at cluster scale, simulated on one machine.

A corpus of ``--inputs`` (default 1,000,000) images: symlinks, under 1,000 per folder, to a small
pool of real photos (../shared/data/photos, else scikit-image's samples). With a tiny random teacher:

1. listing and planning (``pseudolabel.job.prepare_job``: the walk, ``_job/items.jsonl`` and its
   offsets, ``job.json``), time and peak memory above the process's start, for a tenth of the
   corpus and for all of it, given as a folder and as a list file of the same paths, each in a
   fresh process: flat means the two peaks are close;
2. start-up of a resumed job: the full corpus at ``--shard-size`` (default 50: 20,000 units), about
   half of the units done on disk (one unit labeled for real, hard-linked and re-indexed as the
   others: the start-up reads indexes and tars' sizes, not their keys), then the real command
   (``python distill/pseudolabel.py``) started again: seconds to its first claim and to its first
   newly committed unit (goal: labeling starts within 60 s), then SIGTERM: exit code and seconds;
3. the CPU-side ceiling: the job in-process on the pool's real photos (re-linked ``--ceiling-inputs``
   times), every part real (listing, decoding and resizing to 518 in the DataLoader workers,
   resizing the label back, PNG encoding, shard writing, fsync) except the model, replaced by a
   trivial one (the mean of the input's channels as depth): images/s per core, median of 3, with
   as many decoding workers as cores. Goal: 16 cores sustain >= 3x a ViT-L teacher's bf16 forward
   on one GPU (300 images/s at 518 unless the GPU check measured otherwise), i.e. >= 56 images/s
   per core.

    python benchmarks/labeling_at_scale.py [--inputs 1000000] [--shard-size 50] [--work-dir DIR]

Writes ``labeling_at_scale.json`` in the work directory (a temporary one, removed, unless given).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from pseudolabel_throughput import photo_files  # noqa: E402 - this script's folder is on the path

SCRIPT = os.path.join(ROOT, "distill", "pseudolabel.py")
PER_FOLDER = 1000
GPU_IMAGES_PER_S = 300.0  # ViT-L, bf16, 518, one GPU (the assumption; no GPU check figure yet)
GOAL_FACTOR, GOAL_CORES = 3.0, 16


def log(message: str) -> None:
    print(message, flush=True)


def make_corpus(pool: list[str], root: str, n: int) -> float:
    """``n`` symlinks to the pool's photos: ``root/part0`` holds the first tenth, ``root/part1`` the rest."""
    start = time.perf_counter()
    tenth = n // 10
    for i in range(n):
        if i % PER_FOLDER == 0:
            folder = os.path.join(root, "part0" if i < tenth else "part1", f"d{i // PER_FOLDER:05d}")
            os.makedirs(folder, exist_ok=True)
        os.symlink(pool[i % len(pool)], os.path.join(folder, f"x{i:07d}.jpg"))
    return time.perf_counter() - start


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


# ------------------------------------------------------------------------- part 1 (own process)
def child_listing(teacher: str, inputs: str, out: str, shard_size: int) -> dict:
    from distill.config import load_config  # noqa: PLC0415
    from pseudolabel.config import PseudolabelConfig  # noqa: PLC0415
    from pseudolabel.job import normalise, prepare_job, unit_order  # noqa: PLC0415

    cfg = normalise(load_config(PseudolabelConfig, None, [f"teacher={teacher}", f"input={inputs}", f"output={out}",
                                                          f"shard_size={shard_size}", "progress=false"]))
    base = rss_mb()  # imports done, teacher reference resolved: what any process has before listing
    start = time.perf_counter()
    job = prepare_job(cfg, 0)
    listed = time.perf_counter() - start
    start = time.perf_counter()
    order = unit_order(job["units"], 0, 1)
    planned = time.perf_counter() - start
    del order
    return {"inputs": job["items"], "units": job["units"], "listing_s": listed, "planning_s": planned,
            "base_rss_mb": base, "peak_above_base_mb": peak_rss_mb() - base}


def run_child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------- part 2
def command(teacher: str, inputs: str, out: str, shard_size: int, *extra: str) -> list[str]:
    return [sys.executable, SCRIPT, "--teacher", teacher, "--input", inputs, "--output", out, "--shard-size",
            str(shard_size), "--claim-units", "1", "--workers", "1", "--no-progress", *extra]


def first_new(pattern: str, before: set[str], proc, timeout: float) -> float | None:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if set(glob.glob(pattern)) - before:
            return time.perf_counter()
        if proc.poll() is not None:
            return None
        time.sleep(0.01)
    return None


def terminate(proc, timeout: float = 120) -> str:
    """SIGTERM, as a scheduler sends it; the job's stderr."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        dump = "(install py-spy to see where it hung)"
        if shutil.which("py-spy"):
            dump = subprocess.run(["py-spy", "dump", "--pid", str(proc.pid)], capture_output=True, text=True).stdout
        proc.kill()
        raise RuntimeError(f"the job did not stop within {timeout} s of SIGTERM:\n{dump[-6000:]}") from None


def resumed_start(teacher: str, inputs: str, out: str, shard_size: int, units: int, seed: int = 0) -> dict:
    from distill.data.shards import index_path  # noqa: PLC0415
    from distill.runtime import write_atomic  # noqa: PLC0415
    from pseudolabel.inputs import shard_name  # noqa: PLC0415

    # one unit labeled for real
    proc = subprocess.Popen(command(teacher, inputs, out, shard_size), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    if first_new(os.path.join(out, "index", "*.json"), set(), proc, 600) is None:
        raise RuntimeError(proc.stderr.read()[-3000:])
    terminate(proc)
    done = sorted(int(os.path.basename(p)[6:12]) for p in glob.glob(os.path.join(out, "index", "*.json")))
    template_unit = done[0]
    with open(index_path(out, shard_name(template_unit))) as f:
        template = json.load(f)
    tar = os.path.join(out, template["shard"])
    # about half of all units done: the template hard-linked under their names, each with its own index
    rng = random.Random(seed)
    fake = [u for u in range(units) if u not in done and rng.random() < 0.5]
    start = time.perf_counter()
    for unit in fake:
        name = shard_name(unit)
        os.link(tar, os.path.join(out, name + ".tar"))
        write_atomic(index_path(out, name), json.dumps({**template, "unit": unit, "shard": name + ".tar"},
                                                        separators=(",", ":")).encode())
    made = time.perf_counter() - start
    before_claims = set(glob.glob(os.path.join(out, "_claims", "*.claim")))
    before_index = set(glob.glob(os.path.join(out, "index", "*.json")))
    start = time.perf_counter()
    proc = subprocess.Popen(command(teacher, inputs, out, shard_size), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    claim_at = first_new(os.path.join(out, "_claims", "*.claim"), before_claims, proc, 600)
    commit_at = first_new(os.path.join(out, "index", "*.json"), before_index, proc, 600)
    if claim_at is None or commit_at is None:
        raise RuntimeError(proc.stderr.read()[-3000:])
    stop = time.perf_counter()
    err = terminate(proc)
    return {"units": units, "done_on_disk": len(fake) + len(done), "making_done_units_s": made,
            "to_first_claim_s": claim_at - start, "to_first_commit_s": commit_at - start,
            "sigterm_exit_code": proc.returncode, "sigterm_to_exit_s": time.perf_counter() - stop,
            "sigterm_last_line": err.strip().splitlines()[-1] if err.strip() else ""}


# ------------------------------------------------------------------------- part 3 (own process)
def child_ceiling(teacher: str, inputs: str, out: str, workers: int) -> dict:
    import torch  # noqa: PLC0415
    from transformers.modeling_outputs import DepthEstimatorOutput  # noqa: PLC0415

    import pseudolabel.job as job_module  # noqa: PLC0415
    from distill.config import load_config  # noqa: PLC0415
    from pseudolabel.config import PseudolabelConfig  # noqa: PLC0415

    class TrivialDepth(torch.nn.Module):
        def forward(self, pixel_values):
            return DepthEstimatorOutput(predicted_depth=pixel_values.mean(1))

    load_teacher = job_module._load_teacher

    def trivial_teacher(cfg, reference):
        resolved = load_teacher(cfg, reference)
        resolved.model = TrivialDepth()
        return resolved

    job_module._load_teacher = trivial_teacher
    lines = []
    cfg = load_config(PseudolabelConfig, None, [f"teacher={teacher}", f"input={inputs}", f"output={out}",
                                                f"num_workers={workers}", "shard_size=100", "batch_size=8"])
    manifest = job_module.run(cfg, log=lines.append)
    summary = next(line for line in lines if " labeled, " in line and " shards in " in line)
    seconds = float(summary.split(" shards in ")[1].split(" s")[0])
    return {"images": manifest["labeled"], "labeling_s": seconds, "images_per_s": manifest["labeled"] / seconds,
            "summary": summary}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--ceiling-inputs", type=int, default=10, help="links of each pool photo in part 3")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work-dir")
    parser.add_argument("--listing-only", action="store_true", help="part 1 alone")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        result = child_listing(*rest[:3], int(rest[3])) if kind == "listing" else child_ceiling(*rest[:3], int(rest[3]))
        print(json.dumps(result))
        return 0

    work = args.work_dir or tempfile.mkdtemp(prefix="labeling_at_scale_")
    os.makedirs(work, exist_ok=True)
    try:
        return run_all(args, work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


def run_all(args, work: str) -> int:
    import torch  # noqa: PLC0415

    from distill.models import build_model, save_model  # noqa: PLC0415

    cores = len(os.sched_getaffinity(0))
    pool, pool_source = photo_files(work)
    pool = [os.path.abspath(p) for p in pool]
    torch.manual_seed(0)
    teacher = os.path.join(work, "teacher")
    save_model(build_model("nano"), teacher, size=518)
    results = {"machine": f"{cores} cores", "pool": f"{len(pool)} photos ({pool_source})", "inputs": args.inputs,
               "shard_size": args.shard_size}
    log(f"pool: {results['pool']}; {cores} cores")

    corpus = os.path.join(work, "corpus")
    if not os.path.isdir(corpus):
        log(f"making {args.inputs:,} symlinks ...")
        results["corpus_s"] = make_corpus(pool, corpus, args.inputs)
        log(f"  {results['corpus_s']:.1f} s")

    # 1. listing and planning
    results["listing"] = []
    lists = {}
    for name, folder in (("tenth", os.path.join(corpus, "part0")), ("all", corpus)):  # the same inputs as list files
        lists[name] = os.path.join(work, f"{name}.txt")
        with open(lists[name], "w") as f:
            for dirpath, _, files in sorted(os.walk(folder)):
                f.writelines(os.path.join(dirpath, file) + "\n" for file in sorted(files))
    for name, inputs in (("tenth", os.path.join(corpus, "part0")), ("all", corpus),
                         ("tenth_list", lists["tenth"]), ("all_list", lists["all"])):
        out = os.path.join(work, f"job_{name}")
        shutil.rmtree(out, ignore_errors=True)
        row = run_child(["listing", teacher, inputs, out, str(args.shard_size)])
        row["input"] = "list file" if name.endswith("_list") else "folder"
        results["listing"].append(row)
        log(f"listing {row['inputs']:,} inputs ({row['input']}) -> {row['units']:,} units: {row['listing_s']:.1f} s, "
            f"planning {row['planning_s']:.2f} s, peak memory above start {row['peak_above_base_mb']:.1f} MB")
    if args.listing_only:
        print(json.dumps(results, indent=1))
        return 0

    # 2. resumed start-up, on the full job's listing
    row = resumed_start(teacher, corpus, os.path.join(work, "job_all"), args.shard_size, results["listing"][1]["units"])
    results["resumed_start"] = row
    log(f"resumed job, {row['units']:,} units, {row['done_on_disk']:,} done on disk: first claim after "
        f"{row['to_first_claim_s']:.1f} s, first unit committed after {row['to_first_commit_s']:.1f} s (goal < 60 s); "
        f"SIGTERM: exit {row['sigterm_exit_code']} in {row['sigterm_to_exit_s']:.1f} s ({row['sigterm_last_line']})")

    # 3. CPU-side ceiling
    ceiling = os.path.join(work, "ceiling")
    os.makedirs(ceiling, exist_ok=True)
    for c in range(args.ceiling_inputs):
        for p in pool:
            link = os.path.join(ceiling, f"c{c:03d}_{os.path.basename(p)}")
            if not os.path.exists(link):
                os.symlink(p, link)
    rates = []
    for r in range(args.repeats):
        out = os.path.join(work, f"ceiling_out{r}")
        shutil.rmtree(out, ignore_errors=True)
        row = run_child(["ceiling", teacher, ceiling, out, str(cores)])
        rates.append(row["images_per_s"])
        log(f"CPU side, trivial model, {cores} decoding workers: {row['images_per_s']:.1f} images/s ({row['summary']})")
        shutil.rmtree(out, ignore_errors=True)
    per_core = statistics.median(rates) / cores
    goal = GOAL_FACTOR * GPU_IMAGES_PER_S / GOAL_CORES
    results["ceiling"] = {"images_per_s": rates, "median_per_core": per_core, "goal_per_core": goal,
                          "projected_16_cores": per_core * GOAL_CORES}
    log(f"CPU-side ceiling: {per_core:.1f} images/s per core (median of {len(rates)}), {per_core * GOAL_CORES:.0f} on "
        f"{GOAL_CORES} cores if it scales linearly; goal {goal:.1f} per core ({GOAL_FACTOR:g} x {GPU_IMAGES_PER_S:g} "
        f"images/s on {GOAL_CORES} cores)")
    with open(os.path.join(work, "labeling_at_scale.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
