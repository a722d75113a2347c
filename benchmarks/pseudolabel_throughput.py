"""Pseudo-labeling throughput: the job against a transformers pipeline loop and the bare model.

In one run, on the same images (../shared/data/photos, else scikit-image's sample photos) and the
same random-weight model (Depth Anything ``tiny`` and ``vits`` presets at 518, the tiny model of every
transformers depth architecture of ``distill.tiny_models`` at its own processor's size, and a
two-teacher job: Depth Anything + GLPN):

1. images/s of a loop over ``transformers.pipeline("depth-estimation")``, the way most users label;
2. images/s of this job, end to end (``pseudolabel.job.run``: listing, model load, decoding in
   DataLoader workers, inference, resizing back, PNG encoding, shard writing, manifest);
3. images/s of the bare model forward on inputs prepared before timing by the model's image
   processor (as the job's workers prepare them), batched by size as the job batches them, at the
   job's batch size: the limit (two teachers: both forwards); (3b) the
   same with two forwards running concurrently, as the job runs its model on a CPU by default
   (``streams``, see ``pseudolabel.runner``), i.e. the limit of the job's way of using the cores.

Each figure comes from its own process with the same environment, warm-up and model loading
excluded: (2) is the job's own labeling time (first batch to last shard committed and fsynced) as
``distill/pseudolabel.py`` logs it; its start-up (imports, listing, model load) is printed apart.
Run it on an otherwise idle machine: another CPU-bound process makes spinning OpenMP threads
lose up to 10x (``OMP_WAIT_POLICY=PASSIVE`` avoids that, at about -40% on an idle machine).

Then the peak memory (PSS of the job process and its workers, sampled every 50 ms) of the job on
the corpus and on a corpus 10x larger (the photos linked 10 times under other names): flat.

    python benchmarks/pseudolabel_throughput.py [--presets tiny vits] [--architectures dpt glpn ...]
        [--batch-size 1] [--workers 2]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "photos"))
JOB_LINE = re.compile(r"(\d+) labeled, (\d+) skipped, (\d+) shards in ([\d.]+) s")


def photo_files(tmp: str) -> tuple[list[str], str]:
    files = sorted(glob.glob(os.path.join(PHOTOS, "*.jpg")))
    if files:
        return files, PHOTOS
    import numpy as np  # noqa: PLC0415
    import skimage.data  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry"):
        try:
            image = np.asarray(getattr(skimage.data, name)())
        except Exception:  # noqa: BLE001 - a sample that needs a download is skipped
            continue
        path = os.path.join(tmp, f"{name}.jpg")
        Image.fromarray(image[..., :3] if image.ndim == 3 else image).convert("RGB").save(path, quality=92)
        files.append(path)
    return files, "scikit-image sample photos"


def linked_corpus(files: list[str], root: str, copies: int) -> list[str]:
    os.makedirs(root, exist_ok=True)
    for c in range(copies):
        for f in files:
            os.symlink(os.path.abspath(f), os.path.join(root, f"c{c:02d}_{os.path.basename(f)}"))
    return sorted(glob.glob(os.path.join(root, "*.jpg")))


# ------------------------------------------------------------------- measurements (subprocesses)
def measure_pipeline(model_dir: str, files: list[str]) -> float:
    from transformers import pipeline  # noqa: PLC0415

    pipe = pipeline("depth-estimation", model=model_dir, device="cpu")
    pipe(files[0])  # warm-up
    start = time.perf_counter()
    for f in files:
        pipe(f)
    return len(files) / (time.perf_counter() - start)


def measure_bare(model_dir: str, files: list[str], batch_size: int, streams: int = 1) -> float:
    """The forward alone, on the inputs the job makes (``distill.inference.InputRule``: the model's
    image processor, prepared before timing; the job normalises in its decoding workers too), several
    teachers (``model_dir`` "A,B") one after the other; ``streams`` > 1: that many threads run forwards
    concurrently, each with cores / streams intra-op threads (what the job does on a CPU)."""
    import torch  # noqa: PLC0415

    from distill.data.formats import read_rgb  # noqa: PLC0415
    from distill.inference import InputRule  # noqa: PLC0415
    from distill.models import resolve_model  # noqa: PLC0415

    teachers = [resolve_model(d) for d in model_dir.split(",")]
    rules = [InputRule("processor", t.preprocessing, t.processor) for t in teachers]
    models = [t.model.eval() for t in teachers]
    buckets: dict[tuple, list] = {}  # the job's batches: one input size per batch and teacher
    for f in files:
        rgb = read_rgb(f)
        for k, rule in enumerate(rules):
            x = torch.from_numpy(rule.prepare(rgb))
            buckets.setdefault((k, tuple(x.shape)), []).append(x)
    batches = [(k, torch.stack(xs[i:i + batch_size])) for (k, _), xs in buckets.items() for i in range(0, len(xs), batch_size)]
    if streams > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // streams))
    pending = list(batches)
    lock = threading.Lock()

    def forward_all():
        with torch.inference_mode():
            while True:
                with lock:
                    if not pending:
                        return
                    k, b = pending.pop()
                models[k](pixel_values=b).predicted_depth.float()

    with torch.inference_mode():
        for k, b in {k: b for k, b in batches}.items():  # warm-up, each teacher
            models[k](pixel_values=b)
    start = time.perf_counter()
    threads = [threading.Thread(target=forward_all) for _ in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(files) / (time.perf_counter() - start)


def in_subprocess(kind: str, model_dir: str, files: list[str], batch_size: int, env: dict, streams: int = 1) -> float:
    args = f", {batch_size}, {streams}" if kind == "bare" else ""
    code = (f"import sys, json; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r});"
            f"import pseudolabel_throughput as b; files = json.load(open(sys.argv[1]));"
            f"print('RESULT', b.measure_{kind}({model_dir!r}, files{args}))")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(files, f)
    try:
        proc = subprocess.run([sys.executable, "-c", code, f.name], capture_output=True, text=True, env=env)
    finally:
        os.remove(f.name)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return float(proc.stdout.split("RESULT")[-1])


def _tree_pss(pid: int) -> int:
    """Proportional set size (shared pages split between their users: forked DataLoader workers
    share the parent's libraries) of a process and all its descendants, in bytes."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def run_job(model_dir: str, corpus: str, out: str, batch_size: int, workers: int, env: dict, extra=()) -> dict:
    """The job script as users run it; returns its labeling rate, wall time and peak memory (PSS)."""
    cmd = [sys.executable, os.path.join(ROOT, "distill", "pseudolabel.py"), "--teacher", model_dir, "--input", corpus,
           "--output", out, "--batch-size", str(batch_size), "--workers", str(workers), *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peak = 0

    def sample():
        nonlocal peak
        while proc.poll() is None:
            peak = max(peak, _tree_pss(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, err = proc.communicate()
    sampler.join()
    wall = time.perf_counter() - start
    err = err.decode(errors="replace")
    match = JOB_LINE.search(err)
    if proc.returncode or not match:
        raise RuntimeError(err[-3000:])
    labeled, seconds = int(match.group(1)), float(match.group(4))
    return {"rate": labeled / seconds, "labeling_s": seconds, "wall_s": wall, "peak_mib": peak / 2**20, "labeled": labeled,
            "breakdown": err[match.end():].split("\n")[0].strip("; ")}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "vits"])
    parser.add_argument("--architectures", nargs="*", default=None,
                        help="rows of tiny random models of these transformers architectures (distill.registry.TINY; "
                             "default: all) and one row of two teachers (Depth Anything + GLPN)")
    parser.add_argument("--batch-size", type=int, default=1, help="the job's batch size (on this CPU 1 is the fastest)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=0, help="corpus = the photos linked this many times (0: 5 for tiny, 1 otherwise)")
    parser.add_argument("--memory-repeat", type=int, default=10, help="0: skip the memory measurement")
    parser.add_argument("--job-args", default="", help="extra job options, e.g. 'store_image=reencode'")
    args = parser.parse_args()

    import torch  # noqa: PLC0415

    from distill.models import build_model, save_model  # noqa: PLC0415

    env = {**os.environ}
    tmp = tempfile.mkdtemp(prefix="pl_bench_")
    try:
        files, source = photo_files(tmp)
        print(f"{len(files)} photos ({source}); {os.cpu_count()} CPU cores, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY', 'unset')}; job: batch size "
              f"{args.batch_size}, {args.workers} decoding workers, default options {args.job_args}".rstrip())
        print(f"{'preset':14s} {'images':>6s} {'(1) pipeline':>13s} {'(2) job':>9s} {'(3) bare':>9s} {'(2)/(3)':>8s} "
              f"{'(2)/(1)':>8s} {'(3b) bare, 2 streams':>21s} {'(2)/(3b)':>9s}")
        model_dirs = {}
        for preset in args.presets:
            torch.manual_seed(0)
            model_dirs[preset] = save_model(build_model(preset), os.path.join(tmp, f"model_{preset}"))
        from distill.registry import TINY
        from distill.tiny_models import save_tiny  # noqa: PLC0415

        architectures = list(TINY) if args.architectures is None else args.architectures
        for arch in architectures:
            model_dirs[arch] = save_tiny(arch, os.path.join(tmp, f"arch_{arch}"))
        if {"depth_anything", "glpn"} <= set(architectures):
            model_dirs["2 teachers"] = f"{model_dirs['depth_anything']},{model_dirs['glpn']}"
        for preset in model_dirs:
            repeat = args.repeat or (5 if preset == "tiny" else 1)
            corpus = os.path.join(tmp, f"corpus_{preset.replace(' ', '_')}")
            images = linked_corpus(files, corpus, repeat)
            several = "," in model_dirs[preset]  # no pipeline runs two models
            p1 = float("nan") if several else in_subprocess("pipeline", model_dirs[preset], images, args.batch_size, env)
            job = run_job(model_dirs[preset], corpus, os.path.join(tmp, f"out_{preset.replace(' ', '_')}"), args.batch_size, args.workers, env,
                          args.job_args.split())
            p3 = in_subprocess("bare", model_dirs[preset], images, args.batch_size, env)
            p3b = in_subprocess("bare", model_dirs[preset], images, args.batch_size, env, streams=2)
            p2 = job["rate"]
            print(f"{preset:14s} {len(images):6d} {p1:10.2f}/s {p2:6.2f}/s {p3:6.2f}/s {p2 / p3:8.0%} {p2 / p1:7.2f}x "
                  f"{p3b:18.2f}/s {p2 / p3b:9.0%}", flush=True)
            print(f"        job: start-up {job['wall_s'] - job['labeling_s']:.0f} s (imports, listing, model load), "
                  f"{job['breakdown']}", flush=True)
        if args.memory_repeat:
            preset = args.presets[0]
            for copies in (1, args.memory_repeat):
                corpus = os.path.join(tmp, f"mem_{copies}")
                images = linked_corpus(files, corpus, copies)
                job = run_job(model_dirs[preset], corpus, os.path.join(tmp, f"mem_out_{copies}"), args.batch_size,
                              args.workers, env, args.job_args.split())
                print(f"peak memory (PSS), {preset}, {len(images):5d} images: {job['peak_mib']:6.0f} MiB (job process + workers; "
                      f"{job['rate']:.2f} images/s)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
