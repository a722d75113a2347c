"""The curate command: ``accelerate launch -m pseudolabel.curation`` / ``distill-curate``.

    accelerate launch -m pseudolabel.curation --input I --output C [--encoder E] [--budget N] [key=value | --key value ...]
    python -m pseudolabel.curation status C

Reads every input form labeling reads (``pseudolabel.inputs``), embeds on any number of processes
with the labeling job's claims, resume and stop (``embed``), then the process that finds the pass
complete merges it, selects (``select``) and writes the report (``report``). Rerun the same
command after an interruption; rerun with other selection options (``threshold``, ``budget``, ...)
to select again from the stored embeddings. Then label the selection:

    accelerate launch distill/pseudolabel.py --teacher T --input I --select C/selection_ids.txt --output O
"""
from __future__ import annotations

import json
import os
import sys

from distill.config import ConfigError, fail, parse_cli, run_main
from pseudolabel.curation.config import CurateConfig, embedding_options
from pseudolabel.curation.select import threshold_of

PROG = "pseudolabel.curation"
SELECT_CLAIM = "select"  # the claim of the one process that merges and selects


def normalise(cfg: CurateConfig) -> CurateConfig:
    for flag in ("input", "output"):
        if not getattr(cfg, flag):
            raise ConfigError(f"--{flag} is required")
    cfg.output = os.path.abspath(cfg.output)
    if not cfg.input.startswith("hf:") and os.path.exists(cfg.input):
        cfg.input = os.path.abspath(cfg.input)
    from distill.frozen_reference import is_timm_reference  # noqa: PLC0415
    from distill.models import ModelError, resolve_reference  # noqa: PLC0415

    if not is_timm_reference(cfg.encoder):
        try:  # a missing folder is named before anything is listed; a hub id is tried when loaded
            cfg.encoder = resolve_reference(cfg.encoder)
        except ModelError as err:
            raise ConfigError(f"cannot load the encoder: {err}") from None
    threshold_of(cfg, cfg.encoder)  # before hours of embedding: an encoder without a measured threshold needs one
    return cfg


def run(cfg: CurateConfig, log=print) -> dict | None:
    """Embed what is left, then (one process) merge, select and report; returns the selection summary,
    or None when other processes are still embedding or selecting."""
    from pseudolabel.claims import Claims  # noqa: PLC0415
    from pseudolabel.curation.embed import MERGED, Embedder, merge  # noqa: PLC0415
    from pseudolabel.curation.report import write_report  # noqa: PLC0415
    from pseudolabel.curation.select import select  # noqa: PLC0415
    from pseudolabel.job import writing, prepare_job, process_info, work_units  # noqa: PLC0415

    cfg = normalise(cfg)
    out = cfg.output
    rank, _, _ = process_info()
    with writing(out):
        job = prepare_job(cfg, rank, embedding_options(cfg))
    if not os.path.isfile(os.path.join(out, MERGED)):
        work_units(cfg, job, lambda rank, world, local_rank: Embedder(cfg, job, rank, world, local_rank), log)
    claims = Claims(out, cfg.claim_expiry_s)
    try:
        if not claims.acquire(SELECT_CLAIM):
            log(f"{PROG}: another process is merging or selecting in {out}; it writes the selection")
            return None
        with writing(out):
            if not os.path.isfile(os.path.join(out, MERGED)) and merge(out, job) is None:
                log(f"{PROG}: units are still being embedded by other processes; the last one selects")
                return None
            summary = select(cfg, out, log)
            if cfg.report:
                write_report(out, summary, job["input_kind"], job["hf"], cfg.seed)
        return summary
    finally:
        claims.close()


def _status(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        fail(PROG, f"usage: {PROG} status CURATION_FOLDER")
    from pseudolabel.job import JOB_DIR  # noqa: PLC0415
    from pseudolabel.status import format_status, job_status  # noqa: PLC0415

    out = os.path.abspath(argv[0])
    try:
        with open(os.path.join(out, JOB_DIR, "job.json")) as f:
            job = json.load(f)
    except (OSError, ValueError):
        raise ConfigError(f"{argv[0]}: not (yet) the output of a curate command (no {JOB_DIR}/job.json)") from None
    print(format_status(out, job_status(out, job)).replace(" labeled", " embedded"))
    path = os.path.join(out, "selection.json")
    if os.path.isfile(path):
        with open(path) as f:
            s = json.load(f)
        print(f"selection: {s['selected']} of {s['inputs']} inputs ({', '.join(f'{k} {v}' for k, v in s['counts'].items() if v)})")
    return 0


def _main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "status":
        return _status(argv[1:])
    cfg = parse_cli(CurateConfig, argv, prog=PROG)
    from pseudolabel.job import Stopped  # noqa: PLC0415

    try:
        summary = run(cfg, log=lambda message: print(message, file=sys.stderr))
    except Stopped as stop:
        print(f"{PROG}: stopped by {stop.name} after {stop.labeled} embedded; rerun the same command to resume", file=sys.stderr)
        return 128 + stop.signum
    if summary is not None:
        counts = ", ".join(f"{k} {v}" for k, v in summary["counts"].items() if v)
        print(f"{PROG}: {summary['selected']} selected of {summary['inputs']} inputs ({summary['unreadable']} unreadable; "
              f"{counts}) -> {cfg.output}/selection_ids.txt", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """Bad input: one line, exit 2; the output cannot be written: one line, exit 74; SIGTERM / SIGINT: exit 143 / 130."""
    return run_main(PROG, _main, argv)
