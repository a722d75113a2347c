"""Train a depth teacher (launcher; the stage's code and options: ``teacher.train``, ``teacher.config``).

    accelerate launch distill/train_teacher.py --config configs/teacher/tiny.yaml [key=value | --key value ...]
"""
import sys

from teacher.train import main

if __name__ == "__main__":
    sys.exit(main())
