"""Train a student on pseudo-labels (launcher; the stage's code and options: ``student.train``,
``student.config``).

    accelerate launch distill/train_student.py --config configs/student/tiny.yaml [key=value | --key value ...]
"""
import sys

from student.train import main

if __name__ == "__main__":
    sys.exit(main())
