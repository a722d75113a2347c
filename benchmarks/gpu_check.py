"""One-command check of a GPU node: environment, training and labeling throughput, compile, FSDP / ZeRO-2, NCCL.

    python benchmarks/gpu_check.py                  # on the GPU node, from the repository root; then read gpu_check.json
    python benchmarks/gpu_check.py --smoke          # anywhere, CPU included: tiny models, seconds per part
    python benchmarks/gpu_check.py --parts 1 2 4 --skip-compile --output /tmp/gc.json --budget-s 200

Parts (each in its own process: a fresh CUDA context, its own peak memory, and a crash, segfault,
OOM or hang of one part is recorded and the next part runs; a per-part timeout):

1. ``environment``: Python, torch / CUDA / cuDNN / NCCL versions, GPU name and memory, bf16, which
   SDPA kernels (flash, memory-efficient, cuDNN, math) run, the attention the model uses, and which
   optional packages are importable (``albumentations`` is needed by the training transforms,
   ``deepspeed`` by ZeRO-2; ``datasets`` and ``webdataset`` are never imported by this check);
2. ``teacher_step``: ``vits`` and ``vitl`` at 518 crops, bf16, with and without gradient
   checkpointing: the engine's samples/s (``teacher.train.main`` through ``distill.engine.train``,
   its ``metrics.jsonl`` windows with the first dropped, via ``train_step.engine_samples_per_s``) on
   pre-rendered synthetic RGB-D scenes read by the ``folder`` reader, against the bare forward +
   backward + AdamW of the same preset on the same (pre-loaded) batches; ratio and peak memory;
3. ``student_step``: a ``vits`` student (``student.train.main``) on shards that the real labeling job
   wrote from the photos (tiny random teacher, flip TTA, so confidence maps), with colour jitter,
   blur, CutMix, the frozen reference forward and feature alignment; the bare step has the frozen
   forward and CutMix in it too (the model work both must do);
4. ``labeling``: the real job (``pseudolabel.job.run``, ``configs/pseudolabel/cluster.yaml`` with
   ``tta=none compile=false``) on a few hundred real photos (the photos repeated) with a ``vits`` and a
   ``vitl`` random-weight teacher, batched, bf16: images/s against the bare batched forward on
   pre-decoded tensors already on the device, against a ``pipeline("depth-estimation")`` loop, and
   the CPU-side ceiling (the job with a trivial model: decoding + encoding + writing);
5. ``compile``: ``torch.compile`` on against off for the teacher step (2) and the labeling job (4)
   (cold compile and a second, warm-cache run); ``--skip-compile`` skips it. It runs last;
6. ``distributed``: a few steps of FSDP (1 process) and of DeepSpeed ZeRO-2 (1 process) through
   ``accelerate launch --config_file configs/accelerate/{fsdp,zero2}.yaml``, then the same command with
   ``resume=latest`` and more ``max_steps``: it must continue from the checkpoint (``from step N``,
   ``metrics.jsonl`` steps continuing);
7. ``nccl``: a 2-process DDP (NCCL) run through ``configs/accelerate/ddp.yaml`` when more than one
   GPU is visible; skipped, with the reason, otherwise.

Output: ``gpu_check.json`` (``--output``; rewritten after every part, so a killed run leaves the
parts done so far; a failed part carries its error, the traceback's last lines and its log's
tail), the per-part logs in ``gpu_check_logs/`` next to it (``--logs``), and a table (part,
status, key numbers, seconds). Exit code 1 when a part failed.

Photos (``--photos DIR``; default ``<repo>/vendor/photos``, else ``../shared/data/photos``, else
scikit-image's bundled photographs written as JPEGs): the JSON says which source was used.
Labeling is measured on real photos, never random images (encoding cost depends on content); the
teachers have random weights (no hub on the node), whose depth maps are smoother than a trained
teacher's, so their PNG encoding is, if anything, cheaper than in production.

Goals of the GPU numbers (printed at the end and in ``goals``): the labeling job >= 85% of the
bare batched bf16 forward for ``vitl``; training-engine overhead (bare / engine - 1) <= 15% for
teacher and student; nothing crashes. A full run should take under 5 minutes on one H100/H200
with 16 CPU cores (``--budget-s``, default 285 s: once past it the remaining parts are skipped).

``--smoke``: ``tiny`` models, crops of 56, a few steps, fp32, a dozen photos; parts forked from
one pre-imported process (``--isolation fork``) where no GPU is present, so the whole run takes
about 40 s on 2 cores. There the compile part uses the ``eager`` dynamo backend (graph capture
without inductor's C++ build, ~90 s on such a CPU), FSDP is skipped (accelerate runs FSDP only on
GPUs), ZeRO-2 is skipped unless ``--with-deepspeed`` (two DeepSpeed launches on CPU: ~50 s, more
the first time, when DeepSpeed builds its CPU op), NCCL is skipped. ``tests/test_gpu_check.py``
runs it.

Packages the node lacks (``benchmarks/prepare_gpu_vendor.sh`` vendors them as wheels): the parts
that need one fail, or skip, with one line naming it (``albumentations``: parts 2, 3, 5;
``deepspeed``: ZeRO-2 is skipped). ``PYTHONPATH`` is passed on to every part and launch, the
repository root put first (the project need not be pip-installed there).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
for _path in (ROOT, BENCH):  # the project (maybe not pip-installed on the node) and the sibling benchmarks
    if _path not in sys.path:
        sys.path.insert(0, _path)

import pseudolabel_throughput  # noqa: E402 - stdlib only at import: photo fallback, linked corpus, the job's log line

SHARED_PHOTOS = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "photos"))
VENDOR_PHOTOS = os.path.join(ROOT, "vendor", "photos")
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
TEACHER_YAML = os.path.join(ROOT, "configs", "teacher", "tiny.yaml")
STUDENT_YAML = os.path.join(ROOT, "configs", "student", "tiny.yaml")
CLUSTER_YAML = os.path.join(ROOT, "configs", "pseudolabel", "cluster.yaml")
ACCELERATE_CONFIGS = os.path.join(ROOT, "configs", "accelerate")
OPTIONAL_PACKAGES = {  # import name -> (distribution names, what needs it)
    "albumentations": (("albumentations",), "training transforms (distill.data.transforms, student.perturb): parts 2, 3, 5"),
    "deepspeed": (("deepspeed",), "ZeRO-2 (part 6)"),
    "datasets": (("datasets",), "hf: inputs and readers only; not used by this check"),
    "webdataset": (("webdataset",), "reading shards with webdataset; not used by this check or the project's own reader"),
    "timm": (("timm",), None),
    "onnxruntime": (("onnxruntime", "onnxruntime-gpu"), None),
    "cv2": (("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"), None),
    "skimage": (("scikit-image",), "photo fallback"),
    "braceexpand": (("braceexpand",), "brace patterns of .tar inputs"),
    "tensorboard": (("tensorboard",), "tracker=tensorboard (this check uses tracker=none)"),
}
CORE_PACKAGES = {"torchvision": "torchvision", "transformers": "transformers", "accelerate": "accelerate",
                 "huggingface_hub": "huggingface_hub", "safetensors": "safetensors", "numpy": "numpy", "PIL": "pillow"}


# ------------------------------------------------------------------------------------ settings
def settings(smoke: bool, cpus: int) -> dict:
    """What each part measures. Full: the recipe's 518 crops in bf16 at batch sizes that fit one
    H100/H200 (80-141 GB); smoke: tiny models and crops, seconds per part on a CPU."""
    workers = max(2, min(12, cpus - 4))
    if smoke:
        return {
            "precision": "no", "label_precision": "fp32", "crop": 56, "workers": 0, "job_workers": 1,
            "scenes": {"num": 12, "size": [64, 84], "chunks": 1},
            "teacher": [{"preset": "tiny", "batch": 4, "steps": 6, "window": 2}],
            "checkpointing": [False, True],
            "student": [{"preset": "tiny", "batch": 4, "steps": 6, "window": 2}],
            "shards": {"images": 12, "input_size": 112, "batch": 4},
            "labeling": {"images": 12, "input_size": 112, "presets": [["tiny", 4]], "pipeline_images": 4,
                         "ceiling": ["tiny", 4]},
            "compile": {"teacher": {"preset": "tiny", "batch": 4, "steps": 6, "window": 2},
                        "labeling": ["tiny", 4], "backend": "eager"},
            "distributed": {"preset": "tiny", "crop": 42, "batch": 4, "steps": 3, "more_steps": 5, "scene": [48, 64]},
            "timeouts": {"environment": 120, "teacher_step": 180, "student_step": 180, "labeling": 180,
                         "compile": 240, "distributed": 600, "nccl": 300},
            "budget_s": 0,
        }
    return {
        "precision": "bf16", "label_precision": "bf16", "crop": 518, "workers": workers, "job_workers": 8,
        "scenes": {"num": 64, "size": [518, 692], "chunks": min(8, max(1, cpus // 2))},
        "teacher": [{"preset": "vits", "batch": 16, "steps": 30, "window": 10},
                    {"preset": "vitl", "batch": 8, "steps": 20, "window": 5}],
        "checkpointing": [False, True],
        "student": [{"preset": "vits", "batch": 16, "steps": 24, "window": 6}],
        "shards": {"images": 100, "input_size": 518, "batch": 32},
        "labeling": {"images": 600, "input_size": 518, "presets": [["vits", 32], ["vitl", 16]], "pipeline_images": 48,
                     "ceiling": ["tiny", 32]},
        # vits for both: a cold inductor compile of vitl (several input shapes) alone takes minutes
        "compile": {"teacher": {"preset": "vits", "batch": 16, "steps": 30, "window": 10},
                    "labeling": ["vits", 32], "backend": "inductor"},
        "distributed": {"preset": "tiny", "crop": 112, "batch": 8, "steps": 3, "more_steps": 6, "scene": [120, 160]},
        "timeouts": {"environment": 120, "teacher_step": 420, "student_step": 300, "labeling": 360,
                     "compile": 420, "distributed": 420, "nccl": 300},
        "budget_s": 285,
    }


# ------------------------------------------------------------------------------- small helpers
class Skip(Exception):
    """A part (or one of its runs) that does not apply here; the message is the reason."""


def one_line(err: BaseException) -> str:
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first}"[:400] if first else type(err).__name__


def traceback_tail(err: BaseException, lines: int = 12) -> list[str]:
    return "".join(traceback.format_exception(type(err), err, err.__traceback__)).rstrip().splitlines()[-lines:]


def log_tail(path: str, lines: int = 25) -> list[str]:
    """The last lines of a log, progress-bar redraws (carriage returns) reduced to their last state."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 64_000))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    out = [line.split("\r")[-1].rstrip() for line in text.splitlines()]
    return [line for line in out if line.strip()][-lines:]


def write_json(path: str, data) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)


def ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b > 0 else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require(module: str, why: str) -> None:
    """Import ``module`` or fail the part with one line naming what needs it."""
    import importlib  # noqa: PLC0415

    try:
        importlib.import_module(module)
    except ImportError as err:
        raise RuntimeError(f"{module} is not importable ({one_line(err)}): needed by {why}") from None


def package_version(names) -> str | None:
    from importlib import metadata  # noqa: PLC0415

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


# ------------------------------------------------------------------------------------- photos
def resolve_photos(requested: str | None, work_dir: str) -> dict:
    """The photo corpus: ``--photos DIR``, else ``<repo>/vendor/photos``, else ``../shared/data/photos``,
    else scikit-image's bundled photographs written as JPEGs (``pseudolabel_throughput.photo_files``)."""
    candidates = [(requested, "--photos")] if requested else [(VENDOR_PHOTOS, "vendor/photos"), (SHARED_PHOTOS, "../shared/data/photos")]
    for folder, label in candidates:
        files = sorted(f for f in glob.glob(os.path.join(folder, "*")) if f.lower().endswith(PHOTO_EXTENSIONS))
        if files:
            return {"source": label, "dir": os.path.abspath(folder), "count": len(files), "files": [os.path.abspath(f) for f in files]}
        if requested:
            raise SystemExit(f"gpu_check.py: --photos {requested}: no {'/'.join(PHOTO_EXTENSIONS)} files there")
    folder = os.path.join(work_dir, "skimage_photos")
    os.makedirs(folder, exist_ok=True)
    saved = pseudolabel_throughput.PHOTOS
    pseudolabel_throughput.PHOTOS = os.path.join(folder, "none")  # go straight to the scikit-image fallback
    try:
        files, _ = pseudolabel_throughput.photo_files(folder)
    finally:
        pseudolabel_throughput.PHOTOS = saved
    if not files:
        raise SystemExit("gpu_check.py: no photos: none in vendor/photos or ../shared/data/photos, and scikit-image has none")
    return {"source": "scikit-image bundled photographs (skimage.data)", "dir": folder, "count": len(files), "files": files}


def corpus(ctx, name: str, count: int) -> tuple[str, list[str]]:
    """A folder of ``count`` inputs: the photos, repeated (symlinks under other names) when fewer."""
    photos = ctx.photos["files"]
    files, copies = (photos[:count], 1) if count <= len(photos) else (photos, math.ceil(count / len(photos)))
    folder = os.path.join(ctx.work, name)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    pseudolabel_throughput.linked_corpus(files, folder, copies)
    listed = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    return folder, listed


# ------------------------------------------------------------------------------ device, memory
def quiet() -> None:
    """No per-call weight loading / saving progress bars in the parts' logs."""
    from distill.models import quiet_transformers  # noqa: PLC0415

    quiet_transformers()


def device():
    import torch  # noqa: PLC0415

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(dev) -> None:
    import torch  # noqa: PLC0415

    if dev.type == "cuda":
        torch.cuda.synchronize()


class PeakMemory:
    """Peak memory of one measurement: on a GPU ``torch.cuda.max_memory_allocated`` less what was
    allocated when it started (so what an earlier measurement of the part left does not count),
    else this process's peak resident set (VmHWM, reset through /proc/self/clear_refs; DataLoader
    workers excluded)."""

    def __init__(self, dev):
        self.dev = dev
        self.baseline = 0
        self.kind = ("cuda max_memory_allocated minus the allocation at the start of the measurement" if dev.type == "cuda"
                     else "process peak RSS (VmHWM; DataLoader workers excluded)")

    def reset(self) -> None:
        import gc  # noqa: PLC0415

        import torch  # noqa: PLC0415

        gc.collect()  # an earlier run's Accelerator, model and optimizer
        if self.dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def mib(self) -> float:
        import torch  # noqa: PLC0415

        if self.dev.type == "cuda":
            return (torch.cuda.max_memory_allocated() - self.baseline) / 2**20
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        import resource  # noqa: PLC0415

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -------------------------------------------------------------------------- training helpers
def train_overrides(ctx, preset: str, batch: int, steps: int, window: int, out: str, checkpointing=False, compile_=False) -> list[str]:
    s = ctx.settings
    return [f"model.preset={preset}", f"data.crop_size={s['crop']}", f"batch_size={batch}", f"max_steps={steps}",
            f"log_every={window}", f"output_dir={out}", "tracker=none", "save_every=0", "eval_every=0", "data.val=[]",
            f"precision={s['precision']}", "optim.warmup_steps=0", f"data.num_workers={s['workers']}",
            f"model.gradient_checkpointing={str(bool(checkpointing)).lower()}", f"compile={str(bool(compile_)).lower()}"]


def render_scenes(ctx) -> list[str]:
    """Synthetic RGB-D scenes written once as ``folder`` datasets (several in parallel on a GPU
    node), so the teacher reads files as in real training instead of ray-casting in its workers."""
    from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

    from distill.data.synthetic import write_dataset  # noqa: PLC0415

    spec = ctx.settings["scenes"]
    chunks = spec["chunks"]
    per = math.ceil(spec["num"] / chunks)
    roots = [os.path.join(ctx.work, f"scenes_{i}") for i in range(chunks)]
    jobs = [(root, per, 100 + i, tuple(spec["size"])) for i, root in enumerate(roots)]
    if chunks == 1:
        write_dataset(*jobs[0])
    else:
        import multiprocessing  # noqa: PLC0415

        with ProcessPoolExecutor(chunks, mp_context=multiprocessing.get_context("fork")) as pool:
            list(pool.map(write_dataset, *zip(*jobs)))
    return roots


def folder_groups(roots: list[str]) -> str:
    datasets = ", ".join(f"{{reader: folder, root: '{r}'}}" for r in roots)
    return f"data.groups=[{{name: labeled, parts: 1, datasets: [{datasets}]}}]"


def engine_run(ctx, stage: str, cfg, mem) -> dict:
    """The stage's own entry point (``train_step.engine_samples_per_s``: ``main(["--config", ...])``,
    samples/s of the ``metrics.jsonl`` windows, the first dropped)."""
    import train_step  # noqa: PLC0415 - sibling benchmark (imports torch)

    mem.reset()
    start = time.perf_counter()
    try:
        rate = train_step.engine_samples_per_s(stage, cfg)
    except FileNotFoundError as err:
        raise RuntimeError(f"the {stage} run wrote no metrics.jsonl ({one_line(err)}): see the part's log") from None
    wall = time.perf_counter() - start
    if not os.path.isfile(os.path.join(cfg.output_dir, "final", "config.json")):
        raise RuntimeError(f"the {stage} run ended without final/ (see the part's log)")
    with open(os.path.join(cfg.output_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {"engine_samples_per_s": rate, "engine_peak_mib": mem.mib(), "engine_wall_s": wall,
            "engine_windows_samples_per_s": [r["samples_per_s"] for r in records],
            "final_loss": records[-1]["loss"]}


def bare_run(ctx, stage: str, cfg, window: int, mem) -> dict:
    """Forward + backward (``predicted_depth.mean()``) + AdamW of the same preset (gradient
    checkpointing as configured) on the stage's first batches, pre-loaded on the device; for the
    student also CutMix (``student.perturb.cutmix``, the configured probability) and the frozen
    reference forward, as the engine's student objective does them."""
    import copy  # noqa: PLC0415

    import torch  # noqa: PLC0415

    from distill.data.loading import build_dataset, build_train_loader  # noqa: PLC0415
    from distill.engine import make_model, make_optimizer, to_device  # noqa: PLC0415
    from distill.preprocessing import IMAGENET  # noqa: PLC0415

    dev = device()
    cfg.data.num_workers = 0
    transforms, frozen = None, None
    if stage == "student":
        from distill.data.transforms import TrainTransform  # noqa: PLC0415
        from student.perturb import cutmix, photometric  # noqa: PLC0415
        from distill.spaces import student_output_space  # noqa: PLC0415

        transforms = [TrainTransform(cfg.data.crop_size, cfg.data.hflip, photometric(cfg.student.perturb))]
        space = student_output_space(build_dataset(cfg.data.groups[0].datasets[0])[0].geometry)
    else:
        from distill.spaces import output_space_for  # noqa: PLC0415

        space = output_space_for(cfg.objective.kind)
    loader, _ = build_train_loader(cfg.data, cfg.batch_size, cfg.seed, transforms=transforms)
    iterator = iter(loader)
    batches = [to_device(next(iterator), dev) for _ in range(min(cfg.max_steps, 8))]
    mem.reset()
    torch.manual_seed(cfg.seed)
    model = make_model(cfg.model, space).to(dev).train()
    if stage == "student":
        frozen = copy.deepcopy(model.backbone).eval().requires_grad_(False)  # student.train's default reference
    optimizer = make_optimizer(model, cfg.optim)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    generator = torch.Generator().manual_seed(cfg.seed)

    def step(batch):
        images = batch["image"]
        if stage == "student" and torch.rand((), generator=generator).item() < cfg.student.perturb.cutmix_p:
            rows = torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
            tensors = {"image": images, "target": batch["target"].float(), "valid": batch["valid"],
                       "confidence": batch["confidence"].float()}
            images = cutmix(rows, tensors, generator)[0]["image"]
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            pixels = IMAGENET.normalize(images)
            pred = model(pixel_values=pixels).predicted_depth
            if frozen is not None:
                with torch.no_grad():
                    frozen(pixel_values=pixels)
        loss = pred.float().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(window):  # warm-up, as the engine's first (dropped) window
        step(batches[i % len(batches)])
    sync(dev)
    start = time.perf_counter()
    n = cfg.max_steps - window
    for i in range(n):
        step(batches[i % len(batches)])
    sync(dev)
    rate = n * cfg.batch_size / (time.perf_counter() - start)
    return {"bare_samples_per_s": rate, "bare_peak_mib": mem.mib()}  # the model goes with this frame


def with_ratios(row: dict) -> dict:
    engine, bare = row.get("engine_samples_per_s"), row.get("bare_samples_per_s")
    row["engine_vs_bare"] = ratio(engine, bare)
    row["overhead"] = (bare / engine - 1) if row["engine_vs_bare"] else None
    return row


def teacher_config(ctx, spec: dict, out: str, scenes: list[str], checkpointing=False, compile_=False):
    from distill.config import load_config  # noqa: PLC0415
    from teacher.config import TeacherConfig  # noqa: PLC0415

    overrides = train_overrides(ctx, spec["preset"], spec["batch"], spec["steps"], spec["window"], out, checkpointing, compile_)
    return load_config(TeacherConfig, TEACHER_YAML, overrides + [folder_groups(scenes)])


def student_config(ctx, spec: dict, out: str, shards: str):
    from distill.config import load_config  # noqa: PLC0415
    from student.config import StudentConfig  # noqa: PLC0415

    overrides = train_overrides(ctx, spec["preset"], spec["batch"], spec["steps"], spec["window"], out)
    return load_config(StudentConfig, STUDENT_YAML, overrides + [f"data.groups.0.datasets.0.root={shards}"])


def teacher_row(ctx, spec: dict, scenes: list[str], checkpointing: bool, mem, compile_=False) -> dict:
    row = {"preset": spec["preset"], "crop": ctx.settings["crop"], "batch": spec["batch"], "precision": ctx.settings["precision"],
           "gradient_checkpointing": checkpointing, "compile": compile_, "steps": spec["steps"], "window": spec["window"]}
    out = os.path.join(ctx.work, f"teacher_{spec['preset']}_{int(checkpointing)}_{int(compile_)}")
    try:
        row.update(engine_run(ctx, "teacher", teacher_config(ctx, spec, out, scenes, checkpointing, compile_), mem))
    finally:
        shutil.rmtree(out, ignore_errors=True)  # vitl checkpoints are several GB
    if not compile_:
        row.update(bare_run(ctx, "teacher", teacher_config(ctx, spec, out + "_bare", scenes, checkpointing), spec["window"], mem))
    return with_ratios(row) if not compile_ else row


# -------------------------------------------------------------------------- labeling helpers
def save_random_teacher(ctx, preset: str, size: int, space=None) -> str:
    import torch  # noqa: PLC0415

    from distill.models import build_model, save_model  # noqa: PLC0415

    torch.manual_seed(1234)  # not the student's seed: a student starting as the teacher's copy would have nothing to learn
    args = (preset,) if space is None else (preset, space)
    return save_model(build_model(*args), os.path.join(ctx.work, f"model_{preset}_{size}"), size=size)


def run_job(ctx, teacher: str, inputs: str, out: str, batch: int, mem, extra=(), input_size=None) -> dict:
    """The labeling job in this process (``pseudolabel.job.run``), its rate from its own log line
    (first batch to last shard committed; start-up apart)."""
    from distill.config import load_config  # noqa: PLC0415
    from pseudolabel.config import PseudolabelConfig  # noqa: PLC0415
    from pseudolabel.job import run  # noqa: PLC0415

    s = ctx.settings
    size = input_size or s["labeling"]["input_size"]
    overrides = [f"teacher={teacher}", f"input={inputs}", f"output={out}", f"batch_size={batch}", "resize=depth_anything", f"input_size={size}",
                 "tta=none", "compile=false", f"precision={s['label_precision']}", f"num_workers={s['job_workers']}",
                 "progress=true", *extra]
    cfg = load_config(PseudolabelConfig, None if ctx.smoke else CLUSTER_YAML, overrides)
    lines: list[str] = []
    import cv2  # noqa: PLC0415
    import torch  # noqa: PLC0415

    threads = (torch.get_num_threads(), cv2.getNumThreads())  # the job sets both for its streams on a CPU
    mem.reset()
    start = time.perf_counter()
    try:
        manifest = run(cfg, log=lambda message: (lines.append(message), print(message, file=sys.stderr)))
    finally:
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])
    wall = time.perf_counter() - start
    text = "\n".join(lines)
    match = pseudolabel_throughput.JOB_LINE.search(text)
    if manifest is None or not match:
        raise RuntimeError(f"the labeling job did not finish or log its rate: {text[-300:]!r}")
    labeled, seconds = int(match.group(1)), max(0.05, float(match.group(4)))
    # the job logs its labeling time to 0.1 s: with a few seconds of labeling, a few % of resolution
    return {"job_images_per_s": labeled / seconds, "job_labeling_s": seconds, "job_startup_s": wall - seconds,
            "job_images_per_s_with_startup": labeled / wall,
            "job_peak_mib": mem.mib(), "labeled": manifest["labeled"], "skipped": manifest["skipped"],
            "job_breakdown": text[match.end():].split("\n")[0].strip("; ")}


def bare_forward(ctx, model_dir: str, files: list[str], batch: int, mem) -> dict:
    """The model forward alone on pre-decoded, pre-resized uint8 tensors already on the device,
    batched by inference size as the job batches them, at the job's batch size and precision
    (normalisation included); one warm-up batch per input size."""
    import torch  # noqa: PLC0415

    from distill.data.formats import read_rgb  # noqa: PLC0415
    from distill.models import load_depth_model, load_preprocessing  # noqa: PLC0415
    from distill.preprocessing import resize_for_inference  # noqa: PLC0415
    from pseudolabel.config import PseudolabelConfig  # noqa: PLC0415

    dev = device()
    size, max_aspect = ctx.settings["labeling"]["input_size"], PseudolabelConfig.max_aspect
    model = load_depth_model(model_dir).to(dev).eval()
    preprocessing = load_preprocessing(model_dir, model.config)
    decoded: dict[str, torch.Tensor] = {}  # the corpus repeats photos: decode each once
    buckets: dict[tuple, list] = {}
    for f in files:
        real = os.path.realpath(f)
        if real not in decoded:
            image = resize_for_inference(read_rgb(real), size, preprocessing.multiple, max_aspect)
            decoded[real] = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        x = decoded[real]
        buckets.setdefault(tuple(x.shape), []).append(x)
    batches = [torch.stack(xs[i:i + batch]).to(dev) for xs in buckets.values() for i in range(0, len(xs), batch)]
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(ctx.settings["label_precision"])
    mem.reset()

    def forward(b):
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            return model(pixel_values=preprocessing.normalize(b)).predicted_depth.float()

    with torch.inference_mode():
        seen = set()
        for b in batches:
            if tuple(b.shape[1:]) not in seen:
                seen.add(tuple(b.shape[1:]))
                forward(b)
        sync(dev)
        start = time.perf_counter()
        for b in batches:
            forward(b)
        sync(dev)
        elapsed = time.perf_counter() - start
    return {"bare_images_per_s": len(files) / elapsed, "bare_peak_mib": mem.mib(), "input_shapes": len(seen)}


def pipeline_loop(ctx, model_dir: str, files: list[str]) -> dict:
    """``pipeline("depth-estimation")`` called once per image path, as most users label (in the
    job's precision where the pipeline accepts it)."""
    import torch  # noqa: PLC0415
    from transformers import pipeline  # noqa: PLC0415

    dev = device()
    kwargs = {"device": 0 if dev.type == "cuda" else "cpu"}
    precision = ctx.settings["label_precision"]
    try:
        pipe = pipeline("depth-estimation", model=model_dir, **kwargs, **({"dtype": torch.bfloat16} if precision == "bf16" else {}))
        pipe(files[0])
    except Exception as err:  # noqa: BLE001 - fall back to the pipeline's default precision
        if precision == "fp32":
            raise
        precision = f"fp32 (bf16 failed: {one_line(err)})"
        pipe = pipeline("depth-estimation", model=model_dir, **kwargs)
        pipe(files[0])
    sync(dev)
    start = time.perf_counter()
    for f in files:
        pipe(f)
    sync(dev)
    return {"pipeline_images_per_s": len(files) / (time.perf_counter() - start), "pipeline_images": len(files),
            "pipeline_precision": precision}


# ======================================================================================= parts
def part_environment(ctx) -> None:
    import importlib  # noqa: PLC0415
    import importlib.util  # noqa: PLC0415

    import torch  # noqa: PLC0415

    r = ctx.results
    r["python"] = sys.version.split()[0]
    r["platform"] = platform.platform()
    r["cpu_count"] = os.cpu_count()
    r["torch"] = torch.__version__
    r["cuda"] = torch.version.cuda
    r["cuda_available"] = torch.cuda.is_available()
    r["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    try:
        nccl = torch.cuda.nccl.version() if torch.cuda.is_available() else None
        r["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl
    except Exception as err:  # noqa: BLE001
        r["nccl"] = f"unavailable ({one_line(err)})"
    r["gpu_count"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    r["gpus"] = []
    for i in range(r["gpu_count"]):
        p = torch.cuda.get_device_properties(i)
        r["gpus"].append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                          "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count})
    if shutil.which("nvidia-smi"):
        try:
            r["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                         capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except Exception:  # noqa: BLE001
            pass
    r["bf16"] = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    dev = device()
    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415

    dtype = torch.bfloat16 if r["bf16"] else torch.float32
    tokens = 1370 if dev.type == "cuda" else 256  # ViT-S heads at 518 x 518 (37 x 37 patches + class) on a GPU
    q = torch.randn(2, 6, tokens, 64, device=dev, dtype=dtype)
    r["sdpa"] = {}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            continue
        try:
            with sdpa_kernel([backend]):
                torch.nn.functional.scaled_dot_product_attention(q, q, q)
            sync(dev)
            r["sdpa"][name.lower()] = True
        except Exception as err:  # noqa: BLE001
            r["sdpa"][name.lower()] = f"no ({one_line(err)[:120]})"
    r["sdpa_dtype"] = str(dtype).replace("torch.", "")
    r["packages"] = {name: package_version([dist]) for name, dist in CORE_PACKAGES.items()}
    r["optional"] = {}
    for name, (dists, needed_by) in OPTIONAL_PACKAGES.items():
        entry = {"version": package_version(dists), "needed_by": needed_by}
        if name == "albumentations":  # really imported: the training parts need it
            try:
                importlib.import_module(name)
                entry["importable"] = True
            except Exception as err:  # noqa: BLE001
                entry["importable"], entry["error"] = False, one_line(err)
        else:  # found, not imported (deepspeed, datasets: slow imports)
            entry["importable"] = importlib.util.find_spec(name) is not None
        r["optional"][name] = entry
    r["missing"] = [n for n, e in r["optional"].items() if not e["importable"] and e["needed_by"]]
    from distill.models import build_model  # noqa: PLC0415

    model = build_model("tiny")
    r["attention"] = {"model": model.config._attn_implementation, "backbone": model.backbone.config._attn_implementation}
    r["photos"] = {k: v for k, v in ctx.photos.items() if k != "files"}


def part_teacher(ctx) -> None:
    quiet()
    require("albumentations", "the training transforms (distill.data.transforms)")
    mem = PeakMemory(device())
    ctx.results["memory"] = mem.kind
    t = time.perf_counter()
    scenes = render_scenes(ctx)
    ctx.results["data"] = {"reader": "folder", "scenes": ctx.settings["scenes"], "render_s": time.perf_counter() - t,
                           "num_workers": ctx.settings["workers"]}
    ctx.results["rows"] = []
    for spec in ctx.settings["teacher"]:
        for checkpointing in ctx.settings["checkpointing"]:
            label = f"{spec['preset']}{' +checkpointing' if checkpointing else ''}"
            ctx.row(label, lambda: teacher_row(ctx, spec, scenes, checkpointing, mem))


def make_shards(ctx, mem) -> str:
    """Pseudo-label shards of the photos, written by the real job with a random tiny teacher
    (depth up to scale, so a UTS student) and flip TTA (confidence maps)."""
    from distill.spaces import DEPTH_UP_TO_SCALE  # noqa: PLC0415

    spec = ctx.settings["shards"]
    inputs, _ = corpus(ctx, "shard_corpus", spec["images"])
    teacher = save_random_teacher(ctx, "tiny", spec["input_size"], DEPTH_UP_TO_SCALE)
    out = os.path.join(ctx.work, "shards")
    job = run_job(ctx, teacher, inputs, out, spec["batch"], mem, extra=["tta=flip"], input_size=spec["input_size"])
    ctx.results["shards"] = {"images": job["labeled"], "input_size": spec["input_size"], "tta": "flip",
                             "job_images_per_s": job["job_images_per_s"]}
    return out


def part_student(ctx) -> None:
    quiet()
    require("albumentations", "the training transforms and the student's perturbations (student.perturb)")
    mem = PeakMemory(device())
    ctx.results["memory"] = mem.kind
    shards = make_shards(ctx, mem)
    ctx.results["rows"] = []
    for spec in ctx.settings["student"]:
        def measure(spec=spec):
            row = {"preset": spec["preset"], "crop": ctx.settings["crop"], "batch": spec["batch"],
                   "precision": ctx.settings["precision"], "steps": spec["steps"], "window": spec["window"],
                   "frozen_reference": "a frozen copy of the student's initial encoder (student.train's default)"}
            out = os.path.join(ctx.work, f"student_{spec['preset']}")
            try:
                row.update(engine_run(ctx, "student", student_config(ctx, spec, out, shards), mem))
            finally:
                shutil.rmtree(out, ignore_errors=True)
            row.update(bare_run(ctx, "student", student_config(ctx, spec, out + "_bare", shards), spec["window"], mem))
            return with_ratios(row)
        ctx.row(spec["preset"], measure)


def part_labeling(ctx) -> None:
    quiet()
    s = ctx.settings["labeling"]
    mem = PeakMemory(device())
    inputs, files = corpus(ctx, "label_corpus", s["images"])
    ctx.results.update({"memory": mem.kind, "images": len(files), "input_size": s["input_size"], "tta": "none",
                        "precision": ctx.settings["label_precision"], "photos": ctx.photos["source"],
                        "unique_photos": len({os.path.realpath(f) for f in files}),
                        "job_options": "configs/pseudolabel/cluster.yaml + tta=none compile=false" if not ctx.smoke else "defaults"})

    def ceiling():
        preset, batch = s["ceiling"]
        teacher = save_random_teacher(ctx, preset, s["input_size"])
        job = run_job(ctx, teacher, inputs, os.path.join(ctx.work, "out_ceiling"), batch, mem)
        shutil.rmtree(os.path.join(ctx.work, "out_ceiling"), ignore_errors=True)
        return {"cpu_ceiling_images_per_s": job["job_images_per_s"], "model": preset, "batch": batch,
                "breakdown": job["job_breakdown"]}
    ctx.results["cpu_ceiling"] = ctx.row("cpu ceiling", ceiling, append=False) or {}
    top = ctx.results["cpu_ceiling"].get("cpu_ceiling_images_per_s")
    ctx.results["rows"] = []
    for preset, batch in s["presets"]:
        def measure(preset=preset, batch=batch):
            row = {"preset": preset, "batch": batch, "images": len(files)}
            model_dir = save_random_teacher(ctx, preset, s["input_size"])
            out = os.path.join(ctx.work, f"out_{preset}")
            try:
                for name, fn in (("job", lambda: run_job(ctx, model_dir, inputs, out, batch, mem)),
                                 ("bare", lambda: bare_forward(ctx, model_dir, files, batch, mem)),
                                 ("pipeline", lambda: pipeline_loop(ctx, model_dir, files[:s["pipeline_images"]]))):
                    ctx.measure(row, f"{preset} {name}", fn)
            finally:
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(model_dir, ignore_errors=True)
            job = row.get("job_images_per_s")
            row["job_vs_bare"] = ratio(job, row.get("bare_images_per_s"))
            row["job_vs_pipeline"] = ratio(job, row.get("pipeline_images_per_s"))
            row["job_vs_cpu_ceiling"] = ratio(job, top)
            return row
        ctx.row(preset, measure)


def part_compile(ctx) -> None:
    quiet()
    import functools  # noqa: PLC0415

    import torch  # noqa: PLC0415

    spec = ctx.settings["compile"]
    backend = spec["backend"]
    if backend != "inductor":  # the engine and the job call torch.compile(model): give it this backend
        torch.compile = functools.partial(torch.compile, backend=backend)
    mem = PeakMemory(device())
    ctx.results.update({"backend": backend, "memory": mem.kind})
    if backend == "eager":
        ctx.results["note"] = "smoke: dynamo graph capture with the eager backend (no inductor code generation)"
    prior_teacher = [r for r in ctx.prior.get("teacher_step", {}).get("rows", [])
                     if r.get("preset") == spec["teacher"]["preset"] and not r.get("gradient_checkpointing")
                     and r.get("batch") == spec["teacher"]["batch"] and r.get("engine_samples_per_s")]
    prior_label = [r for r in ctx.prior.get("labeling", {}).get("rows", [])
                   if r.get("preset") == spec["labeling"][0] and r.get("batch") == spec["labeling"][1] and r.get("job_images_per_s")]

    def teacher():
        require("albumentations", "the training transforms (distill.data.transforms)")
        scenes = render_scenes(ctx)
        on = teacher_row(ctx, spec["teacher"], scenes, False, mem, compile_=True)
        if prior_teacher:
            off, source = prior_teacher[0]["engine_samples_per_s"], "part 2 (teacher_step)"
        else:
            off, source = teacher_row(ctx, spec["teacher"], scenes, False, mem)["engine_samples_per_s"], "measured here"
        return {"preset": on["preset"], "batch": on["batch"], "engine_samples_per_s_compiled": on["engine_samples_per_s"],
                "engine_samples_per_s_eager": off, "eager_from": source, "speedup": ratio(on["engine_samples_per_s"], off),
                "compiled_run_wall_s": on["engine_wall_s"], "compiled_peak_mib": on["engine_peak_mib"]}

    def labeling():
        preset, batch = spec["labeling"]
        inputs, files = corpus(ctx, "compile_corpus", ctx.settings["labeling"]["images"])
        model_dir = save_random_teacher(ctx, preset, ctx.settings["labeling"]["input_size"])
        runs = []
        for i in range(2):  # cold compile, then warm caches (a second job in the same process)
            out = os.path.join(ctx.work, f"compile_out_{i}")
            runs.append(run_job(ctx, model_dir, inputs, out, batch, mem, extra=["compile=true"]))
            shutil.rmtree(out, ignore_errors=True)
        if prior_label:
            off, source = prior_label[0]["job_images_per_s"], "part 4 (labeling)"
        else:
            out = os.path.join(ctx.work, "compile_out_off")
            off, source = run_job(ctx, model_dir, inputs, out, batch, mem)["job_images_per_s"], "measured here"
            shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(model_dir, ignore_errors=True)
        return {"preset": preset, "batch": batch, "images": len(files), "job_images_per_s_compiled_cold": runs[0]["job_images_per_s"],
                "job_images_per_s_compiled_warm": runs[1]["job_images_per_s"], "job_images_per_s_eager": off,
                "eager_from": source, "speedup_cold": ratio(runs[0]["job_images_per_s"], off),
                "speedup_warm": ratio(runs[1]["job_images_per_s"], off), "compiled_peak_mib": runs[1]["job_peak_mib"]}

    ctx.results["teacher"] = ctx.row("teacher", teacher, append=False)
    ctx.results["labeling"] = ctx.row("labeling", labeling, append=False)


def launch(ctx, accelerate_config: str, out: str, extra: list[str], processes: int, cuda: bool, timeout: float) -> dict:
    """``accelerate launch --config_file configs/accelerate/X.yaml --num_processes N distill/train_teacher.py``."""
    d = ctx.settings["distributed"]
    precision = "bf16" if cuda else "no"
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}  # it would silently drop DeepSpeed
    if not cuda:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    h, w = d["scene"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", os.path.join(ACCELERATE_CONFIGS, accelerate_config),
           "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", precision,
           "--main_process_port", str(free_port()), os.path.join(ROOT, "distill", "train_teacher.py"), "--config", TEACHER_YAML,
           f"output_dir={out}", f"model.preset={d['preset']}", f"batch_size={d['batch']}", f"data.crop_size={d['crop']}",
           "log_every=1", "eval_every=0", "save_every=0", "tracker=none", "data.val=[]", f"precision={precision}",
           f"data.num_workers={0 if ctx.smoke else 2}", "optim.warmup_steps=0",
           *[f"data.groups.0.datasets.{i}.options.{k}={v}" for i in range(3) for k, v in (("height", h), ("width", w))], *extra]
    start = time.perf_counter()
    name = os.path.splitext(accelerate_config)[0]
    log = os.path.join(ctx.logs, f"launch_{name}_{len(glob.glob(os.path.join(ctx.logs, f'launch_{name}_*.log')))}.log")
    print(f"[gpu_check] {' '.join(cmd)}\n  log: {log}", file=sys.stderr, flush=True)
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RuntimeError(f"accelerate launch ({accelerate_config}) ran past {timeout:.0f} s: {' | '.join(log_tail(log, 3))}") from None
    wall = time.perf_counter() - start
    with open(log, errors="replace") as f:
        text = f.read()
    if rc:
        raise RuntimeError(f"accelerate launch ({accelerate_config}) exited {rc}: {' | '.join(log_tail(log, 4))}")
    return {"wall_s": wall, "text": text}


def distributed_run(ctx, name: str, processes: int, cuda: bool, deadline: float) -> dict:
    """A few steps, then the same command with ``resume=latest`` and more steps: it must continue."""
    d = ctx.settings["distributed"]
    out = os.path.join(ctx.work, name)
    first = launch(ctx, f"{name}.yaml", out, [f"max_steps={d['steps']}"], processes, cuda, max(30, deadline - time.time()))
    second = launch(ctx, f"{name}.yaml", out, [f"max_steps={d['more_steps']}", "resume=latest"], processes, cuda,
                    max(30, deadline - time.time()))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steps = [r["step"] for r in records]
    resumed = re.search(r"from step (\d+)", second["text"])
    launched = re.search(r"on (\d+) process\(es\)", first["text"])
    result = {"status": "ok", "processes": processes, "precision": "bf16" if cuda else "no", "preset": d["preset"],
              "steps": steps, "resumed_from": int(resumed.group(1)) if resumed else None,
              "launched_processes": int(launched.group(1)) if launched else None,
              "samples_per_s": [r["samples_per_s"] for r in records], "final_loss": records[-1]["loss"],
              "first_launch_s": first["wall_s"], "resume_launch_s": second["wall_s"]}
    problems = []
    if steps != list(range(1, d["more_steps"] + 1)):
        problems.append(f"metrics.jsonl steps {steps}, expected 1..{d['more_steps']}")
    if result["resumed_from"] != d["steps"]:
        problems.append(f"the resumed run started from step {result['resumed_from']}, expected {d['steps']}")
    if result["launched_processes"] != processes:
        problems.append(f"the run reported {result['launched_processes']} process(es), expected {processes}")
    if not all(math.isfinite(r["loss"]) for r in records):
        problems.append("non-finite loss")
    if not os.path.isfile(os.path.join(out, "final", "config.json")):
        problems.append("no final/ model")
    checkpoint = os.path.join(out, "checkpoints", f"step_{d['more_steps']:08d}")
    if not os.path.isdir(checkpoint):
        problems.append(f"no checkpoint at step {d['more_steps']}")
    else:
        result["checkpoint_files"] = sorted(os.path.relpath(os.path.join(dirpath, f), checkpoint)
                                            for dirpath, _, files in os.walk(checkpoint) for f in files)[:30]
    if problems:
        raise RuntimeError("; ".join(problems))
    return result


def part_distributed(ctx) -> None:
    import importlib.util  # noqa: PLC0415

    import torch  # noqa: PLC0415

    cuda = torch.cuda.is_available()
    deadline = time.time() + ctx.timeout - 10
    runs = ctx.results.setdefault("runs", {})
    if not cuda:
        runs["fsdp"] = {"status": "skipped", "reason": "accelerate runs FSDP only on GPUs"}
    else:
        runs["fsdp"] = ctx.row("fsdp", lambda: distributed_run(ctx, "fsdp", 1, cuda, deadline), append=False) or {"status": "error"}
    ctx.save()
    if importlib.util.find_spec("deepspeed") is None:
        runs["zero2"] = {"status": "skipped", "reason": "deepspeed not installed"}
    elif ctx.smoke and not ctx.flags.get("with_deepspeed"):
        runs["zero2"] = {"status": "skipped", "reason": "smoke mode: two DeepSpeed launches on CPU take ~1 min (imports; "
                                                         "its CPU op build the first time); --with-deepspeed runs them"}
    else:
        runs["zero2"] = ctx.row("zero2", lambda: distributed_run(ctx, "zero2", 1, cuda, deadline), append=False) or {"status": "error"}
    for name, run in runs.items():
        if ctx.row_errors.get(name):
            run.update({"status": "error", "error": ctx.row_errors[name]})
    if all(r.get("status") == "skipped" for r in runs.values()):
        raise Skip("; ".join(f"{n}: {r['reason']}" for n, r in runs.items()))


def part_nccl(ctx) -> None:
    import torch  # noqa: PLC0415

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        raise Skip(f"{count} GPU{'s' if count != 1 else ''} visible: a 2-process NCCL run needs at least 2")
    ctx.results["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    out = os.path.join(ctx.work, "ddp")
    d = ctx.settings["distributed"]
    run = launch(ctx, "ddp.yaml", out, [f"max_steps={d['more_steps']}"], 2, True, ctx.timeout - 10)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    launched = re.search(r"on (\d+) process\(es\)", run["text"])
    if not launched or int(launched.group(1)) != 2:
        raise RuntimeError(f"the run did not report 2 processes: {launched.group(0) if launched else 'no start line'}")
    ctx.results.update({"processes": 2, "gpus_visible": count, "steps": [r["step"] for r in records],
                        "samples_per_s": [r["samples_per_s"] for r in records], "wall_s": run["wall_s"]})


class Part:
    def __init__(self, number: int, name: str, fn, title: str):
        self.number, self.name, self.fn, self.title = number, name, fn, title


PARTS = [
    Part(1, "environment", part_environment, "versions, GPU, bf16, SDPA kernels, optional packages"),
    Part(2, "teacher_step", part_teacher, "teacher engine vs bare step"),
    Part(3, "student_step", part_student, "student engine vs bare step"),
    Part(4, "labeling", part_labeling, "labeling job vs bare forward vs pipeline"),
    Part(5, "compile", part_compile, "torch.compile on/off for 2 and 4"),
    Part(6, "distributed", part_distributed, "FSDP and ZeRO-2 (1 process) with resume"),
    Part(7, "nccl", part_nccl, "2-process NCCL run"),
]
BY_NAME = {p.name: p for p in PARTS}
RUN_ORDER = [1, 2, 3, 4, 6, 7, 5]  # compile last: the part to lose when time runs short


# ================================================================================ the child side
class Context:
    """What a part gets: its settings, scratch directory, the photos, earlier parts' results, and
    ``results`` (saved to the result file after every row, so a crash keeps what was measured)."""

    def __init__(self, data: dict, result_path: str):
        self.__dict__.update(data)
        self.result_path = result_path
        self.results: dict = {}
        self.errors: list[str] = []
        self.row_errors: dict = {}

    def save(self, status: str = "running", **extra) -> None:
        write_json(self.result_path, {"status": status, "results": self.results, "errors": self.errors, **extra})

    def row(self, label: str, fn, append: bool = True):
        """One measurement: its failure is recorded (and fails the part) but the next one runs."""
        try:
            row = fn()
        except Exception as err:  # noqa: BLE001
            message = one_line(err)
            self.errors.append(f"{label}: {message}")
            self.row_errors[label] = message
            row = {"label": label, "error": message, "traceback": traceback_tail(err, 6)}
            print(f"[gpu_check] {label} failed:\n" + "".join(traceback.format_exception(type(err), err, err.__traceback__)),
                  file=sys.stderr, flush=True)
        if append:
            self.results.setdefault("rows", []).append(row)
        self.save()
        return row

    def measure(self, row: dict, label: str, fn) -> None:
        """A measurement inside a row: merged into it, or its error recorded in it."""
        try:
            row.update(fn())
        except Exception as err:  # noqa: BLE001
            message = one_line(err)
            self.errors.append(f"{label}: {message}")
            row.setdefault("errors", {})[label] = message
            print(f"[gpu_check] {label} failed:\n" + "".join(traceback.format_exception(type(err), err, err.__traceback__)),
                  file=sys.stderr, flush=True)
        self.save()


def child_main(name: str, ctx_path: str, result_path: str) -> int:
    with open(ctx_path) as f:
        data = json.load(f)
    ctx = Context(data, result_path)
    os.makedirs(ctx.work, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import faulthandler  # noqa: PLC0415

    faulthandler.enable(file=sys.stderr)  # a segfault's Python stack goes to the part's log
    ctx.save()
    try:
        BY_NAME[name].fn(ctx)
    except Skip as skip:
        ctx.save("skipped", reason=str(skip))
        return 0
    except BaseException as err:  # noqa: BLE001 - everything is recorded
        traceback.print_exc()
        ctx.save("error", error=one_line(err), traceback=traceback_tail(err))
        return 0
    if ctx.errors:
        ctx.save("error", error=f"{len(ctx.errors)} measurement(s) failed: " + "; ".join(ctx.errors)[:600])
    else:
        ctx.save("ok")
    return 0


# =============================================================================== the parent side
def preload() -> None:
    """Fork isolation: import the heavy modules once, so that each forked part starts at once. No
    CUDA call here (a forked child could not use CUDA after one)."""
    for module in ("torch", "transformers", "accelerate", "distill.engine", "distill.models", "distill.data.loading",
                   "distill.data.readers", "distill.data.transforms", "distill.data.synthetic", "distill.data.shards",
                   "teacher.train", "student.train", "student.perturb", "pseudolabel.job", "pseudolabel.runner",
                   "pseudolabel.stream", "pseudolabel.writer", "pseudolabel.tta", "pseudolabel.decode", "train_step",
                   "transformers.pipelines"):
        try:
            __import__(module)
        except Exception:  # noqa: BLE001 - the part that needs it reports the failure
            pass


def run_isolated(part: Part, ctx_data: dict, work_dir: str, timeout: float, isolation: str) -> dict:
    """Run one part in a child process (forked from this one, or a fresh interpreter); returns its
    result: status ok / skipped / error, results, and for a crash or a timeout what was saved."""
    logs = ctx_data["logs"]
    os.makedirs(logs, exist_ok=True)
    log = os.path.join(logs, f"{part.number}_{part.name}.log")  # kept: next to the report
    result_path = os.path.join(work_dir, f"result_{part.name}.json")
    ctx_path = os.path.join(work_dir, f"context_{part.name}.json")
    for path in (result_path,):
        if os.path.exists(path):
            os.remove(path)
    write_json(ctx_path, {**ctx_data, "timeout": timeout})
    sys.stdout.flush()
    sys.stderr.flush()
    if isolation == "fork":
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                os.setsid()
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.stdout = open(1, "w", buffering=1, closefd=False)  # also where sys.stdout was replaced (pytest)
                sys.stderr = open(2, "w", buffering=1, closefd=False)
                code = child_main(part.name, ctx_path, result_path)
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        proc = None
    else:
        with open(log, "w") as f:
            proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", part.name, ctx_path, result_path],
                                    stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        pid = proc.pid
    deadline, status, timed_out = time.monotonic() + timeout, None, False
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = raw
            break
        if time.monotonic() > deadline:
            timed_out = True
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
                try:
                    os.killpg(pid, sig)  # the part and what it started (DataLoader workers, launches)
                except ProcessLookupError:
                    pass
                end = time.monotonic() + grace
                while time.monotonic() < end:
                    done, raw = os.waitpid(pid, os.WNOHANG)
                    if done:
                        status = raw
                        break
                    time.sleep(0.1)
                if status is not None:
                    break
            if status is None:
                status = os.waitpid(pid, 0)[1]
            break
        time.sleep(0.1)
    if proc is not None:
        proc.returncode = 0  # reaped above
    try:
        with open(result_path) as f:
            result = json.load(f)
    except (OSError, ValueError):
        result = {"status": "running", "results": {}, "errors": []}
    try:  # leftovers of the part's children (a crashed part's DataLoader workers)
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if timed_out:
        result.update(status="error", error=f"timed out after {timeout:.0f} s (killed; results so far kept)")
    elif result.get("status") == "running" or (os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0) and result.get("status") == "ok":
        how = f"signal {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status) else f"exit code {os.WEXITSTATUS(status)}"
        result.update(status="error", error=f"the part's process died ({how}); results so far kept")
    result["log"] = log
    if result["status"] == "error":
        result["log_tail"] = log_tail(log)
    return result


def fmt(x, digits=2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def summarize(name: str, r: dict) -> str:
    """The key numbers of a part for the table."""
    try:
        if name == "environment":
            gpu = r["gpus"][0]["name"] + f" {r['gpus'][0]['memory_gib']} GiB" if r.get("gpus") else "no GPU"
            flash = r.get("sdpa", {}).get("flash_attention")
            return (f"torch {r['torch']} CUDA {r.get('cuda') or '-'} cuDNN {r.get('cudnn') or '-'} NCCL {r.get('nccl') or '-'}; "
                    f"{gpu}; bf16 {'yes' if r.get('bf16') else 'no'}; flash {'yes' if flash is True else 'no'}; "
                    f"missing: {', '.join(r.get('missing') or []) or 'none'}")
        if name in ("teacher_step", "student_step"):
            parts = []
            for row in r.get("rows", []):
                if "error" in row:
                    parts.append(f"{row['label']}: error")
                    continue
                ck = "+ckpt " if row.get("gradient_checkpointing") else ""
                parts.append(f"{row['preset']} {ck}{fmt(row['engine_samples_per_s'], 1)}/{fmt(row['bare_samples_per_s'], 1)} "
                             f"samples/s = {fmt(row['engine_vs_bare'])} ({fmt(row['engine_peak_mib'], 0)} MiB)")
            return "engine/bare: " + "; ".join(parts)
        if name == "labeling":
            parts = []
            for row in r.get("rows", []):
                if "error" in row:
                    parts.append(f"{row['label']}: error")
                    continue
                parts.append(f"{row['preset']} job {fmt(row.get('job_images_per_s'), 1)} img/s = {fmt(row.get('job_vs_bare'))} of bare, "
                             f"{fmt(row.get('job_vs_pipeline'))}x pipeline, {fmt(row.get('job_vs_cpu_ceiling'))} of CPU ceiling")
            top = r.get("cpu_ceiling", {}).get("cpu_ceiling_images_per_s")
            return "; ".join(parts) + f"; ceiling {fmt(top, 1)} img/s"
        if name == "compile":
            t, lab = r.get("teacher") or {}, r.get("labeling") or {}
            return (f"[{r.get('backend')}] teacher {t.get('preset', '-')} x{fmt(t.get('speedup'))}; labeling {lab.get('preset', '-')} "
                    f"x{fmt(lab.get('speedup_cold'))} cold, x{fmt(lab.get('speedup_warm'))} warm")
        if name == "distributed":
            out = []
            for n, run in r.get("runs", {}).items():
                if run.get("status") == "ok":
                    out.append(f"{n} ok: steps {run['steps'][0]}..{run['steps'][-1]}, resumed from {run['resumed_from']}")
                else:
                    out.append(f"{n} {run.get('status')}: {run.get('reason') or run.get('error', '')}")
            return "; ".join(out)
        if name == "nccl":
            return f"{r.get('processes')} processes, steps {r.get('steps')}"
    except (KeyError, IndexError, TypeError) as err:
        return f"(no summary: {one_line(err)})"
    return ""


def goals(report: dict) -> dict:
    parts = {p["name"]: p for p in report["parts"]}
    out = {}
    labeling = [r for r in parts.get("labeling", {}).get("results", {}).get("rows", []) if r.get("preset") == "vitl"]
    value = labeling[0].get("job_vs_bare") if labeling else None
    out["labeling_vitl_job_vs_bare"] = {"target": ">= 0.85", "value": value, "met": None if value is None else value >= 0.85}
    for stage in ("teacher_step", "student_step"):
        rows = [r for r in parts.get(stage, {}).get("results", {}).get("rows", []) if r.get("overhead") is not None]
        worst = max((r["overhead"] for r in rows), default=None)
        out[f"{stage.split('_')[0]}_engine_overhead"] = {"target": "<= 0.15 (bare / engine - 1, worst row)", "value": worst,
                                                          "met": None if worst is None else worst <= 0.15}
    errors = [p["name"] for p in report["parts"] if p["status"] == "error"]
    out["nothing_crashes"] = {"target": "no part with status error", "value": errors, "met": not errors}
    return out


def print_table(report: dict) -> None:
    print(f"\ngpu_check ({report['mode']}, {report['isolation']} isolation) on {report.get('device') or 'a machine not checked (part 1 not run)'}; photos: "
          f"{report['photos']['source']} ({report['photos']['count']})")
    print(f"{'part':16s} {'status':8s} {'seconds':>8s}  key numbers")
    for p in sorted(report["parts"], key=lambda p: p["id"]):
        text = p.get("summary") or ""
        if p["status"] == "skipped":
            text = p.get("reason", "")
        elif p["status"] == "error":
            text = (p.get("error") or "") + (f" | {text}" if text else "")
        print(f"{p['id']} {p['name']:14s} {p['status']:8s} {p['seconds']:8.1f}  {text}")
    print("goals" + (" (smoke mode: tiny models on this machine, not the GPU figures)" if report["mode"] == "smoke" else "") + ":")
    for name, g in report["goals"].items():
        met = {True: "met", False: "NOT met", None: "not measured"}[g["met"]]
        value = g["value"] if not isinstance(g["value"], float) else f"{g['value']:.3f}"
        print(f"  {name:28s} {g['target']:40s} {str(value):>10s}  {met}")
    print(f"total {report['total_seconds']:.0f} s; written to {report['output']} (logs: {report['logs']})")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:5]))
    parser.add_argument("--smoke", action="store_true", help="tiny models, a few steps, CPU-friendly (seconds per part)")
    parser.add_argument("--parts", nargs="+", default=None, help="parts to run, by number or name (default: all)")
    parser.add_argument("--skip-compile", action="store_true", help="skip part 5 (torch.compile on/off)")
    parser.add_argument("--with-deepspeed", action="store_true", help="smoke mode: run the ZeRO-2 launches too")
    parser.add_argument("--output", default="gpu_check.json", help="the JSON report (default: ./gpu_check.json)")
    parser.add_argument("--photos", default=None, help="folder of photos (default: vendor/photos, ../shared/data/photos, scikit-image)")
    parser.add_argument("--work-dir", default=None, help="scratch files (default: a temporary folder, removed at the end); "
                        "its per-part folders are removed after each part (models, checkpoints: GBs at full scale)")
    parser.add_argument("--logs", default=None, help="per-part logs, kept (default: next to --output, OUTPUT_logs/)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="skip the remaining parts once this many seconds have passed (default: 285 full, none in smoke; 0: none)")
    parser.add_argument("--isolation", choices=["subprocess", "fork"], default=None,
                        help="each part in a fresh interpreter, or forked from one that imported torch once "
                             "(default: fork for --smoke without a GPU, else subprocess)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.parts:
        chosen = []
        for item in args.parts:
            match = [p for p in PARTS if item == str(p.number) or item == p.name]
            if not match:
                parser.error(f"--parts: unknown part {item!r}; valid: " + ", ".join(f"{p.number} {p.name}" for p in PARTS))
            chosen.append(match[0].number)
        args.parts = sorted(set(chosen))
    return args


def gpu_present() -> bool:
    """Whether a GPU may be visible, without touching CUDA (a forked child could not use it after)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/nvidiactl")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(*args.child)
    started = time.perf_counter()
    cpus = os.cpu_count() or 1
    s = settings(args.smoke, cpus)
    budget = s["budget_s"] if args.budget_s is None else args.budget_s
    isolation = args.isolation or ("fork" if args.smoke and not gpu_present() else "subprocess")
    os.environ["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network on GPU nodes: never wait on the Hub
    temporary = args.work_dir is None
    work_dir = os.path.abspath(args.work_dir or tempfile.mkdtemp(prefix="gpu_check_"))
    os.makedirs(work_dir, exist_ok=True)
    output = os.path.abspath(args.output)
    logs = os.path.abspath(args.logs or os.path.splitext(output)[0] + "_logs")
    shutil.rmtree(logs, ignore_errors=True)
    photos = resolve_photos(args.photos, work_dir)
    report = {"script": "benchmarks/gpu_check.py", "mode": "smoke" if args.smoke else "full", "argv": sys.argv[1:] if argv is None else argv,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "isolation": isolation, "budget_s": budget or None,
              "host": platform.node(), "cpu_count": cpus, "photos": {k: v for k, v in photos.items() if k != "files"},
              "settings": s, "work_dir": work_dir if not temporary else None, "output": output, "logs": logs, "parts": [], "goals": {},
              "total_seconds": 0.0, "device": None}
    write_json(output, report)
    if isolation == "fork":
        preload()
    selected = args.parts or [p.number for p in PARTS]
    prior: dict = {}
    print(f"gpu_check: {report['mode']} mode, parts {', '.join(map(str, selected))}, {isolation} isolation, photos from "
          f"{photos['source']} ({photos['count']}), work dir {work_dir}", flush=True)
    try:
        for number in [n for n in RUN_ORDER if n in selected]:
            part = PARTS[number - 1]
            elapsed = time.perf_counter() - started
            t = time.perf_counter()
            timeout = s["timeouts"][part.name]
            if part.name == "compile" and args.skip_compile:
                result = {"status": "skipped", "reason": "--skip-compile"}
            elif budget and elapsed > budget:
                result = {"status": "skipped", "reason": f"time budget of {budget:.0f} s used up ({elapsed:.0f} s elapsed; --budget-s)"}
            else:
                if budget:
                    timeout = min(timeout, max(60.0, budget - elapsed + 60))
                part_dir = os.path.join(work_dir, part.name)
                ctx = {"smoke": args.smoke, "settings": s, "work": part_dir, "photos": photos, "prior": prior,
                       "flags": {"with_deepspeed": args.with_deepspeed}, "root": ROOT, "logs": logs}
                result = run_isolated(part, ctx, work_dir, timeout, isolation)
                shutil.rmtree(part_dir, ignore_errors=True)  # models, checkpoints, shards: GBs at full scale
            entry = {"id": part.number, "name": part.name, "title": part.title, "status": result.get("status", "error"),
                     "seconds": time.perf_counter() - t}
            for key in ("reason", "error", "errors", "traceback", "log", "log_tail"):
                if result.get(key):
                    entry[key] = result[key]
            entry["results"] = result.get("results", {})
            entry["summary"] = summarize(part.name, entry["results"]) if entry["results"] else ""
            if part.name == "environment" and entry["results"].get("gpus"):
                report["device"] = entry["results"]["gpus"][0]["name"]
            elif part.name == "environment":
                report["device"] = f"CPU ({cpus} cores)"
            prior[part.name] = entry["results"]
            report["parts"].append(entry)
            report["parts"].sort(key=lambda p: p["id"])
            report["goals"] = goals(report)
            report["total_seconds"] = time.perf_counter() - started
            write_json(output, report)
            print(f"[{part.number} {part.name}] {entry['status']} in {entry['seconds']:.1f} s"
                  + (f": {entry.get('reason') or entry.get('error')}" if entry["status"] != "ok" else ""), flush=True)
    finally:
        if temporary:
            shutil.rmtree(work_dir, ignore_errors=True)
    print_table(report)
    return 1 if any(p["status"] == "error" for p in report["parts"]) else 0


if __name__ == "__main__":
    sys.exit(main())
