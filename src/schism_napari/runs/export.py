"""Trained models out, in the formats other tools read: bioimage.io packages, ONNX, TorchScript.

What is exported is the network with its output activation (softmax over classes, or a sigmoid
for binary models), so every format gives class probabilities for a *normalised* input at the
network's scale. The normalisation is part of the bioimage.io package as preprocessing (a linear
scaling of the raw intensities, per channel) so ilastik, deepImageJ, QuPath and BiaPy apply it
themselves; ONNX and TorchScript files get a JSON sidecar with the same numbers, the class names
and the resize factor (img_res / crop_size). Each export is checked before it is kept: ONNX
(onnxruntime) and TorchScript outputs must match torch within 1e-4; a bioimage.io package is
written as a zip that bioimageio.core's own model test passes (``check_bioimageio``).

A two-stage model (:mod:`schism_napari.forest.stages`) leaves as its second stage: ONNX and TorchScript
carry the network, whose input is the image's channels then the K class probabilities of stage 1;
stage 1 (a scikit-learn random forest on multiscale filter features) is not in them, and stays in
the run folder's ``stage_one.npz``, as the sidecar says. A bioimage.io package would run without
stage 1, so it is refused.
"""

from __future__ import annotations

import inspect
import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import SchismError
from ..plumbing.atomic import atomic_path, atomic_write_text
from ..plumbing.weights_io import save_torch_file
from . import TrainedModel, load_trained_model

FORMATS = ("bioimageio", "onnx", "torchscript")
TOLERANCE = 1e-4


class Probabilities(nn.Module):
    """A network followed by its output activation: what every export computes."""

    def __init__(self, network: nn.Module, binary: bool):
        super().__init__()
        self.network, self.binary = network, binary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x)
        return torch.sigmoid(logits) if self.binary else torch.softmax(logits, dim=1)


@dataclass
class Exportable:
    """The parts of a trained model an export needs."""

    module: Probabilities
    trained: TrainedModel
    divisor: int
    scale: float  # network pixels per image pixel: resize inputs by this before the network
    input_dtype: str  # the raw data the normalisation was made for

    @property
    def channel_names(self) -> list[str]:
        names = self.trained.class_names
        return [names[-1]] if self.module.binary else list(names)

    @property
    def stage_one(self) -> Any:
        return getattr(self.trained, "stage_one", None)

    @property
    def channels(self) -> int:
        """The network's input channels: the image's, then stage 1's probabilities if it has two stages."""
        return self.trained.in_channels if self.stage_one is None else self.stage_one.network_channels

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel gain and offset: raw intensity * gain + offset = network input."""
        normalization = self.trained.normalization
        if self.stage_one is not None:
            normalization = self.stage_one.network_normalization(normalization)
        return normalization.affine(np.dtype(self.input_dtype), self.channels)

    def example(self, side: int | None = None, seed: int = 0) -> np.ndarray:
        """A raw test image (1, C, side, side) float32: the synthetic rock CT in the input's range."""
        from ..sample import make_rock, to_8bit

        side = side or max(self.divisor, 64 // self.divisor * self.divisor)
        image, _ = make_rock((side, side), seed=seed)
        if self.input_dtype == "uint8":
            image = to_8bit(image)
        elif self.input_dtype not in ("uint16",):
            image = image / 65535.0
        raw = np.repeat(image[None, None].astype(np.float32), self.trained.in_channels, axis=1)
        if self.stage_one is not None:  # and stage 1's probabilities, in the raw units
            plane = np.moveaxis(raw[0], 0, -1).astype(self.input_dtype)
            raw = np.moveaxis(self.stage_one.encode(plane), -1, 0)[None].astype(np.float32)
        return raw

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        gain, offset = self.affine()
        return (raw * gain[None, :, None, None] + offset[None, :, None, None]).astype(np.float32)


def exportable(trained: TrainedModel) -> Exportable:
    """The bare network of a run (a SCHISM run's network without its resizing wrapper)."""
    from ..models import size_divisor
    from .schism import SchismInput

    network, scale = trained.model, trained.config.scale
    if isinstance(network, SchismInput):
        scale = network.img_res / network.crop_size  # the wrapper's sizes, read before unwrapping
        network = network.network
    network = network.cpu().eval()
    module = Probabilities(network, trained.config.model.binary).eval()
    dtype = "uint8" if isinstance(trained.model, SchismInput) else _input_dtype(trained)  # SCHISM reads 8-bit
    return Exportable(module, trained, size_divisor(network), scale, dtype)


def _input_dtype(trained: TrainedModel) -> str:
    """The dtype of the training images (run_info.json), which the normalisation's units depend on."""
    from . import read_run_info

    info = read_run_info(trained.run_dir) if trained.run_dir is not None else {}
    return str((info.get("input_dtypes") or ["uint8"])[0])


def _require(module: str, fmt: str) -> None:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise SchismError(f"--format {fmt} needs {module}: pip install 'schism-napari[export]'") from None


def export_model(run_dir: str | Path, fmt: str, out: str | Path, *, metric: str = "loss") -> Path:
    """Export the checkpoint ``metric`` of a run folder (this project's or SCHISM's) to ``out``."""
    if fmt not in FORMATS:
        raise SchismError(f"--format {fmt}: not one of {', '.join(FORMATS)}")
    for module in {"onnx": ("onnx", "onnxruntime"), "bioimageio": ("bioimageio.core",)}.get(fmt, ()):
        _require(module, fmt)
    out = Path(out)
    if out.exists():
        raise SchismError(f"{out} already exists; not overwriting it (choose another --out)")
    item = exportable(load_trained_model(run_dir, metric))
    if item.stage_one is not None and fmt == "bioimageio":
        raise SchismError(
            f"{run_dir}: a two-stage model (a random forest, then the network) cannot be a bioimage.io package, "
            "which would run the network without its forest; export --format onnx or torchscript (the network, "
            "with the forest's probabilities as input channels) or train with one stage"
        )
    if fmt == "onnx":
        return export_onnx(item, out)
    if fmt == "torchscript":
        return export_torchscript(item, out)
    return export_bioimageio(item, out)


def _sidecar(item: Exportable, path: Path, fmt: str) -> None:
    gain, offset = item.affine()
    info: dict[str, Any] = {
        "format": fmt,
        "source": item.trained.source,
        "architecture": item.trained.config.model.model_type,
        "input": {
            "axes": "bcyx",
            "channels": item.channels,
            "raw_dtype": item.input_dtype,
            "normalisation": "network input = raw * gain + offset, per channel",
            "gain": gain.tolist(),
            "offset": offset.tolist(),
            "resize_factor": item.scale,
            "side_multiple_of": item.divisor,
        },
        "output": {"axes": "bcyx", "activation": "sigmoid" if item.module.binary else "softmax"},
        "class_names": item.channel_names,
    }
    if item.stage_one is not None:
        image = item.stage_one.image_channels
        info["stage_one"] = (
            f"input channels {image}..{item.channels - 1} are the class probabilities of stage 1, scaled to the "
            f"raw dtype's range as the image is (0..255 for uint8; gain and offset map them back to 0..1), from a "
            f"scikit-learn random forest on multiscale filter features, which this file does not compute: it is "
            f"the run folder's {item.stage_one.describe()['file']} "
            "(schism_napari.forest.stages.StageOne.load), and schism predict runs both stages"
        )
    atomic_write_text(path.with_name(path.name + ".json"), json.dumps(info, indent=2) + "\n")


def _max_difference(expected: torch.Tensor, got: np.ndarray) -> float:
    return float(np.abs(expected.numpy() - np.asarray(got)).max())


def _check(difference: float, fmt: str, path: Path) -> None:
    if not difference <= TOLERANCE:
        raise SchismError(f"{path}: the {fmt} model differs from torch by {difference:.2e} (> {TOLERANCE:g}); not kept")


def trace(module: nn.Module, x: torch.Tensor) -> torch.jit.ScriptModule:
    """torch.jit.trace; the channel count is fixed per model, so its shape test may be frozen."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(module, x, check_trace=False)


def export_torchscript(item: Exportable, out: Path) -> Path:
    """Traced TorchScript, checked on a second input size against the torch module."""
    x = torch.from_numpy(item.normalise(item.example()))
    with torch.no_grad():
        traced = trace(item.module, x)
        other = torch.from_numpy(item.normalise(item.example(side=x.shape[-1] + item.divisor, seed=1)))
        _check(_max_difference(item.module(other), traced(other).numpy()), "TorchScript", out)
    with atomic_path(out) as temporary:
        traced.save(str(temporary))
    _sidecar(item, out, "torchscript")
    return out


def export_onnx(item: Exportable, out: Path) -> Path:
    """ONNX with dynamic batch and spatial axes, checked in onnxruntime against torch."""
    import onnxruntime

    x = torch.from_numpy(item.normalise(item.example()))
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "model.onnx"
        _onnx_export(item.module, x, path)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for test in (x, torch.from_numpy(item.normalise(item.example(side=x.shape[-1] + item.divisor, seed=1)))):
            with torch.no_grad():
                expected = item.module(test)
            _check(_max_difference(expected, session.run(None, {name: test.numpy()})[0]), "ONNX", out)
        with atomic_path(out) as temporary:
            temporary.write_bytes(path.read_bytes())
    _sidecar(item, out, "onnx")
    return out


def _onnx_export(module: nn.Module, x: torch.Tensor, path: Path) -> None:
    """TorchScript-based exporter first; torch.export (dynamo) where a newer torch has dropped it."""
    axes = {0: "batch", 2: "y", 3: "x"}
    common: dict[str, Any] = {"input_names": ["input"], "output_names": ["probabilities"]}
    legacy: dict[str, Any] = {
        "dynamic_axes": {"input": axes, "probabilities": axes},
        "opset_version": 17,
        "dynamo": False,
    }
    dims = {axis: torch.export.Dim(name) for axis, name in axes.items()}
    dynamo: dict[str, Any] = {"dynamic_shapes": (dims,), "dynamo": True, "external_data": False}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            torch.onnx.export(module, (x,), str(path), **common, **legacy)
        except Exception as error:
            try:
                torch.onnx.export(module, (x,), str(path), **common, **dynamo)
            except Exception as second:
                raise SchismError(f"{path.name}: ONNX export failed ({error}; then {second})") from None


# ---- bioimage.io --------------------------------------------------------------------------------

_ARCHITECTURE_TAIL = '''

class SchismNapariModel(nn.Module):
    """The exported network and its output activation (softmax over classes, sigmoid if binary)."""

    def __init__(self, architecture: str, binary: bool, **kwargs):
        super().__init__()
        self.network = globals()[architecture](**kwargs)
        self.binary = binary

    def forward(self, x):
        logits = self.network(x)
        return torch.sigmoid(logits) if self.binary else torch.softmax(logits, dim=1)
'''


def _architecture(item: Exportable) -> tuple[str, str, dict[str, Any]] | None:
    """(source code, class name, kwargs) of the network, self-contained (torch only); None when the
    network comes from a library (smp), whose code a package cannot carry."""
    from ..models import output_channels, schism, unet

    config = item.trained.config.model
    out = output_channels(config)
    common = {"n_block": config.n_block, "channels": config.channels, "k_size": config.k_size}
    if config.model_type == "UnetSegmentor":
        kwargs = {"num_classes": out, **common, "activation": config.activation, "p": config.p}
        return inspect.getsource(schism), "UnetSegmentor", kwargs
    if config.model_type == "UnetVanilla":
        return inspect.getsource(schism), "UnetVanilla", {"num_classes": out, **common, "activation": config.activation}
    if config.model_type == "UnetConcat":
        kwargs = {"in_channels": item.trained.in_channels, "out_channels": out, **common}
        return inspect.getsource(unet), "UNet", {**kwargs, "activation": config.activation, "p": config.p}
    return None  # smp architectures: their source is a library, so the package ships TorchScript alone


def export_bioimageio(item: Exportable, out: Path) -> Path:
    """A bioimage.io model package (spec 0.5, zip) with state-dict and TorchScript weights."""
    from bioimageio.core import save_bioimageio_package

    if out.suffix != ".zip":
        raise SchismError(f"--out {out}: a bioimage.io package is a .zip file")
    with tempfile.TemporaryDirectory() as scratch:
        description = _bioimageio_description(item, Path(scratch))
        with atomic_path(out) as temporary:
            save_bioimageio_package(description, output_path=temporary.with_suffix(".zip"))
            temporary.with_suffix(".zip").replace(temporary)
    return out


def _bioimageio_description(item: Exportable, folder: Path) -> Any:
    from bioimageio.spec.model import v0_5 as spec

    architecture = _architecture(item)
    if architecture is not None:
        source, callable_name, kwargs = architecture
        (folder / "architecture.py").write_text(source + _ARCHITECTURE_TAIL, encoding="utf-8")
        save_torch_file(folder / "weights.pt", item.module.state_dict())
    raw = item.example()
    with torch.no_grad():
        expected = item.module(torch.from_numpy(item.normalise(raw))).numpy()
    trace(item.module, torch.from_numpy(item.normalise(raw))).save(str(folder / "weights_torchscript.pt"))
    np.save(folder / "test_input.npy", raw)
    np.save(folder / "test_output.npy", expected)
    _write_cover(folder / "cover.png", raw, expected)
    (folder / "README.md").write_text(_documentation(item), encoding="utf-8")
    gain, offset = item.affine()
    channels = item.trained.in_channels
    input_names = ["gray"] if channels == 1 else ["red", "green", "blue"][:channels]
    space = [
        spec.SpaceInputAxis(id=spec.AxisId(a), size=spec.ParameterizedSize(min=item.divisor, step=item.divisor))
        for a in ("y", "x")
    ]
    inputs = spec.InputTensorDescr(
        id=spec.TensorId("raw"),
        description=f"raw image intensities ({item.input_dtype} range), as float32",
        axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(n) for n in input_names]), *space],
        test_tensor=spec.FileDescr(source=folder / "test_input.npy"),
        data=spec.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[
            spec.ScaleLinearDescr(
                kwargs=spec.ScaleLinearAlongAxisKwargs(
                    axis=spec.AxisId("channel"), gain=[float(v) for v in gain], offset=[float(v) for v in offset]
                )
            )
            if channels > 1
            else spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(gain=float(gain[0]), offset=float(offset[0])))
        ],
    )
    out_space = [
        spec.SpaceOutputAxis(
            id=spec.AxisId(a), size=spec.SizeReference(tensor_id=spec.TensorId("raw"), axis_id=spec.AxisId(a))
        )
        for a in ("y", "x")
    ]
    outputs = spec.OutputTensorDescr(
        id=spec.TensorId("probabilities"),
        description="class probabilities (softmax over classes; for a binary model, sigmoid of the foreground)",
        axes=[
            spec.BatchAxis(),
            spec.ChannelAxis(channel_names=[spec.Identifier(_identifier(n)) for n in item.channel_names]),
            *out_space,
        ],
        test_tensor=spec.FileDescr(source=folder / "test_output.npy"),
        data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )
    version = spec.Version(torch.__version__.split("+")[0])
    torchscript = folder / "weights_torchscript.pt"
    if architecture is None:  # an smp network: TorchScript carries the whole graph
        weights = spec.WeightsDescr(
            torchscript=spec.TorchscriptWeightsDescr(source=torchscript, pytorch_version=version)
        )
    else:
        weights = spec.WeightsDescr(
            pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
                source=folder / "weights.pt",
                architecture=spec.ArchitectureFromFileDescr(
                    source=folder / "architecture.py",
                    callable=spec.Identifier("SchismNapariModel"),
                    kwargs={"architecture": callable_name, "binary": item.module.binary, **kwargs},
                ),
                pytorch_version=version,
            ),
            torchscript=spec.TorchscriptWeightsDescr(
                source=torchscript, pytorch_version=version, parent="pytorch_state_dict"
            ),
        )
    config = item.trained.config.model
    return spec.ModelDescr(
        name=f"schism-napari {config.model_type} {len(item.trained.class_names)} classes",
        description=f"Semantic segmentation of scanned materials ({', '.join(item.trained.class_names)}), "
        f"trained with schism-napari / SCHISM ({config.model_type}).",
        authors=[spec.Author(name="schism-napari user")],
        cite=[
            spec.CiteEntry(
                text="SCHISM: semantic segmentation of scanned materials",
                url="https://github.com/FloFive/SCHISM",  # type: ignore[arg-type]  # pydantic validates str to HttpUrl
            )
        ],
        license=spec.LicenseId("MIT"),
        documentation=spec.FileDescr(source=folder / "README.md"),
        covers=[spec.FileDescr(source=folder / "cover.png")],
        tags=["segmentation", "semantic-segmentation", "2d", "pytorch", "schism", "materials-science"],
        inputs=[inputs],
        outputs=[outputs],
        weights=weights,
        # pydantic validates the dict to Config (which allows extra keys); the stubs only know Config
        config={"schism_napari": {"architecture": config.model_type, "resize_factor": item.scale}},  # type: ignore[arg-type]
    )


def _identifier(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in name.strip()) or "class"
    return cleaned if cleaned[0].isalpha() else f"c_{cleaned}"


def _write_cover(path: Path, raw: np.ndarray, probabilities: np.ndarray) -> None:
    """Input and predicted classes side by side (2:1, as bioimage.io covers are)."""
    from PIL import Image

    image = raw[0, 0]
    gray = ((image - image.min()) / max(float(np.ptp(image)), 1e-6) * 255).astype(np.uint8)
    classes = (probabilities[0, 0] > 0.5).astype(int) if probabilities.shape[1] == 1 else probabilities[0].argmax(0)
    palette = np.array([(50, 90, 220), (90, 190, 110), (240, 190, 40), (200, 60, 60), (150, 80, 200)], np.uint8)
    colored = palette[classes % len(palette)]
    both = np.concatenate([np.repeat(gray[..., None], 3, axis=2), colored], axis=1)
    Image.fromarray(both).resize((both.shape[1] * 2, both.shape[0] * 2), Image.Resampling.NEAREST).save(path)


def _documentation(item: Exportable) -> str:
    gain, offset = item.affine()
    config = item.trained.config
    return f"""# schism-napari model: {config.model.model_type}

Semantic segmentation of scanned materials (rock CT, EM, SEM), trained with
[schism-napari](https://github.com/FloFive/SCHISM) ({item.trained.source}).

- **Input** `raw`: a 2D image, axes `bcyx`, {item.trained.in_channels} channel(s), raw intensities of
  {item.input_dtype} data as float32; sides must be multiples of {item.divisor}.
- **Preprocessing** (in this package): per channel `raw * gain + offset` with gain {gain.tolist()} and
  offset {offset.tolist()} (the training data's mean and std in 0..1 units).
- **Scale**: the network was trained on images resized by {item.scale:g} (img_res / crop_size);
  resize the input by this factor first when it is not 1.
- **Output** `probabilities`: {", ".join(item.channel_names)}
  ({"sigmoid of the foreground" if item.module.binary else "softmax over the classes"}); the class is the argmax.
- **Weights**: {
        "TorchScript (the smp network's code comes with the graph)"
        if _architecture(item) is None
        else "PyTorch state dict (architecture in `architecture.py`) and TorchScript"
    }.

Validate with `bioimageio test <package.zip>`.
"""


def check_bioimageio(package: Path) -> Any:
    """Run bioimageio.core's own model test on a package; returns its ValidationSummary."""
    from bioimageio.core import test_model

    return test_model(package)
