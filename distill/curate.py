"""Curate an unlabeled corpus before labeling it (launcher; the command and its options: ``pseudolabel.curation``).

    accelerate launch distill/curate.py --input I --output C [--config FILE] [key=value | --key value ...]
"""
import os
import sys

# Run as a script, this file's directory (distill/) is first on sys.path, so `import pseudolabel`
# would find distill/pseudolabel.py instead of the top-level package: put the project root there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _HERE:
    sys.path[0] = os.path.dirname(_HERE)

from pseudolabel.curation.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
