"""Evaluate a depth model on a benchmark (launcher; the code and its options: ``distill.evaluation``).

    python distill/evaluate.py --model M --benchmark B --data-root R [--protocol P] [--output FILE] ...
"""
import sys

from distill.evaluation import main

if __name__ == "__main__":
    sys.exit(main())
