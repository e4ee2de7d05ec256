"""Entry point of `python -m hashtune.serve`; the code is `hashtune.serve.cli`."""

import sys

from hashtune.serve.cli import main

if __name__ == "__main__":
    sys.exit(main())
