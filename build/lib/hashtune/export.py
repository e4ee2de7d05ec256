"""Entry point of `python -m hashtune.export`; the code is `hashtune.retrieval.export`."""

import sys

from hashtune.retrieval.export import main

if __name__ == "__main__":
    sys.exit(main())
