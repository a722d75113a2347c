"""The metric fine-tuning command's earlier home, kept so ``accelerate launch -m teacher.metric`` and
imports from it still work; the command is ``student.metric`` (``-m student.metric``)."""
import sys

from student.metric import *  # noqa: F401,F403
from student.metric import main

if __name__ == "__main__":
    sys.exit(main())
