"""Release a depth model to the Hugging Face Hub (launcher; the code and its options: ``distill.hub``).

    python distill/release.py --model M --repo-id USER/NAME [--dry-run] [--eval FILE ...] ...
"""
import sys

from distill.hub import main

if __name__ == "__main__":
    sys.exit(main())
