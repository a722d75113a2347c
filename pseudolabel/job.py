"""The labeling run: job file, claims and resume, the process's loop, stop and failure, manifest.

Never lose, never duplicate, whoever runs:

1. The first run freezes the job in ``O/_job/``: the listing (``pseudolabel.inputs``) and
   ``job.json`` (the output-defining options, the teacher, the input kind), written last and
   atomically. A restart reuses them; one asking for different output-defining options is refused.
2. Unit ``u`` (``shard_size`` consecutive inputs) is labeled by the process that claims it
   (``pseudolabel.claims``: ``O/_claims/shard-{u:06d}.claim``, created atomically, renewed while
   held, taken over once stale). Each process goes through the units in its own order (its
   strided share of all processes of the launch, or of a SLURM job array, first: a single launch
   splits as a rank split would) and claims ``claim_units`` free ones at a time; the pipeline
   labels that batch, then the process claims the next, until no unit is free. Then, if some of
   the remaining units' claims are no longer renewed (their holder is probably dead) it polls
   until they turn stale and takes them over; if all are renewed it exits 0 naming the holders.
   So any number of launches, overlapping or not, with any number of processes, share one output.
3. A claimed unit is written to ``shard-{u:06d}.tar.tmp.<owner id>``; when all its inputs are
   accounted for (labeled or skipped) and the claim still names this process, the tar is ended,
   fsynced and renamed to ``shard-{u:06d}.tar``, then ``index/shard-{u:06d}.json`` is written
   atomically (keys, member offsets, the unit's skipped inputs); then the claim is deleted. The
   index is the record that the unit is done.
4. On start, a process removes the abandoned temporary files (no owner id, a dead owner on this
   host, or older than 6 h; a live owner's stay) and checks the indexes of its own share. The
   claimer of a unit without a valid index removes that index and an orphan tar (killed between
   rename and index) and labels the unit from scratch. A key can only ever be in its unit's shard,
   so nothing is duplicated; a unit is redone until its index exists, so nothing is lost, whenever
   a process is killed (SIGKILL included: its claims are taken over at once from this host, after
   ``claim_expiry_s`` from another).
5. SIGTERM / SIGINT: the process stops taking units, abandons the batch in flight (its temporary
   files removed), releases its claims and raises ``Stopped`` (the command: one line, exit 143 /
   130). An OSError on the output's files (disk full, quota) is ``WriteFailure``: one line naming
   the file and the free space, exit 74; the unit being written has no index, so a rerun redoes it.
6. Skipped inputs live in their unit's index, so a redone unit cannot repeat them; whichever
   process finds every unit done writes ``errors.jsonl`` (units in order) and ``manifest.json``,
   both atomically and deterministic, so a restart of a finished job rewrites them identically.

The processes never talk to each other (no process group): they share only the file system, so a
process that finishes hours before another waits on nothing and can time out on nothing.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import shutil
import signal
import sys
import time

from distill.config import ConfigError
from distill.data.shards import INDEX_DIR, index_path, read_index
from distill.runtime import StopSignals, remove_quietly, write_atomic
from pseudolabel.claims import LISTING, Claims, claim_state, clean_temporaries
from pseudolabel.config import LEGACY_DEFAULTS, PseudolabelConfig, defining_options
from pseudolabel.inputs import (
    SELECTION,
    InputError,
    npy_bytes,
    Listing,
    detect,
    discover,
    rank_units,
    read_selection,
    select_items,
    shard_name,
    unit_count,
    unit_inputs,
    unit_range,
    write_listing,
)

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
    from distill.preprocessing import INPUT_SIZE  # noqa: PLC0415

    cfg.output = os.path.abspath(cfg.output)
    if cfg.resize == "depth_anything" and cfg.input_size is None:
        cfg.input_size = INPUT_SIZE
    try:  # a training run -> its final/, paths absolute; several teachers: comma-separated
        cfg.teacher = ",".join(resolve_reference(t.strip()) for t in cfg.teacher.split(","))
    except ModelError as err:
        raise JobError(f"cannot load teacher: {err}") from None
    if not cfg.input.startswith("hf:") and os.path.exists(cfg.input):
        cfg.input = os.path.abspath(cfg.input)
    if cfg.select:
        cfg.select = os.path.abspath(cfg.select)
    return cfg


# ------------------------------------------------------------------------------------ job file
def _job_path(out: str) -> str:
    return os.path.join(out, JOB_DIR, "job.json")


def _check_same(job: dict, cfg, wanted: dict) -> None:
    started = {**LEGACY_DEFAULTS, **job["options"]}
    for key, value in sorted(wanted.items(), key=lambda kv: kv[0] != "resize"):  # the rule first: it explains the rest
        if key in started and started[key] != value:
            raise JobError(
                f"{cfg.output} was started with {key}={started[key]!r}, this run asks for {value!r}: "
                "restart with the same options, or use a new --output"
            )


def _read_job(path: str, cfg, options: dict) -> dict:
    with open(path) as f:
        job = json.load(f)
    _check_same(job, cfg, options)
    return job


def prepare_job(cfg, rank: int, options: dict | None = None) -> dict:
    """Read the frozen job, or create it: the listing is made by one process of all launches (a
    claim on ``LISTING``, taken over if its holder dies); the others wait for ``job.json``.
    ``cfg``: a job's options with ``output`` and the input options (``pseudolabel.inputs.detect``);
    ``options``: those that define its output (default: the labeling job's)."""
    out = cfg.output
    path = _job_path(out)
    options = defining_options(cfg) if options is None else options
    if os.path.isfile(path):
        return _read_job(path, cfg, options)
    started = time.time()
    claims = Claims(out, cfg.claim_expiry_s) if rank == 0 else None  # other ranks wait for their launch's rank 0
    try:
        while not os.path.isfile(path):
            if claims is not None and claims.acquire(LISTING):
                if not os.path.isfile(path):  # nobody finished it between the two looks
                    return _list_job(cfg, path, options)
                break
            if time.time() - started > 24 * 3600:
                raise JobError(f"{path} did not appear in 24 h: is the process listing the inputs still running?")
            time.sleep(0.2)
    finally:
        if claims is not None:
            claims.close()
    time.sleep(0.05)
    return _read_job(path, cfg, options)


def _list_job(cfg, path: str, options: dict) -> dict:
    out = cfg.output
    if glob.glob(os.path.join(out, "shard-*.tar")):
        raise JobError(f"{out} holds shards but no {JOB_DIR}/job.json: not an output of this job, or damaged")
    job_dir = os.path.join(out, JOB_DIR)
    os.makedirs(os.path.join(out, INDEX_DIR), exist_ok=True)
    try:
        kind, spec = detect(cfg, exclude=out)
        selection = None
        if getattr(cfg, "select", None):  # frozen with the listing: a stream's members are selected from it later
            selection = read_selection(cfg.select)
            os.makedirs(job_dir, exist_ok=True)
            write_atomic(os.path.join(job_dir, SELECTION), npy_bytes(selection))
        counts = write_listing(select_items(discover(kind, spec, cfg), selection), job_dir, unique="walk" in spec)
    except InputError as e:
        raise JobError(str(e)) from None
    if counts["items"] == 0:
        raise JobError(f"{cfg.input}: no inputs found")
    hf = None
    if kind == "hf":
        hf = {"name": spec["name"], "split": cfg.hf_split, "image_column": cfg.image_column}
    job = {
        "version": 1,
        "options": options,
        "input_kind": kind,
        "hf": hf,
        "items": counts["items"],
        "duplicates_dropped": counts["duplicates"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    job["units"] = unit_count(counts["items"], unit_inputs(job))
    write_atomic(path, json.dumps(job, indent=1).encode())
    return job


# ------------------------------------------------------------------------------ resume / claims
def launch_slot(rank: int, world: int) -> tuple[int, int]:
    """This process's place among all processes of the launches started together: (slot, slots).
    A SLURM job array multiplies the processes of one launch by its tasks."""
    task, tasks = _env_int("SLURM_ARRAY_TASK_ID", 0), max(1, _env_int("SLURM_ARRAY_TASK_COUNT", 1))
    task -= _env_int("SLURM_ARRAY_TASK_MIN", 0)
    slots = tasks * world
    return (task * world + rank) % slots, slots


def unit_order(n_units: int, slot: int, slots: int) -> list[int]:
    """The order in which a process tries to claim units: its strided share first (so the processes
    of a launch do not collide at first, and a full launch splits the work as a rank split would),
    then every other unit, starting from its own place."""
    own = rank_units(n_units, slot, slots)
    taken = set(own)
    return own + sorted((u for u in range(n_units) if u not in taken), key=lambda u: (u - slot) % n_units)


def suspect_units(out: str, units: list[int]) -> set[int]:
    """Among ``units``, those whose index exists but is not valid (unreadable, or its tar missing or of
    another size): redone like undone ones. Each process checks its own share, so all together parse
    each index once."""
    return {u for u in units if os.path.isfile(index_path(out, shard_name(u))) and read_index(out, shard_name(u)) is None}


def claim_batch(out: str, order: list[int], claims: Claims, n: int, done: set[int], suspect: set[int]) -> list[int]:
    """Claim up to ``n`` undone units, in ``order``; clear what an earlier attempt left of each."""
    batch = []
    for unit in order:
        if len(batch) == n:
            break
        name = shard_name(unit)
        if unit in done or unit not in suspect and os.path.isfile(index_path(out, name)):
            done.add(unit)
            continue
        if not claims.acquire(unit):
            continue
        if read_index(out, name) is not None:  # committed (and released) by another process while we looked
            claims.release(unit)
            done.add(unit)
            continue
        suspect.discard(unit)
        # the index first: a kill between the two leaves an orphan tar, never an index without its tar
        remove_quietly(index_path(out, name))
        remove_quietly(os.path.join(out, name + ".tar"))
        batch.append(unit)
    return batch


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
        "inputs": sum(i["inputs"] for i in indexes),  # the listing's items, or what the streamed URLs held
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


class Stopped(BaseException):
    """SIGTERM / SIGINT: the batch in flight was abandoned and this process's claims released.
    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.labeled = 0  # in the units this process committed before the signal


class WriteFailure(JobError):
    """The output cannot be written (disk full, quota, I/O error): one line, exit 74 (EX_IOERR)."""

    exit_code = 74


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def write_failure(err: OSError, out: str) -> WriteFailure:
    try:
        usage = shutil.disk_usage(out)
        space = f"{_bytes(usage.free)} free of {_bytes(usage.total)} on {out}"
    except OSError:
        space = f"free space of {out} unknown"
    hint = "free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "fix it"
    return WriteFailure(f"cannot write {err.filename or out}: {err.strerror or err} ({space}); {hint} and rerun "
                        "the same command: finished shards are kept")


@contextlib.contextmanager
def writing(out: str):
    """An OSError on a file of the output becomes one line naming the file and the free space."""
    try:
        yield
    except OSError as err:
        if not (isinstance(err.filename, str) and err.filename.startswith(out + os.sep)):
            raise
        raise write_failure(err, out) from None


class _Signals(StopSignals):
    """A stop request (``distill.runtime.StopSignals``) raised as ``Stopped`` at the job's next check
    (before each batch of the model, each claim, each poll), once: the clean-up after it must run."""

    raised = False

    def check(self):
        if self.requested and not self.raised:
            self.raised = True
            raise Stopped(self.signum)


def _input_rule(cfg: PseudolabelConfig, reference: str, resolved):
    """How the teacher sees an image: its own input rule (``InputRule.of_model``, at ``--input-size`` where
    it can take one: as in evaluation, a global size for several teachers applies to those that can) or
    Depth Anything's rule. A one-size teacher (DPT-hybrid) refuses TTA rescaling."""
    from distill.inference import InputRule  # noqa: PLC0415
    from distill.preprocessing import INPUT_SIZE  # noqa: PLC0415

    fixed = resolved.preprocessing.fixed_size
    if cfg.tta == "flip+scales" and fixed:
        raise JobError(f"teacher {reference} takes one input size only ({fixed} px, a DPT-hybrid): "
                       "--tta flip+scales cannot rescale its input; use --tta flip")
    if cfg.resize == "processor":
        return InputRule.of_model(resolved.processor, resolved.preprocessing, cfg.input_size)
    return InputRule(cfg.resize, resolved.preprocessing, None, cfg.input_size or INPUT_SIZE, cfg.max_aspect)


class _Labeler:
    """The teachers, loaded once per process, and the pipeline that labels a batch of claimed units."""

    def __init__(self, cfg: PseudolabelConfig, job: dict, rank: int, world: int, local_rank: int):
        import torch  # noqa: PLC0415 - after the cheap checks

        from pseudolabel.decode import ByteSource, DecodePlan  # noqa: PLC0415
        from pseudolabel.tta import Predictor  # noqa: PLC0415

        self.cfg, self.job, self.world = cfg, job, world
        device, precision, autocast = self._device(cfg, local_rank)
        references = cfg.teacher.split(",")
        names = teacher_names(references)
        predictors, teachers = [], []
        for name, reference in zip(names, references):
            resolved = _load_teacher(cfg, reference)
            rule = _input_rule(cfg, reference, resolved)
            model = resolved.model.to(device).eval().requires_grad_(False)
            if cfg.compile:
                model = torch.compile(model)
            predictors.append(Predictor(model, resolved.output_space, rule, cfg.tta, cfg.tta_scales, cfg.confidence_tau, autocast))
            teachers.append({"name": name, "teacher": reference, "space": resolved.output_space.space,
                             "geometry": resolved.output_space.geometry, "input_rule": rule.to_dict()})
        space, rule = predictors[0].space, predictors[0].rule  # the first teacher's label is the sample's default
        self.device, self.predictors, self.teachers = device, predictors, teachers
        out = cfg.output
        self.listing = Listing(os.path.join(out, JOB_DIR))
        self.source = ByteSource(job["input_kind"], job["hf"], os.path.join(out, JOB_DIR, SELECTION) if cfg.select else None)
        self.plan = DecodePlan(tuple(p.rule for p in predictors), cfg.store_image, cfg.image_max_side, cfg.image_ext,
                               cfg.jpeg_quality, cfg.draft, cfg.max_pixels)
        self.header = {"teacher": references[0], "space": space.space, "geometry": space.geometry, "teachers": teachers}
        self.sample_meta = {
            "dataset": cfg.dataset_name or os.path.basename(out.rstrip(os.sep)),
            "teacher": references[0],
            "space": space.space,
            "geometry": space.geometry,
            "input_rule": rule.to_dict(),
            "input_size": cfg.input_size,
            "precision": precision,
            "confidence": {"tta": cfg.tta, "views": predictors[0].views, "tau": cfg.confidence_tau if cfg.tta != "none" else 0.0},
        }
        self.encode_threads = cfg.encode_threads or (1 if device.type == "cpu" else 4)
        from tqdm.auto import tqdm  # noqa: PLC0415

        self.bar = tqdm(total=None if job["input_kind"] == "urls" else 0, unit="img", desc=f"labeling (process {rank + 1}/{world})", dynamic_ncols=True,
                        mininterval=1.0, disable=not (cfg.progress and rank == 0), file=sys.stderr)
        self.stats = None
        self.labeled = self.skipped = self.units = self.labeled_committed = 0
        self.writer_cpu = 0.0

    def _device(self, cfg: PseudolabelConfig, local_rank: int):
        """(device, precision, autocast dtype); CPU thread split across the labeling streams."""
        import cv2  # noqa: PLC0415
        import torch  # noqa: PLC0415

        use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
        device = torch.device("cpu") if use_cpu else torch.device("cuda", local_rank % torch.cuda.device_count())
        self.streams = cfg.streams or (min(2, torch.get_num_threads()) if device.type == "cpu" else 1)
        if cfg.threads or (device.type == "cpu" and self.streams > 1):
            torch.set_num_threads(cfg.threads or max(1, torch.get_num_threads() // self.streams))
        cv2.setNumThreads(1)
        precision = cfg.precision
        if precision == "auto":
            precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        return device, precision, {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    @property
    def committed(self) -> int:
        return self.labeled_committed

    def close(self):
        self.bar.close()

    def work(self, units: list[int], claims: Claims, check_stop) -> list[int]:
        """Label ``units`` (claimed); returns those taken over by another process meanwhile (not committed).
        ``check_stop()`` raises ``Stopped`` before a batch once a signal came."""
        from pseudolabel.runner import run_model  # noqa: PLC0415
        from pseudolabel.stream import LabelStream, build_loader  # noqa: PLC0415
        from pseudolabel.writer import Writer  # noqa: PLC0415

        cfg, job = self.cfg, self.job
        stream = LabelStream(self.listing, units, job["items"], unit_inputs(job), self.plan, self.source,
                             cfg.batch_size, cfg.bucket_buffer)
        loader = build_loader(stream, cfg.num_workers, cfg.prefetch_factor, pin_memory=self.device.type == "cuda", nice=cfg.nice)
        writer = Writer(cfg.output, self.header, self.sample_meta, cfg.image_ext, cfg.png_compression, self.encode_threads,
                        cfg.queue_size, cfg.nice, cfg.label_size, self.teachers if len(self.teachers) > 1 else None,
                        owns=claims.owns)
        if job["input_kind"] != "urls":  # a stream's inputs are unknown until read
            self.bar.total += sum(b - a for a, b in (unit_range(u, job["items"], cfg.shard_size) for u in units))
            self.bar.refresh()
        skipped = self.skipped

        def progress(packet):
            nonlocal skipped
            skipped += len(packet["errors"])
            self.bar.update(len(packet["items"]) + len(packet["errors"]))
            self.bar.set_postfix(skipped=skipped, refresh=False)

        try:
            stats = run_model(loader, self.predictors, self.device, writer, self.streams, progress, check_stop)
            t = time.perf_counter()
            writer.close()
            stats.writer += (time.perf_counter() - t) * stats.streams
        except BaseException:
            writer.abort()
            raise
        finally:
            self.labeled_committed += writer.labeled_committed
        self.stats = stats if self.stats is None else self.stats.add(stats)
        self.labeled += writer.labeled
        self.skipped += writer.skipped
        self.units += writer.units_committed
        self.writer_cpu += writer.cpu_s
        return writer.units_lost


POLL_S = 2.0


def _holders(others: dict[int, dict]) -> str:
    by_owner: dict[str, list[str]] = {}
    for unit, claim in sorted(others.items()):
        by_owner.setdefault(claim["owner"], []).append(shard_name(unit))
    return "; ".join(f"{owner}: {', '.join(names)}" for owner, names in by_owner.items())


def _more_to_claim(cfg: PseudolabelConfig, order, done: set, claims: Claims, signals: _Signals, log, who: str) -> bool:
    """Nothing was claimable: True to try again (a unit was freed, or a holder's claims are turning
    stale after a poll), False when every unit is done or held live by other processes."""
    out = cfg.output
    left = [u for u in order if u not in done and not os.path.isfile(index_path(out, shard_name(u)))]
    others = claims.others(left)
    if not left:
        return False
    if len(others) < len(left):  # a unit was freed meanwhile: claim it
        return True
    if any(claim_state(c, cfg.claim_expiry_s) != "live" for c in others.values()):
        time.sleep(POLL_S)  # a holder stopped renewing: its claims turn stale, then this process takes them
        signals.check()
        return True
    log(f"{who}: nothing left to claim; {len(others)} units are being labeled by other processes "
        f"({_holders(others)}): whichever finishes last writes the manifest")
    return False


def work_units(cfg, job: dict, start_worker, log=print):
    """This process's part of a job (labeling, curation): claim free units in its order, have the
    worker do them, until none is free; returns the worker (None if nothing was claimed).
    ``start_worker(rank, world, local_rank)`` is called once, at the first claim; the worker's
    ``work(units, claims, check_stop)`` commits each unit (its index last) and returns the units
    another process took over meanwhile; ``close()`` ends it, ``committed`` counts its inputs."""
    rank, world, local_rank = process_info()
    out = cfg.output
    slot, slots = launch_slot(rank, world)
    order = unit_order(job["units"], slot, slots)
    signals = _Signals()
    worker = None
    try:
        with writing(out):
            clean_temporaries(out)
            suspect = suspect_units(out, rank_units(job["units"], slot, slots))
            claims = Claims(out, cfg.claim_expiry_s)
        done: set[int] = set()
        try:
            with writing(out):
                while True:
                    signals.check()
                    batch = claim_batch(out, order, claims, cfg.claim_units, done, suspect)
                    if batch:
                        worker = worker or start_worker(rank, world, local_rank)
                        lost = worker.work(batch, claims, signals.check)
                        if lost:
                            log(f"process {rank + 1}/{world}: {', '.join(map(shard_name, lost))} taken over by another "
                                "process (this one was stalled past claim_expiry_s): left to it")
                        for unit in batch:
                            claims.release(unit)
                        continue
                    if not _more_to_claim(cfg, order, done, claims, signals, log, f"process {rank + 1}/{world}"):
                        break
        finally:
            if worker is not None:
                worker.close()
            claims.close()
        with writing(out):
            clean_temporaries(out)
        return worker
    except Stopped as stop:
        stop.labeled = worker.committed if worker is not None else 0
        raise
    finally:
        signals.restore()


def run(cfg: PseudolabelConfig, log=print) -> dict | None:
    """Label units of the job as long as some are free to claim; returns the manifest if the job is now complete."""
    cfg = normalise(cfg)
    rank, _, _ = process_info()
    with writing(cfg.output):
        job = prepare_job(cfg, rank)
    started = time.perf_counter()
    labeler = work_units(cfg, job, lambda rank, world, local_rank: _Labeler(cfg, job, rank, world, local_rank), log)
    if labeler is not None and cfg.progress:
        elapsed = max(time.perf_counter() - started, 1e-9)
        log(f"process {rank + 1}/{labeler.world}: {labeler.labeled} labeled, {labeler.skipped} skipped, {labeler.units} "
            f"shards in {elapsed:.1f} s; "
            f"{labeler.stats.summary(elapsed, max(1, labeler.labeled + labeler.skipped), labeler.writer_cpu)}")
    with writing(cfg.output):
        return finalize(cfg.output, job)
