"""The labeling run: job file, resume, the process's loop, progress, manifest.

Never lose, never duplicate:

1. The first run freezes the job in ``O/_job/``: the listing (``pseudolabel.inputs``) and
   ``job.json`` (the output-defining options, the teacher, the input kind), written last and
   atomically. A restart reuses them; one asking for different output-defining options is refused.
2. Unit ``u`` (``shard_size`` consecutive inputs) is written by process ``u % world_size`` to
   ``shard-{u:06d}.tar.tmp``; when all its inputs are accounted for (labeled or skipped) the tar is
   ended, fsynced and renamed to ``shard-{u:06d}.tar``, then ``index/shard-{u:06d}.json`` is
   written atomically (keys, member offsets, the unit's skipped inputs). The index is the record
   that the unit is done.
3. On start, each process looks at its units: a unit with a valid index (its tar present with the
   recorded size) is skipped; otherwise its temporary files, an orphan tar (killed between rename
   and index) or a stale index are removed and the unit is labeled again from scratch. A key can
   only ever be in its unit's shard, so nothing is duplicated; a unit is redone until its index
   exists, so nothing is lost, whenever the run is killed (SIGKILL included).
4. Skipped inputs live in their unit's index, so a redone unit cannot repeat them; whichever
   process finds every unit done writes ``errors.jsonl`` (units in order) and ``manifest.json``,
   both atomically and deterministic, so a restart of a finished job rewrites them identically.

The processes never talk to each other (no process group): they share only the file system, so a
rank that finishes hours before another waits on nothing and can time out on nothing.
"""
from __future__ import annotations

import glob
import json
import os
import re
import sys
import time

from distill.config import ConfigError
from distill.data.shards import INDEX_DIR, TMP_SUFFIX, index_path, read_index, write_atomic
from pseudolabel.config import LEGACY_DEFAULTS, PseudolabelConfig, defining_options
from pseudolabel.inputs import InputError, Listing, detect, discover, rank_units, shard_name, unit_count, write_listing

JOB_DIR = "_job"


class JobError(ConfigError):
    """A problem with the command (options, input, teacher, output directory): one line, exit 2."""


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def process_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) as set by ``accelerate launch`` / torchrun; (0, 1, 0) alone."""
    return _env_int("RANK", 0), max(1, _env_int("WORLD_SIZE", 1)), _env_int("LOCAL_RANK", 0)


def normalise(cfg: PseudolabelConfig) -> PseudolabelConfig:
    for flag in ("teacher", "input", "output"):
        if not getattr(cfg, flag):
            raise JobError(f"--{flag} is required")
    from distill.models import ModelError, resolve_reference  # noqa: PLC0415

    cfg.output = os.path.abspath(cfg.output)
    if cfg.resize == "depth_anything" and cfg.input_size is None:
        cfg.input_size = 518
    try:  # a training run -> its final/, paths absolute; several teachers: comma-separated
        cfg.teacher = ",".join(resolve_reference(t.strip()) for t in cfg.teacher.split(","))
    except ModelError as err:
        raise JobError(f"cannot load teacher: {err}") from None
    if not cfg.input.startswith("hf:") and os.path.exists(cfg.input):
        cfg.input = os.path.abspath(cfg.input)
    return cfg


# ------------------------------------------------------------------------------------ job file
def _job_path(out: str) -> str:
    return os.path.join(out, JOB_DIR, "job.json")


def _check_same(job: dict, cfg: PseudolabelConfig) -> None:
    wanted = defining_options(cfg)
    started = {**LEGACY_DEFAULTS, **job["options"]}
    for key, value in sorted(wanted.items(), key=lambda kv: kv[0] != "resize"):  # the rule first: it explains the rest
        if key in started and started[key] != value:
            raise JobError(
                f"{cfg.output} was started with {key}={started[key]!r}, this run asks for {value!r}: "
                "restart with the same options, or use a new --output"
            )


def prepare_job(cfg: PseudolabelConfig, rank: int) -> dict:
    """Create (rank 0, first run) or read the frozen job."""
    out = cfg.output
    path = _job_path(out)
    if os.path.isfile(path):
        with open(path) as f:
            job = json.load(f)
        _check_same(job, cfg)
        return job
    if rank != 0:
        started = time.time()
        while not os.path.isfile(path):  # rank 0 is listing the inputs
            if time.time() - started > 24 * 3600:
                raise JobError(f"{path} did not appear in 24 h: is process 0 running?")
            time.sleep(0.2)
        time.sleep(0.05)
        with open(path) as f:
            job = json.load(f)
        _check_same(job, cfg)
        return job
    if os.path.isdir(out) and glob.glob(os.path.join(out, "shard-*.tar")):
        raise JobError(f"{out} holds shards but no {JOB_DIR}/job.json: not an output of this job, or damaged")
    job_dir = os.path.join(out, JOB_DIR)
    os.makedirs(os.path.join(out, INDEX_DIR), exist_ok=True)
    try:
        kind, spec = detect(cfg, exclude=out)
        counts = write_listing(discover(kind, spec, cfg), job_dir)
    except InputError as e:
        raise JobError(str(e)) from None
    if counts["items"] == 0:
        raise JobError(f"{cfg.input}: no inputs found")
    hf = None
    if kind == "hf":
        hf = {"name": spec["name"], "split": cfg.hf_split, "image_column": cfg.image_column}
    job = {
        "version": 1,
        "options": defining_options(cfg),
        "input_kind": kind,
        "hf": hf,
        "items": counts["items"],
        "duplicates_dropped": counts["duplicates"],
        "units": unit_count(counts["items"], cfg.shard_size),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_atomic(path, json.dumps(job, indent=1).encode())
    return job


# ------------------------------------------------------------------------------ resume / clean
def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def pending_units(out: str, units: list[int]) -> list[int]:
    """The units still to do; clears their temporary files, orphan tars and stale indexes."""
    todo = []
    for unit in units:
        name = shard_name(unit)
        for tmp in glob.glob(os.path.join(out, name + ".tar" + TMP_SUFFIX + "*")) + \
                glob.glob(index_path(out, name) + TMP_SUFFIX + "*"):
            _remove(tmp)
        if read_index(out, name) is not None:
            continue
        _remove(os.path.join(out, name + ".tar"))
        _remove(index_path(out, name))
        todo.append(unit)
    return todo


def finalize(out: str, job: dict) -> dict | None:
    """If every unit is done, write errors.jsonl and manifest.json; return the manifest."""
    if not all(os.path.isfile(index_path(out, shard_name(u))) for u in range(job["units"])):
        return None  # cheap check first: indexes are only parsed by the process that finishes last
    indexes = []
    for unit in range(job["units"]):
        index = read_index(out, shard_name(unit))
        if index is None:
            return None
        indexes.append(index)
    lines = []
    for index in indexes:
        for error in index["errors"]:
            lines.append(json.dumps({"path": error["path"], "reason": error["reason"], "source": error["source"],
                                     "key": error["key"], "shard": shard_name(index["unit"])}, ensure_ascii=False))
    first = indexes[0]
    manifest = {
        "version": 1,
        "labeled": sum(i["labeled"] for i in indexes),
        "skipped": sum(i["skipped"] for i in indexes),
        "inputs": job["items"],
        "duplicates_dropped": job["duplicates_dropped"],
        "teacher": first["teacher"],
        "teachers": first.get("teachers") or [{"name": "teacher", "teacher": first["teacher"], "space": first["space"],
                                               "geometry": first["geometry"]}],
        "space": first["space"],
        "geometry": first["geometry"],
        "fields": next((i["fields"] for i in indexes if i["fields"]), []),
        "options": job["options"],
        "input_kind": job["input_kind"],
        "units": job["units"],
        "shards": [{"name": i["shard"], "samples": i["labeled"], "bytes": i["bytes"]} for i in indexes if i["shard"]],
        "errors": "errors.jsonl",
    }
    try:
        write_atomic(os.path.join(out, "errors.jsonl"), "".join(line + "\n" for line in lines).encode("utf-8"))
        write_atomic(os.path.join(out, "manifest.json"), json.dumps(manifest, indent=1).encode())
    except FileNotFoundError:  # another process finished at the same moment and wrote the same files
        pass
    return manifest


# ---------------------------------------------------------------------------------------- run
def teacher_names(references: list[str]) -> list[str]:
    """Short unique names of the teachers (the label fields of several teachers are named by them):
    the last path component (a run's name for its final/), characters other than [A-Za-z0-9_-] as '-'."""
    names = []
    for ref in references:
        parts = [p for p in ref.replace("\\", "/").split("/") if p]
        base = parts[-2] if len(parts) > 1 and parts[-1] == "final" else parts[-1]
        base = re.sub(r"[^A-Za-z0-9_-]+", "-", os.path.splitext(base)[0] if base.endswith(WEIGHT_SUFFIXES) else base)
        name, k = base or "teacher", 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")


def _load_teacher(cfg: PseudolabelConfig, reference: str):
    """One teacher through the one resolver: its model, output space, preprocessing and image processor."""
    from distill.models import ModelError, resolve_model  # noqa: PLC0415

    try:
        return resolve_model(reference, preset=cfg.teacher_preset, max_depth=cfg.teacher_max_depth)
    except ModelError as err:
        raise JobError(str(err)) from None


def run(cfg: PseudolabelConfig, log=print) -> dict | None:
    """Label this process's share of the job; returns the manifest if the job is now complete."""
    cfg = normalise(cfg)
    rank, world, local_rank = process_info()
    job = prepare_job(cfg, rank)
    out = cfg.output
    todo = pending_units(out, rank_units(job["units"], rank, world))
    if not todo:
        return finalize(out, job)

    import torch  # noqa: PLC0415 - after the cheap checks

    from distill.inference import InputRule  # noqa: PLC0415
    from pseudolabel.decode import ByteSource, DecodePlan  # noqa: PLC0415
    from pseudolabel.runner import run_model  # noqa: PLC0415
    from pseudolabel.stream import LabelStream, build_loader  # noqa: PLC0415
    from pseudolabel.tta import Predictor  # noqa: PLC0415
    from pseudolabel.writer import Writer  # noqa: PLC0415

    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    device = torch.device("cpu") if use_cpu else torch.device("cuda", local_rank % torch.cuda.device_count())
    streams = cfg.streams or (min(2, torch.get_num_threads()) if device.type == "cpu" else 1)
    if cfg.threads or (device.type == "cpu" and streams > 1):
        torch.set_num_threads(cfg.threads or max(1, torch.get_num_threads() // streams))
    import cv2  # noqa: PLC0415

    cv2.setNumThreads(1)
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    autocast = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    references = cfg.teacher.split(",")
    names = teacher_names(references)
    predictors, teachers = [], []
    for name, reference in zip(names, references):
        resolved = _load_teacher(cfg, reference)
        rule = InputRule(cfg.resize, resolved.preprocessing, resolved.processor if cfg.resize == "processor" else None,
                         cfg.input_size or 518, cfg.max_aspect)
        model = resolved.model.to(device).eval().requires_grad_(False)
        if cfg.compile:
            model = torch.compile(model)
        predictors.append(Predictor(model, resolved.output_space, rule, cfg.tta, cfg.tta_scales, cfg.confidence_tau, autocast))
        teachers.append({"name": name, "teacher": reference, "space": resolved.output_space.space,
                         "geometry": resolved.output_space.geometry, "input_rule": rule.to_dict()})
    space, rule = predictors[0].space, predictors[0].rule  # the first teacher's label is the sample's default

    plan = DecodePlan(tuple(p.rule for p in predictors), cfg.store_image, cfg.image_max_side, cfg.image_ext, cfg.jpeg_quality, cfg.draft, cfg.max_pixels)
    stream = LabelStream(Listing(os.path.join(out, JOB_DIR)), todo, job["items"], cfg.shard_size, plan,
                         ByteSource(job["input_kind"], job["hf"]), cfg.batch_size, cfg.bucket_buffer)
    loader = build_loader(stream, cfg.num_workers, cfg.prefetch_factor, pin_memory=device.type == "cuda", nice=cfg.nice)
    header = {"teacher": references[0], "space": space.space, "geometry": space.geometry, "teachers": teachers}
    sample_meta = {
        "dataset": cfg.dataset_name or os.path.basename(out.rstrip(os.sep)),
        "teacher": references[0],
        "space": space.space,
        "geometry": space.geometry,
        "input_rule": rule.to_dict(),
        "input_size": cfg.input_size,
        "precision": precision,
        "confidence": {"tta": cfg.tta, "views": predictors[0].views, "tau": cfg.confidence_tau if cfg.tta != "none" else 0.0},
    }
    threads = cfg.encode_threads or (1 if device.type == "cpu" else 4)
    writer = Writer(out, header, sample_meta, cfg.image_ext, cfg.png_compression, threads, cfg.queue_size, cfg.nice,
                    cfg.label_size, teachers if len(teachers) > 1 else None)

    total = sum(min(job["items"], (u + 1) * cfg.shard_size) - u * cfg.shard_size for u in todo)
    from tqdm.auto import tqdm  # noqa: PLC0415

    bar = tqdm(total=total, unit="img", desc=f"labeling (process {rank + 1}/{world})", dynamic_ncols=True,
               mininterval=1.0, disable=not (cfg.progress and rank == 0), file=sys.stderr)
    skipped = 0

    def progress(packet):
        nonlocal skipped
        skipped += len(packet["errors"])
        bar.update(len(packet["items"]) + len(packet["errors"]))
        bar.set_postfix(skipped=skipped, refresh=False)

    started = time.perf_counter()
    try:
        stats = run_model(loader, predictors, device, writer, streams, progress)
        t = time.perf_counter()
        writer.close()
        stats.writer += (time.perf_counter() - t) * stats.streams
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    elapsed = max(time.perf_counter() - started, 1e-9)
    if cfg.progress:
        log(f"process {rank + 1}/{world}: {writer.labeled} labeled, {writer.skipped} skipped, {writer.units_committed} "
            f"shards in {elapsed:.1f} s; {stats.summary(elapsed, max(1, writer.labeled + writer.skipped), writer.cpu_s)}")
    return finalize(out, job)
