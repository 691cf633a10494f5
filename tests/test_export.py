"""Exports: ONNX (onnxruntime) and TorchScript match torch within 1e-4; the bioimage.io package
passes bioimageio.core's own model test. Tiny models, offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from schism_napari.cli import main
from schism_napari.config import ModelConfig, SchismConfig
from schism_napari.models import build_model
from schism_napari.runs import HYPERPARAMETERS, load_trained_model, save_weights
from schism_napari.runs.export import TOLERANCE, exportable

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCHISM_RUN = Path(__file__).parent / "data" / "schism" / "runs" / "UnetSegmentor"


@pytest.fixture
def concat_run(tmp_path) -> Path:
    """A run folder of this project: gray 16-bit data, UnetConcat, two classes (binary)."""
    run = tmp_path / "run"
    run.mkdir()
    config = SchismConfig()
    config.model = ModelConfig(model_type="UnetConcat", num_classes=2, n_block=2, channels=4)
    torch.manual_seed(0)
    save_weights(run / "model_best_loss.pth", build_model(config.model, 1).state_dict())
    config.to_ini(run / HYPERPARAMETERS)
    (run / "data_stats.json").write_text('{"default": [[0.4], [0.1]]}')
    (run / "run_info.json").write_text(json.dumps({"in_channels": 1, "input_dtypes": ["uint16"]}))
    return run


def _reference(run: Path, metric: str, raw: np.ndarray) -> np.ndarray:
    item = exportable(load_trained_model(run, metric))
    with torch.no_grad():
        return item.module(torch.from_numpy(item.normalise(raw))).numpy()


@pytest.mark.parametrize("which", ["schism", "concat"])
def test_onnx_and_torchscript_match_torch(which, concat_run, tmp_path):
    import onnxruntime

    run, metric = (SCHISM_RUN, "Jaccard") if which == "schism" else (concat_run, "loss")
    onnx_path, script_path = tmp_path / "model.onnx", tmp_path / "model.pt"
    for fmt, path in (("onnx", onnx_path), ("torchscript", script_path)):
        assert main(["export", "--weights", str(run), "--format", fmt, "--out", str(path), "--metric", metric]) == 0
        sidecar = json.loads(path.with_name(path.name + ".json").read_text())
        assert sidecar["input"]["raw_dtype"] == ("uint8" if which == "schism" else "uint16")
    item = exportable(load_trained_model(run, metric))
    raw = item.example(side=48, seed=3)  # a size and image neither export was traced with
    expected = _reference(run, metric, raw)
    assert expected.shape[1] == (3 if which == "schism" else 1)
    gain, offset = np.asarray(sidecar["input"]["gain"]), np.asarray(sidecar["input"]["offset"])
    network_input = (raw * gain[None, :, None, None] + offset[None, :, None, None]).astype(np.float32)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: network_input})[0]
    assert np.abs(got - expected).max() <= TOLERANCE
    scripted = torch.jit.load(str(script_path))
    assert np.abs(scripted(torch.from_numpy(network_input)).detach().numpy() - expected).max() <= TOLERANCE
    # never overwritten
    assert main(["export", "--weights", str(run), "--format", "onnx", "--out", str(onnx_path), "--metric", metric]) == 2


def test_bioimageio_package_passes_bioimageio_core_test(tmp_path):
    import zipfile

    from schism_napari.runs.export import check_bioimageio

    run = tmp_path / "schism_out"
    shutil.copytree(SCHISM_RUN, run)
    package = tmp_path / "model.zip"
    assert main(["export", "--weights", str(run), "--format", "bioimageio", "--out", str(package)]) == 0
    names = zipfile.ZipFile(package).namelist()
    for expected in ("rdf.yaml", "weights.pt", "weights_torchscript.pt", "architecture.py", "cover.png", "README.md"):
        assert expected in names, names
    rdf = zipfile.ZipFile(package).read("rdf.yaml").decode()
    assert "format_version: 0.5" in rdf and "scale_linear" in rdf and "class_0" in rdf
    summary = check_bioimageio(package)
    assert summary.status == "passed", summary
    broken = tmp_path / "broken.zip"  # the test can fail: a package whose test output is wrong
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(broken, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name == "test_output.npy":
                buffer = __import__("io").BytesIO()
                np.save(buffer, np.load(__import__("io").BytesIO(data)) + 0.5)
                data = buffer.getvalue()
            target.writestr(name, data)
    assert check_bioimageio(broken).status != "passed"


def test_bioimageio_package_of_an_smp_network_ships_torchscript_and_passes(tmp_path):
    """smp's code cannot travel in a package: the smp U-Net (the planned default) leaves as TorchScript."""
    import zipfile

    from schism_napari.runs.export import check_bioimageio

    run = tmp_path / "run"
    run.mkdir()
    config = SchismConfig()
    config.model = ModelConfig(model_type="Unet", encoder="resnet18", num_classes=3)
    torch.manual_seed(0)
    save_weights(run / "model_best_loss.pth", build_model(config.model, 1).state_dict())
    config.to_ini(run / HYPERPARAMETERS)
    (run / "data_stats.json").write_text('{"default": [[0.4], [0.1]]}')
    (run / "run_info.json").write_text(json.dumps({"in_channels": 1, "input_dtypes": ["uint8"]}))
    package = tmp_path / "unet.zip"
    assert main(["export", "--weights", str(run), "--format", "bioimageio", "--out", str(package)]) == 0
    names = zipfile.ZipFile(package).namelist()
    assert "weights_torchscript.pt" in names and "weights.pt" not in names and "architecture.py" not in names
    assert check_bioimageio(package).status == "passed"


def test_unknown_format_and_missing_package_are_one_line_errors(tmp_path, monkeypatch):
    import sys

    from schism_napari.errors import SchismError
    from schism_napari.runs.export import export_model

    with pytest.raises(SchismError, match="not one of bioimageio, onnx, torchscript"):
        export_model(SCHISM_RUN, "keras", tmp_path / "m.h5", metric="Jaccard")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: importing it fails
    with pytest.raises(SchismError, match=r"schism-napari\[export\]"):
        export_model(SCHISM_RUN, "onnx", tmp_path / "m.onnx", metric="Jaccard")
    assert not (tmp_path / "m.onnx").exists()
