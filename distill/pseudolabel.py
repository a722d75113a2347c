"""Label an unlabeled corpus with a frozen teacher into WebDataset shards (resumable, multi-process).

    accelerate launch distill/pseudolabel.py --teacher T --input I --output O \
        [--config configs/pseudolabel/default.yaml] [--batch-size 8] [--workers 2] [--input-size 518] \
        [--tta none|flip|flip+scales] [--store-image original|reencode|none] [--image-max-side 1024] \
        [--shard-size 1000] [--compile] [--precision auto|fp32|bf16|fp16] [key=value ...]

T: a teacher run directory (its ``final/``), any transformers depth model directory, or a hub id.
I: a directory, a glob, a text file of paths, WebDataset .tar shards, or ``hf:NAME_OR_PATH``.
Run the same command again after an interruption: finished shards are kept, the rest is redone.
Any option of ``pseudolabel.options.PseudolabelConfig`` can be set as ``key=value``; flags win
over ``key=value``, which wins over the YAML file. See ``pseudolabel/__init__.py`` for the design.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

# Run as a script, this file has its own directory (distill/) first on sys.path, so
# `import pseudolabel` would import this very file instead of the top-level `pseudolabel` package.
# Replace that entry with the project root (which also makes `distill` importable).
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _HERE:
    sys.path[0] = os.path.dirname(_HERE)
elif __name__ == "__main__" and os.path.dirname(_HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(_HERE))

from distill.config import ConfigError, load_config  # noqa: E402
from pseudolabel.options import TTA_MODES, PseudolabelConfig  # noqa: E402

PROG = "pseudolabel.py"

# flag -> config key
FLAGS = {
    "teacher": "teacher", "input": "input", "output": "output", "batch_size": "batch_size",
    "workers": "num_workers", "input_size": "input_size", "tta": "tta", "store_image": "store_image",
    "image_max_side": "image_max_side", "shard_size": "shard_size", "compile": "compile", "precision": "precision",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print the usage first)
        _fail(message)


def _fail(message: str):
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Pseudo-label a corpus with a frozen depth teacher into WebDataset shards.")
    p.add_argument("--teacher", help="teacher run dir (its final/), transformers depth model dir, or hub id")
    p.add_argument("--input", help="directory, glob, list file, .tar shards, or hf:NAME_OR_PATH")
    p.add_argument("--output", help="output directory (shards, index/, manifest.json, errors.jsonl)")
    p.add_argument("--config", help="YAML options (e.g. configs/pseudolabel/default.yaml)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--workers", type=int, help="DataLoader decoding workers per process")
    p.add_argument("--input-size", type=int, help="shorter side of the teacher's input (default 518)")
    p.add_argument("--tta", choices=TTA_MODES)
    p.add_argument("--store-image", choices=("original", "reencode", "none"))
    p.add_argument("--image-max-side", type=int, help="longer side of re-encoded images")
    p.add_argument("--shard-size", type=int, help="inputs per output shard")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the teacher")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("overrides", nargs="*", metavar="key=value", help="any other option")
    return p


def parse(argv=None) -> PseudolabelConfig:
    args = build_parser().parse_args(argv)
    for item in args.overrides:
        if "=" not in item or item.startswith("-"):
            _fail(f"unexpected argument {item!r}; expected key=value")
    flags = [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in FLAGS.items() if getattr(args, flag) is not None]
    try:
        return load_config(PseudolabelConfig, args.config, list(args.overrides) + flags)
    except ConfigError as err:
        _fail(str(err))


def main(argv=None) -> int:
    cfg = parse(argv)
    from pseudolabel.job import JobError, run  # noqa: PLC0415 - torch is imported only past the checks

    try:
        manifest = run(cfg, log=lambda message: print(message, file=sys.stderr))
    except JobError as err:
        _fail(str(err))
    if manifest is not None:
        print(f"{PROG}: done: {manifest['labeled']} labeled, {manifest['skipped']} skipped "
              f"in {len(manifest['shards'])} shards -> {cfg.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
