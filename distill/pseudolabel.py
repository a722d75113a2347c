"""Pseudo-label a corpus with a frozen teacher (launcher; the job and its options: ``pseudolabel``).

    accelerate launch distill/pseudolabel.py --teacher T --input I --output O [--config FILE] [key=value | --key value ...]
"""
import os
import sys

# Run as a script, this file's directory (distill/) is first on sys.path, so `import pseudolabel`
# would find this very file instead of the top-level package: put the project root there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _HERE:
    sys.path[0] = os.path.dirname(_HERE)

from pseudolabel.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
