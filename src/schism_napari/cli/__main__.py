"""``python -m schism_napari.cli``: the ``schism`` command (torchrun starts its processes this way)."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
