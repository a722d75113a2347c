"""``accelerate launch -m pseudolabel.curation`` / ``python -m pseudolabel.curation status C``."""
import sys

from pseudolabel.curation.cli import main

sys.exit(main())
