"""Fine-tune a relative depth model to metric depth (launcher; the stage's code and options:
``teacher.metric``).

    accelerate launch distill/finetune_metric.py --config configs/metric/tiny.yaml model.init_from=RUN [key=value ...]
"""
import sys

from teacher.metric import main

if __name__ == "__main__":
    sys.exit(main())
