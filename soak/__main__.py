"""``python -m soak --minutes N [--out soak/results/<date>.md] [--seed S]``."""

import sys

from soak.run import main

sys.exit(main())
