"""Fine-tune a depth model (a student, or a teacher) to metric depth (launcher; the command and its options: ``student.metric``).

    accelerate launch distill/finetune_metric.py --config configs/metric/vits.yaml model.init_from=RUN [key=value | --key value ...]
"""
import os
import sys

# Run as a script, this file's directory (distill/) is first on sys.path, so `import student`
# would find a file of distill/ before the top-level package: put the project root there instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
if sys.path and os.path.abspath(sys.path[0] or os.curdir) == _HERE:
    sys.path[0] = os.path.dirname(_HERE)

from student.metric import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
