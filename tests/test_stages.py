"""Two stages: the forest's out-of-fold probabilities as the network's extra inputs, a network that
starts where the forest is, run folders that load and predict both stages, and exports that say
where stage 1 went."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from conftest import TINY_INI
from schism_napari.cli import main
from schism_napari.config import SchismConfig
from schism_napari.data import samples_from_arrays
from schism_napari.data.io import IGNORE
from schism_napari.data.labels import labels_to_mask
from schism_napari.errors import SchismError
from schism_napari.forest.classifier import PixelClassifier
from schism_napari.forest.selection import hold_out
from schism_napari.forest.stages import SEED, STAGE_ONE_FILE, TREES, StageOne, stage_one_positions, stage_two_data
from schism_napari.inference import Predictor
from schism_napari.models.two_stage import ForestPrior
from schism_napari.runs import load_trained_model, read_run_info
from schism_napari.sample import make_rock, scribbles
from schism_napari.training.trainer import Trainer


@pytest.fixture(scope="module")
def painted():
    """Scribbles on three slices of a synthetic rock (three painted samples), and the truth."""
    volume, truth = make_rock((3, 96, 96), seed=11)
    mask = labels_to_mask(scribbles(truth, slices=(0, 1, 2), strokes_per_class=6), 3)
    data = samples_from_arrays([volume], [mask], class_count=3, skip_unlabeled=True)
    return data, truth


def confidence_on_own_labels(data, maps) -> float:
    """Mean probability of the painted class on the painted pixels."""
    values = []
    for sample, probabilities in zip(data.samples, maps, strict=True):
        labelled = sample.mask != IGNORE
        classes = sample.mask[labelled].astype(np.int64)
        values.append(np.take_along_axis(probabilities[:, labelled], classes[None], axis=0)[0])
    return float(np.concatenate(values).mean())


def decoded(stage_one: StageOne, staged_image: np.ndarray) -> np.ndarray:
    high = np.iinfo(staged_image.dtype).max
    part = staged_image[..., stage_one.image_channels :].astype(np.float32) / high
    return np.moveaxis(part, -1, 0)


def test_training_images_get_out_of_fold_probabilities(painted):
    data, _ = painted
    staged, stage_one = stage_two_data(data, [0, 1, 2])
    assert staged.in_channels == 4 and stage_one.network_channels == 4  # gray + 3 classes
    for before, after in zip(data.samples, staged.samples, strict=True):
        assert after.image.dtype == before.image.dtype and after.image.shape == (*before.image.shape[:2], 4)
        np.testing.assert_array_equal(after.image[..., :1], before.image)
        np.testing.assert_allclose(decoded(stage_one, after.image).sum(0), 1.0, atol=0.02)
    # each image's map is the prediction of a forest fitted on the two others, not on itself
    for position in range(3):
        others = [p for p in range(3) if p != position]
        forest = PixelClassifier("forest", class_count=3, trees=TREES, seed=SEED).fit(
            [data.samples[p].image for p in others], [data.samples[p].mask for p in others]
        )
        expected = forest.predict_proba(data.samples[position].image)
        np.testing.assert_allclose(decoded(stage_one, staged.samples[position].image), expected, atol=1e-4)
    # the full forest is surer of the pixels it was fitted on than the maps the network learns from
    full = [stage_one.probabilities(s.image) for s in data.samples]
    out_of_fold = [decoded(stage_one, s.image) for s in staged.samples]
    assert confidence_on_own_labels(data, out_of_fold) < confidence_on_own_labels(data, full) - 0.01
    # normalised, the probability channels are the probabilities: mean 0, std 1 in unit units
    dtype = staged.samples[0].image.dtype
    a, b = staged.normalization("default").affine(dtype, 4)
    np.testing.assert_allclose(a[1:], 1 / np.iinfo(dtype).max, rtol=1e-6)
    np.testing.assert_allclose(b[1:], 0.0, atol=1e-7)


def test_one_painted_image_folds_in_blocks(painted):
    data, _ = painted
    single = samples_from_arrays([data.samples[0].image[..., 0]], [data.samples[0].mask], class_count=3)
    staged, stage_one = stage_two_data(single, [0])
    out_of_fold = [decoded(stage_one, staged.samples[0].image)]
    full = [stage_one.probabilities(single.samples[0].image)]
    assert confidence_on_own_labels(single, out_of_fold) < confidence_on_own_labels(single, full) - 0.01


def test_an_untrained_second_stage_predicts_what_the_forest_does(painted, tiny_config):
    from schism_napari.models import build_model

    data, _ = painted
    _, stage_one = stage_two_data(data, [0, 1, 2])
    network = build_model(tiny_config.model, stage_one.network_channels)
    model = ForestPrior(network, 1, 3).eval()
    predictor = Predictor(
        model,
        class_count=3,
        in_channels=1,
        normalization=data.normalization("default"),
        device="cpu",
        stage_one=stage_one,
    )
    image = data.samples[1].image[..., 0]
    predicted = predictor.predict(image).probabilities
    forest = stage_one.probabilities(image[..., None])
    # equal up to the probabilities' 8-bit encoding and the prior's floor
    assert np.mean(predicted.argmax(0) == forest.argmax(0)) > 0.99
    np.testing.assert_allclose(predicted, forest, atol=0.02)


@pytest.fixture(scope="module")
def two_stage_run(painted, tmp_path_factory):
    data, _ = painted
    config = SchismConfig.from_ini_string(TINY_INI, source="tiny.ini")
    config.training.epochs = 2
    training, held = hold_out(data, [0, 1, 2])
    run_dir = tmp_path_factory.mktemp("runs") / "two"
    result = Trainer(config, training, run_dir, forest_positions=stage_one_positions(held)).run()
    return run_dir, result, data


def test_a_two_stage_run_folder_loads_and_predicts_as_one_model(two_stage_run, tmp_path):
    run_dir, result, data = two_stage_run
    assert result.stage_one is not None and isinstance(result.model, ForestPrior)
    info = read_run_info(run_dir)
    assert info["stage_one"] == {"kind": "forest", "file": STAGE_ONE_FILE, "classes": 3, "image_channels": 1}
    assert info["in_channels"] == 1 and (run_dir / STAGE_ONE_FILE).is_file()
    stats = json.loads((run_dir / "data_stats.json").read_text())
    assert stats["default"] == data.normalization("default").to_json()  # the image's: no probability channels
    trained = load_trained_model(run_dir)
    assert isinstance(trained.model, ForestPrior) and trained.in_channels == 1
    image = data.samples[0].image[..., 0]
    from_folder = Predictor.from_trained(trained, device="cpu").predict(image).probabilities
    in_memory = (
        Predictor(
            result.model,
            class_count=3,
            in_channels=1,
            normalization=data.normalization("default"),
            device="cpu",
            stage_one=result.stage_one,
            settings=trained.config.inference,
            scale=trained.config.scale,
            tile_size=trained.config.tile_size if trained.config.inference.overlap is not None else None,
        )
        .predict(image)
        .probabilities
    )
    np.testing.assert_allclose(from_folder, in_memory, atol=1e-4)  # the forest refitted from its pixels: the same

    image_file = tmp_path / "slice.tif"
    tifffile.imwrite(image_file, image)
    out = tmp_path / "predicted"
    assert main(["predict", "--weights", str(run_dir), "--input", str(image_file), "--out", str(out)]) == 0
    (written,) = list(out.rglob("*.tif"))
    assert np.mean(tifffile.imread(written) == from_folder.argmax(0)) > 0.999


def test_a_two_stage_export_carries_stage_two_and_says_where_stage_one_is(two_stage_run, tmp_path, capsys):
    run_dir, _, _ = two_stage_run
    out = tmp_path / "model.pt"
    assert main(["export", "--weights", str(run_dir), "--format", "torchscript", "--out", str(out)]) == 0
    assert f"random forest in {run_dir}/{STAGE_ONE_FILE}" in capsys.readouterr().err
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["input"]["channels"] == 4 and STAGE_ONE_FILE in sidecar["stage_one"]
    scripted = torch.jit.load(str(out))
    assert scripted(torch.zeros(1, 4, 64, 64)).shape == (1, 3, 64, 64)
    with pytest.raises(SchismError, match=r"two-stage model .* cannot be a bioimage\.io package"):
        from schism_napari.runs.export import export_model

        export_model(run_dir, "bioimageio", tmp_path / "model.zip")


def test_dense_masks_train_one_stage(painted):
    volume, truth = make_rock((3, 64, 64), seed=2)
    dense = samples_from_arrays([volume], [truth.astype(np.uint8)], class_count=3)
    _, held = hold_out(dense, [0, 1], [2])
    assert stage_one_positions(held) is None
    data, _ = painted
    _, held = hold_out(data, [0, 1, 2])
    assert stage_one_positions(held) == held.forest_positions


def test_fine_tuning_a_two_stage_model_keeps_two_stages(two_stage_run, painted, tmp_path):
    """Corrections can make the labels dense; the network the session had still reads the forest."""
    _, result, _ = two_stage_run
    _, truth = painted
    volume, _ = make_rock((3, 96, 96), seed=11)
    dense = samples_from_arrays([volume], [truth.astype(np.uint8)], class_count=3)
    config = SchismConfig.from_ini_string(TINY_INI, source="tiny.ini")
    config.training.epochs = 1
    weights = {k: v.clone() for k, v in result.model.state_dict().items()}
    again = Trainer(config, dense, tmp_path / "again", initial_weights=weights).run()
    assert again.stage_one is not None and isinstance(again.model, ForestPrior)
    assert read_run_info(tmp_path / "again")["stage_one"]["classes"] == 3
    plain = Trainer(config, dense, tmp_path / "plain").run()  # dense masks, no starting weights: one stage
    assert plain.stage_one is None and not isinstance(plain.model, ForestPrior)


def test_both_stages_predict_on_every_path(two_stage_run, tmp_path):
    """Tri-planar consensus and a dask cluster run stage 1 on each plane they predict."""
    import zarr

    from schism_napari.config import InferenceConfig
    from schism_napari.inference.distributed import predict_distributed
    from schism_napari.inference.planes import TriPlanarPredictor

    distributed = pytest.importorskip("distributed")
    run_dir, _, _ = two_stage_run
    stack, _ = make_rock((6, 64, 64), seed=4)
    trained = load_trained_model(run_dir)
    settings = InferenceConfig(tile_size=64, overlap=None, halo=16, batch_size=4)
    base = Predictor.from_trained(trained, settings=settings, device="cpu")
    expected = base.predict(stack)
    tri = TriPlanarPredictor(base).predict(stack)
    assert tri.probabilities.shape == expected.probabilities.shape
    np.testing.assert_allclose(tri.probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert np.mean(tri.labels == expected.labels) > 0.8  # three views of the same rock mostly agree

    volume = tmp_path / "stack.tif"
    tifffile.imwrite(volume, stack)
    cluster = distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=":0")
    with cluster, distributed.Client(cluster) as client:
        predict_distributed(
            run_dir, volume, tmp_path / "labels.ome.zarr", settings=settings, chunk_slices=2, client=client
        )
    labels = zarr.open_group(str(tmp_path / "labels.ome.zarr"), mode="r")["0"][:]
    np.testing.assert_array_equal(labels, expected.labels)


def test_a_resumed_run_keeps_the_stages_it_started_with(two_stage_run, painted, tmp_path):
    import shutil

    run_dir, _, data = two_stage_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    config = SchismConfig.from_ini_string(TINY_INI, source="tiny.ini")
    config.training.epochs = 3
    training, _ = hold_out(data, [0, 1, 2])
    resumed = Trainer(config, training, copy, resume=True).run()  # no forest positions given: the run folder says
    assert resumed.stage_one is not None and resumed.epochs_completed == 3


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32])
def test_probabilities_survive_the_encoding_of_every_dtype(painted, dtype):
    data, _ = painted
    stage_one = StageOne(stage_two_data(data, [0, 1, 2])[1].forest, 1)
    plane = (np.random.default_rng(0).random((16, 16, 1)) * 200).astype(dtype)
    probabilities = np.random.default_rng(1).dirichlet(np.ones(3), size=(16, 16)).transpose(2, 0, 1)
    encoded = stage_one.encode(plane, probabilities.astype(np.float32))
    from schism_napari.inference.predictor import StagedSlices

    decoded_back = StagedSlices.stage_one_part(encoded, stage_one)
    np.testing.assert_allclose(decoded_back, probabilities, atol=0.5 / 255 + 1e-6)  # 8 bits at worst
    np.testing.assert_array_equal(encoded[..., :1].astype(np.float64), plane.astype(np.float64))
