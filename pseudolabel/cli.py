"""The labeling command: ``accelerate launch distill/pseudolabel.py`` / ``distill-pseudolabel``.

    accelerate launch distill/pseudolabel.py --teacher T --input I --output O \
        [--config configs/pseudolabel/cluster.yaml] [--batch-size 8] [--workers 2] [--resize processor] \
        [--tta none|flip|flip+scales] [--store-image original|reencode|none] [--shard-size 1000] \
        [--compile] [--precision auto|fp32|bf16|fp16] [key=value | --key value ...]

T: anything ``distill.models.resolve_model`` accepts (a teacher run, a transformers depth model
directory or hub id of any architecture, an original Depth Anything ``.pth`` with
``--teacher-preset``), or several of them comma-separated (each labels every image: see
``pseudolabel.writer``). Each teacher sees the image through its own image processor
(``--resize processor``, default; ``--input-size N`` sets its target size) or Depth Anything's
original rule (``--resize depth_anything --input-size 518``). I: a directory, a glob, a text file of paths, WebDataset .tar shards, or
``hf:NAME_OR_PATH``. Every option of ``pseudolabel.config.PseudolabelConfig`` is a flag of the same
name and a ``key=value``; ``--workers`` is kept as an alias of ``--num-workers``. Run the same
command again after an interruption: finished shards are kept, the rest is redone; several
launches may work on one output at once (``pseudolabel.job``). SIGTERM / SIGINT stop the job
cleanly: exit 143 / 130 with one line; a full disk: one line, exit 74. See
``pseudolabel/__init__.py`` for the design.

    python distill/pseudolabel.py status O

prints where the job writing to ``O`` stands (``pseudolabel.status``), also while it runs.
"""
from __future__ import annotations

import json
import os
import sys
import time

from distill.config import ConfigError, fail, parse_cli, run_main
from pseudolabel.config import PseudolabelConfig

PROG = "pseudolabel.py"
ALIASES = {"workers": "num_workers"}  # the flag's earlier name


STATUS_USAGE = f"usage: {PROG} status OUTPUT (the --output of a labeling job)"


def _status(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        if argv and argv[0] in ("-h", "--help"):
            print(STATUS_USAGE)
            return 0
        fail(PROG, STATUS_USAGE)
    from pseudolabel.claims import CLAIM_SUFFIX, CLAIMS_DIR, LISTING, read_claim  # noqa: PLC0415
    from pseudolabel.job import JOB_DIR  # noqa: PLC0415
    from pseudolabel.status import format_status, job_status  # noqa: PLC0415

    out = os.path.abspath(argv[0])
    path = os.path.join(out, JOB_DIR, "job.json")
    listing = read_claim(os.path.join(out, CLAIMS_DIR, LISTING + CLAIM_SUFFIX))
    if not os.path.isfile(path) and listing is not None:
        print(f"{out}: the inputs are being listed by {listing['owner']} (claim renewed "
              f"{time.time() - listing['mtime']:.0f} s ago); units appear once job.json is written")
        return 0
    try:
        with open(path) as f:
            job = json.load(f)
    except (OSError, ValueError):
        raise ConfigError(f"{path}: not found or unreadable: {argv[0]} is not (yet) the output of a labeling job") from None
    print(format_status(out, job_status(out, job)))
    return 0


def _main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "status":
        return _status(argv[1:])
    cfg = parse_cli(PseudolabelConfig, argv, prog=PROG, aliases=ALIASES)
    from pseudolabel.job import Stopped, run  # noqa: PLC0415 - torch is imported only past the checks

    try:
        manifest = run(cfg, log=lambda message: print(message, file=sys.stderr))
    except Stopped as stop:
        print(f"{PROG}: stopped by {stop.name} after {stop.labeled} labeled; rerun the same command to resume",
              file=sys.stderr)
        return 128 + stop.signum
    if manifest is not None:
        print(f"{PROG}: done: {manifest['labeled']} labeled, {manifest['skipped']} skipped "
              f"in {len(manifest['shards'])} shards -> {cfg.output}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """Bad input (options, input, teacher, output directory): one line, exit 2; the output cannot be
    written: one line, exit 74; stopped by SIGTERM / SIGINT: one line, exit 143 / 130."""
    return run_main(PROG, _main, argv)
