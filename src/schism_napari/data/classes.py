"""Class names and colours when a dataset or a run brings none.

One palette for every place that shows classes, so a class has the same colour in the napari dock's
Labels layers and in the overlay videos of ``schism predict --overlay``. Qt-free and torch-free.
"""

from __future__ import annotations

# class k's colour (label k + 1 in a Labels layer), cycled past the tenth class
DEFAULT_COLORS: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def default_class_names(class_count: int) -> list[str]:
    """``class 0``, ``class 1``, ...: the names of classes that a dataset or run leaves unnamed."""
    return [f"class {k}" for k in range(class_count)]


def default_colors(class_count: int) -> list[tuple[int, int, int]]:
    """The first ``class_count`` colours of :data:`DEFAULT_COLORS`, cycled."""
    return [DEFAULT_COLORS[k % len(DEFAULT_COLORS)] for k in range(class_count)]
