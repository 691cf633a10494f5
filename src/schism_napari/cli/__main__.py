"""``python -m schism_napari.cli``: the ``schism`` command (torchrun starts it this way)."""

import sys

from . import main

sys.exit(main())
