"""Entry point of `python -m hashtune.retrieve`; the code is `hashtune.retrieval.cli`."""

import sys

from hashtune.retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main())
