"""Export a depth model to ONNX (launcher; the code and its options: ``distill.deploy``).

    python distill/export.py --model M --output DIR [--precision fp32|fp16] [--opset 18] ...
"""
import sys

from distill.deploy import main

if __name__ == "__main__":
    sys.exit(main())
