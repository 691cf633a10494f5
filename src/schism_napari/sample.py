"""A procedural, seeded synthetic "rock CT" for tests, the demo and napari's sample data.

Three classes as in a porous rock scan: pores (0, dark), matrix (1, mid gray) and dense
mineral grains (2, bright). Pores are a thresholded smooth random field, minerals random
ellipsoids; the image gets partial-volume blur, beam-hardening shading and noise, stored as
16-bit. Intensity alone separates the classes only roughly, so a network must use context.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASS_NAMES = ("pore", "matrix", "mineral")
CLASS_COLORS = ((50, 90, 220), (90, 190, 110), (240, 190, 40))
_LEVELS = (9000.0, 26000.0, 46000.0)


@dataclass
class SampleFiles:
    root: Path
    datasets: Path  # SCHISM layout: datasets/<name>/{images,masks}
    config: Path  # an INI file suited to the sample (short CPU training)
    volume: Path  # 3D test stack, uint16
    volume_labels: Path  # its ground truth, classes 0..2
    image_2d: Path  # non-square 2D test image
    image_2d_labels: Path
    schism_test: Path | None = None  # with schism=True: the test stack as SCHISM's <data>/<dataset>/images, masks


def to_8bit(image: np.ndarray) -> np.ndarray:
    """16-bit to 8-bit by the full range (65535 -> 255), the scale this project reads 16-bit data at."""
    return np.round(image.astype(np.float64) / 257.0).astype(np.uint8)


def _smooth(field: np.ndarray, sigma: float | tuple[float, ...]) -> np.ndarray:
    """Gaussian filter through the FFT (periodic edges): no SciPy needed."""
    sigmas = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (field.ndim,))
    spectrum = np.fft.rfftn(field)
    for axis, (n, s) in enumerate(zip(field.shape, sigmas, strict=True)):
        frequencies = np.fft.rfftfreq(n) if axis == field.ndim - 1 else np.fft.fftfreq(n)
        shape = [1] * field.ndim
        shape[axis] = frequencies.size
        spectrum = spectrum * np.exp(-2 * (np.pi * frequencies * s) ** 2).reshape(shape)
    return np.fft.irfftn(spectrum, s=field.shape, axes=tuple(range(field.ndim)))


def make_rock(shape: tuple[int, ...] = (16, 256, 256), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (image uint16, labels uint8) of the given 2D or 3D shape."""
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    pore_field = _smooth(rng.standard_normal(shape), 5.0 if ndim == 2 else (2.5, 5.0, 5.0))
    labels = np.ones(shape, dtype=np.uint8)
    area = float(np.prod(shape[-2:]))
    for _ in range(int(area / 2500) + 2):
        centre = np.array([rng.uniform(0, n) for n in shape], dtype=np.float32)
        radii = rng.uniform(4, 12, size=ndim).astype(np.float32)
        if ndim == 3:
            radii[0] = rng.uniform(2, 5)
        # only the ellipsoid's bounding box: cost per grain, not per grain and pixel
        box = tuple(
            slice(max(0, int(np.floor(c - r))), min(n, int(np.ceil(c + r)) + 1))
            for c, r, n in zip(centre, radii, shape, strict=True)
        )
        grid = np.meshgrid(*[np.arange(b.start, b.stop, dtype=np.float32) for b in box], indexing="ij")
        distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True))
        labels[box][distance <= 1.0] = 2
    labels[pore_field < np.quantile(pore_field, 0.22)] = 0
    image = np.choose(labels, _LEVELS).astype(np.float64)
    image = _smooth(image, 1.2)  # partial volume at interfaces
    yy, xx = np.meshgrid(np.linspace(-1, 1, shape[-2]), np.linspace(-1, 1, shape[-1]), indexing="ij")
    image *= 1.0 - 0.12 * (yy**2 + xx**2)  # beam hardening: darker towards the edge of the field
    image += _smooth(rng.standard_normal(shape), 0.7) * 9000.0  # correlated detector noise
    return np.clip(image, 0, 65535).astype(np.uint16), labels


LINED_CLASS_NAMES = ("pore", "matrix", "coating")
_LINED_LEVELS = (9000.0, 28000.0, 47000.0)


def make_lined_rock(shape: tuple[int, ...] = (16, 256, 256), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A rock whose third phase is thin: pores (0), matrix (1) and a bright coating (2), 1 to 3 px
    thick, lining about two thirds of the pore walls (clay or oxide rims in a sandstone scan).

    Partial-volume blur leaves the thinnest rims at little more than the matrix's gray: the phase
    where a pixel classifier's errors concentrate. Returns (image uint16, labels uint8)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    ndim = len(shape)
    sigma = 5.0 if ndim == 2 else (2.5, 5.0, 5.0)
    pore_field = _smooth(rng.standard_normal(shape), sigma)
    pores = pore_field < np.quantile(pore_field, 0.25)
    thickness_field = _smooth(rng.standard_normal(shape), 8.0 if ndim == 2 else (4.0, 8.0, 8.0))
    span = thickness_field.max() - thickness_field.min()
    thickness = 1.0 + 2.0 * (thickness_field - thickness_field.min()) / (span or 1.0)  # 1..3 px
    cover_field = _smooth(rng.standard_normal(shape), 10.0 if ndim == 2 else (5.0, 10.0, 10.0))
    covered = cover_field > np.quantile(cover_field, 0.33)
    distance = ndimage.distance_transform_edt(~pores)  # from the nearest pore voxel
    labels = np.ones(shape, dtype=np.uint8)
    labels[pores] = 0
    labels[~pores & (distance <= thickness) & covered] = 2
    image = np.choose(labels, _LINED_LEVELS).astype(np.float64)
    image = _smooth(image, 1.0)  # partial volume: a 1 px rim keeps about half its contrast
    yy, xx = np.meshgrid(np.linspace(-1, 1, shape[-2]), np.linspace(-1, 1, shape[-1]), indexing="ij")
    image *= 1.0 - 0.12 * (yy**2 + xx**2)
    image += _smooth(rng.standard_normal(shape), 0.7) * 7000.0
    return np.clip(image, 0, 65535).astype(np.uint16), labels


def write_sample(
    out: str | Path, seed: int = 0, *, slices: int = 12, size: int = 192, schism: bool = False
) -> SampleFiles:
    """Write a SCHISM-layout dataset and test data under ``out`` (which must be new or empty).

    ``schism``: what the original SCHISM reads too, so both programs can be compared on it: 8-bit
    images, every mask in gray levels (0/128/255), an INI with only SCHISM's keys, and the test
    stack as 2D slices in SCHISM's inference layout (``schism_test/rock_test/{images,masks}``).
    """
    import tifffile

    from .data.io import gray_levels
    from .plumbing.atomic import atomic_write, atomic_write_text
    from .runs import prepare_run_dir

    levels = gray_levels(len(CLASS_NAMES)).astype(np.uint8)
    image_of = to_8bit if schism else (lambda image: image)
    mask_of = (lambda labels: levels[labels]) if schism else (lambda labels: labels)

    root = prepare_run_dir(Path(out))
    datasets = root / "datasets"

    def save(path: Path, array: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p: tifffile.imwrite(p, array, photometric="minisblack", compression="zlib"))

    # Two scans with different seeds; rock_b's masks use SCHISM's spread gray levels (0, 128, 255).
    for index, name in enumerate(("rock_a", "rock_b")):
        volume, labels = make_rock((slices, size, size), seed=seed + index)
        for z in range(slices):
            save(datasets / name / "images" / f"slice_{z:03d}.tif", image_of(volume[z]))
            mask = mask_of(labels[z]) if name == "rock_a" else np.round(labels[z] * 127.5).astype(np.uint8)
            save(datasets / name / "masks" / f"slice_{z:03d}.tif", mask)
    class_dict = "name,r,g,b\n" + "".join(
        f"{n},{r},{g},{b}\n" for n, (r, g, b) in zip(CLASS_NAMES, CLASS_COLORS, strict=True)
    )
    atomic_write_text(datasets / "class_dict.csv", class_dict)

    volume, volume_labels = make_rock((slices, size, size), seed=seed + 10)
    save(root / "test_volume.tif", image_of(volume))
    save(root / "test_volume_labels.tif", mask_of(volume_labels))
    image_2d, image_2d_labels = make_rock((size + 45, size + 131), seed=seed + 11)
    save(root / "test_image_2d.tif", image_of(image_2d))
    save(root / "test_image_2d_labels.tif", mask_of(image_2d_labels))
    schism_test = None
    if schism:  # SCHISM reads 2D images only: the test stack slice by slice, in its inference layout
        schism_test = root / "schism_test"
        for z in range(slices):
            save(schism_test / "rock_test" / "images" / f"slice_{z:03d}.tif", image_of(volume[z]))
            save(schism_test / "rock_test" / "masks" / f"slice_{z:03d}.tif", mask_of(volume_labels[z]))
    config = root / "schism_sample.ini"
    atomic_write_text(config, SCHISM_SAMPLE_INI if schism else SAMPLE_INI)
    return SampleFiles(
        root,
        datasets,
        config,
        root / "test_volume.tif",
        root / "test_volume_labels.tif",
        root / "test_image_2d.tif",
        root / "test_image_2d_labels.tif",
        schism_test,
    )


SAMPLE_INI = """\
# A small configuration that trains in about a minute on a laptop CPU.
[Model]
model_type = UnetConcat
num_classes = 3
n_block = 3
channels = 8
k_size = 3
activation = leakyrelu
p = 0.1

[Optimizer]
optimizer = AdamW
lr = 0.01

[Scheduler]
scheduler = OneCycleLR

[Loss]
loss = CrossEntropyLoss + 0.5*DiceLoss

[Training]
batch_size = 8
epochs = 6
val_split = 0.8
metrics = Jaccard, Dice, ConfusionMatrix

[Data]
crop_size = 96
img_res = 96
num_samples = 20
crops_per_image = 2

[Inference]
tile_size = 128
overlap = 0.25
batch_size = 8
"""


# The same small run with only what the original SCHISM understands (its losses, metric names
# and scheduler, no [Inference]); ConstantLR with factor 1 keeps SCHISM's per-batch stepping harmless.
SCHISM_SAMPLE_INI = """\
[Model]
model_type = UnetSegmentor
num_classes = 3
n_block = 3
channels = 8
k_size = 3
activation = leakyrelu
p = 0.1

[Optimizer]
optimizer = AdamW
lr = 0.01

[Scheduler]
scheduler = ConstantLR
factor = 1.0

[Loss]
loss = CrossEntropyLoss
ignore_background = False
weights = False

[Training]
batch_size = 8
epochs = 6
val_split = 0.8
metrics = Jaccard, F1
early_stopping = False

[Data]
crop_size = 96
img_res = 96
num_samples = 20
"""


def scribbles(
    labels: np.ndarray, slices: tuple[int, ...] = (0,), strokes_per_class: int = 6, seed: int = 0
) -> np.ndarray:
    """napari Labels (class k painted as k + 1, 0 unpainted) with short strokes inside each class,
    as a user would paint them: a few percent of the pixels of a few slices."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    volume = labels if labels.ndim == 3 else labels[np.newaxis]
    painted = np.zeros(volume.shape, dtype=np.uint8)
    for z in slices:
        plane = volume[z]
        interior = np.ones(plane.shape, dtype=bool)
        for shift, axis in ((2, 0), (-2, 0), (2, 1), (-2, 1)):
            interior &= np.roll(plane, shift, axis=axis) == plane
        for k in np.unique(plane):
            candidates = np.argwhere(interior & (plane == k))
            thin = candidates.size == 0  # a phase thinner than 5 px: strokes along it, on it
            if thin:
                candidates = np.argwhere(plane == k)
            if candidates.size == 0:
                continue
            for y, x in candidates[rng.choice(len(candidates), min(strokes_per_class, len(candidates)), replace=False)]:
                angle = rng.uniform(0, np.pi)
                for step in range(-8, 9):
                    for width in (-1, 0, 1):
                        yy = round(y + step * np.sin(angle) + width * np.cos(angle))
                        xx = round(x + step * np.cos(angle) - width * np.sin(angle))
                        if (
                            0 <= yy < plane.shape[0]
                            and 0 <= xx < plane.shape[1]
                            and (interior[yy, xx] or thin)
                            and plane[yy, xx] == k
                        ):
                            painted[z, yy, xx] = k + 1
    return painted if labels.ndim == 3 else painted[0]
