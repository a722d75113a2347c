"""The labeling command: ``accelerate launch distill/pseudolabel.py`` / ``distill-pseudolabel``.

    accelerate launch distill/pseudolabel.py --teacher T --input I --output O \
        [--config configs/pseudolabel/cluster.yaml] [--batch-size 8] [--workers 2] [--resize processor] \
        [--tta none|flip|flip+scales] [--store-image original|reencode|none] [--shard-size 1000] \
        [--compile] [--precision auto|fp32|bf16|fp16] [key=value | --key value ...]

T: anything ``distill.models.resolve_model`` accepts (a teacher run, a transformers depth model
directory or hub id of any architecture, an original Depth Anything ``.pth`` with
``--teacher-preset``), or several of them comma-separated (each labels every image: see
``pseudolabel.writer``). Each teacher sees the image through its own image processor
(``--resize processor``, default) or Depth Anything's original rule (``--resize depth_anything
--input-size 518``). I: a directory, a glob, a text file of paths, WebDataset .tar shards, or
``hf:NAME_OR_PATH``. Every option of ``pseudolabel.config.PseudolabelConfig`` is a flag of the same
name and a ``key=value``; ``--workers`` is kept as an alias of ``--num-workers``. Run the same
command again after an interruption: finished shards are kept, the rest is redone. See
``pseudolabel/__init__.py`` for the design.
"""
from __future__ import annotations

import sys

from distill.config import parse_cli, run_main
from pseudolabel.config import PseudolabelConfig

PROG = "pseudolabel.py"
ALIASES = {"workers": "num_workers"}  # the flag's earlier name


def _main(argv=None) -> int:
    cfg = parse_cli(PseudolabelConfig, argv, prog=PROG, aliases=ALIASES)
    from pseudolabel.job import run  # noqa: PLC0415 - torch is imported only past the checks

    manifest = run(cfg, log=lambda message: print(message, file=sys.stderr))
    if manifest is not None:
        print(f"{PROG}: done: {manifest['labeled']} labeled, {manifest['skipped']} skipped "
              f"in {len(manifest['shards'])} shards -> {cfg.output}", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """Bad input (options, input, teacher, output directory): one line, exit 2."""
    return run_main(PROG, _main, argv)
