"""``python -m sniproxy``: same as the ``sniproxy`` console script."""

import sys

from sniproxy.cli import main

sys.exit(main())
