"""``python -m sharkcage``: the same CLI as the ``sharkcage`` script."""

import sys

from sharkcage.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
