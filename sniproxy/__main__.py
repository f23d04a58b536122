"""``python -m sniproxy``: same as the ``sniproxy`` console script."""

import sys

from sniproxy.cli import main

# Guarded: the CRL indexer's spawned helper process imports the main module again.
if __name__ == "__main__":
    sys.exit(main())
