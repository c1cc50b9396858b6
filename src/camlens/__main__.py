"""``python -m camlens`` and ``torchrun ... -m camlens``: the ``camlens`` command (:func:`camlens.cli.main`)."""

import sys

from camlens.cli import main

if __name__ == "__main__":
    sys.exit(main())
