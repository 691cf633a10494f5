"""Halo tiling, thread choice, and prediction on a dask cluster (labels identical to one process)."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from schism_napari.config import InferenceConfig, SchismConfig
from schism_napari.errors import ConfigError
from schism_napari.inference import Predictor
from schism_napari.inference.tiling import auto_halo, auto_tile_size, fit_tile, halo_starts, ramp_map
from schism_napari.plumbing import resources
from schism_napari.runs import load_trained_model

sys.path.insert(0, str(Path(__file__).parent))
import itertools

from test_inference import pointwise_predictor, random_image, reference_probabilities

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- halo tiling -------------------------------------------------------------------------------


@pytest.mark.parametrize("length,tile,halo", [(2048, 512, 64), (1000, 256, 32), (520, 512, 64), (96, 64, 16)])
def test_fitted_halo_tiles_cover_the_length_evenly(length, tile, halo):
    fitted = fit_tile(length, tile, halo, divisor=32 if tile >= 256 else 8)
    starts = halo_starts(length, fitted, halo)
    assert fitted <= tile and starts[0] == 0 and starts[-1] + fitted == length
    shared = [a + fitted - b for a, b in itertools.pairwise(starts)]
    assert all(s >= halo for s in shared)  # neighbours always share the halo
    plain = halo_starts(length, tile, halo)
    assert len(starts) == len(plain)  # no more tiles than the unfitted size needs, only smaller ones
    assert len(starts) * fitted <= len(plain) * tile


def test_a_64_px_halo_around_512_px_tiles_computes_less_than_a_quarter_overlap():
    fitted = fit_tile(2048, 512, 64, 32)
    halo_pixels = (len(halo_starts(2048, fitted, 64)) * fitted) ** 2
    quarter_pixels = (len(halo_starts(2048, 256, 64)) * 256) ** 2  # 256 px tiles, stride 192: overlap 0.25
    assert halo_pixels / 2048**2 < 1.4 < quarter_pixels / 2048**2


def test_ramp_weights_of_neighbours_sum_to_one_across_the_halo():
    tile, halo = 40, 8
    weights = ramp_map(1, tile, 0, halo)[0]
    total = np.zeros(2 * tile - halo)
    total[:tile] += weights
    total[tile - halo :] += weights
    np.testing.assert_allclose(total[halo:-halo], 1.0, rtol=1e-6)
    assert weights.min() > 0 and weights[halo:-halo].min() == 1.0


@pytest.mark.parametrize("halo", [0, 8, 24])
@pytest.mark.parametrize("shape", [(141, 227), (300, 170)])
def test_halo_tiling_is_exact_for_a_pointwise_model(shape, halo):
    predictor = pointwise_predictor(tile_size=96, overlap=None, halo=halo, batch_size=3)
    image = random_image(shape, seed=halo)
    result = predictor.predict(image)
    assert len(predictor.layout(*(-(-s // 8) * 8 for s in shape))[1]) > 1  # really tiled
    expected = reference_probabilities(predictor.model, image[..., None], predictor.normalization)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)


def test_halo_tiling_matches_whole_image_on_the_trained_model(trained_run, sample_files):
    trained = load_trained_model(trained_run)
    image = tifffile.imread(sample_files.image_2d)
    predictor = Predictor.from_trained(
        trained, settings=InferenceConfig(tile_size=64, overlap=None, halo=16), device="cpu"
    )
    assert predictor.tile_size == 64 and predictor.halo == 16
    tiled = predictor.predict(image).labels
    whole = predictor.labels_from_probabilities(predictor.predict_whole(image)[:, : image.shape[0], : image.shape[1]])
    assert (tiled == whole).mean() >= 0.995


def test_default_inference_settings_use_an_automatic_halo_and_tile():
    predictor = pointwise_predictor(tile_size=None, overlap=None)
    assert predictor.halo == auto_halo(8) == 32
    assert predictor.tile_size % 8 == 0 and 128 <= predictor.tile_size <= 1024
    assert auto_tile_size("cpu", batch_size=4, divisor=32, free_bytes=64 << 20) == 128  # little memory: small tiles
    assert auto_tile_size("cuda", batch_size=4, divisor=32, free_bytes=80 << 30) == 2048


def test_overlap_none_round_trips_and_old_inis_keep_their_fraction():
    config = SchismConfig.from_ini_string("[Inference]\nhalo = 48\n")
    assert config.inference.overlap is None and config.inference.halo == 48
    again = SchismConfig.from_ini_string(config.to_ini_string())
    assert again.inference == config.inference
    old = SchismConfig.from_ini_string("[Inference]\noverlap = 0.25\ntile_size = 128\n")
    predictor = pointwise_predictor(**{"tile_size": 128, "overlap": old.inference.overlap})
    assert predictor.layout(256, 256)[0] == (128, 128) and len(predictor.layout(256, 256)[1]) == 9
    with pytest.raises(ConfigError, match="halo"):
        SchismConfig.from_ini_string("[Inference]\nhalo = -1\n")


# ---- threads -----------------------------------------------------------------------------------


def test_cgroup_quota_caps_the_cores(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert resources.cgroup_quota(cpu_max) == 1.5
    assert resources.allowed_cores(cpu_max) <= 2
    cpu_max.write_text("max 100000\n")
    assert resources.cgroup_quota(cpu_max) is None
    assert resources.cgroup_quota(tmp_path / "missing") is None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="threads are reniced one by one on Linux only")
def test_a_worker_yields_to_the_gui_thread_and_the_gui_thread_keeps_its_priority():
    """napari's workers: the worker thread is reniced WORKER_NICE below the main (GUI) thread and the
    threads it starts inherit that; other threads (Qt's, the OpenGL driver's) and the main thread
    keep theirs (the main thread is never lowered: a process cannot raise it back)."""

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    main_nice = nice()
    assert resources.yield_to_gui() is False  # called from the main thread: nothing changes
    assert nice() == main_nice
    seen: dict = {}
    release = threading.Event()

    def bystander():
        release.wait(10)
        seen["bystander"] = nice()

    def child():
        seen["child"] = nice()

    def worker():
        seen["yielded"] = resources.yield_to_gui()
        seen["worker"] = nice()
        started = threading.Thread(target=child)
        started.start()
        started.join()
        release.set()

    threads = [threading.Thread(target=bystander), threading.Thread(target=worker)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    raised = main_nice + resources.WORKER_NICE
    assert seen == {"yielded": True, "worker": raised, "child": raised, "bystander": main_nice}
    assert nice() == main_nice


def test_threads_leave_busy_cores_and_one_for_the_gui(monkeypatch):
    monkeypatch.setattr(resources, "allowed_cores", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert resources.choose_threads(busy=0) == 8
    assert resources.choose_threads(busy=3) == 5
    assert resources.choose_threads(busy=3, leave_for_gui=True) == 4
    assert resources.choose_threads(busy=20) == 1
    assert resources.choose_threads(3, busy=7) == 3  # an explicit setting wins
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 4 processes share the node's cores
    assert resources.choose_threads(busy=0) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's explicit choice
    assert resources.choose_threads(busy=0) == 3


def _fake_task(proc, pid: int, tid: int, state: str, nice: int) -> None:
    task = proc / str(pid) / "task" / str(tid)
    task.mkdir(parents=True)
    fields = [state, "1", *(["0"] * 14), str(nice), "1"]  # state is field 3, nice field 19
    (task / "stat").write_text(f"{tid} (a (tricky) name) {' '.join(fields)}\n")


def test_busy_cores_weighs_runnable_tasks_by_priority(tmp_path):
    """A runnable task at our priority takes a core; a nice 19 one takes 1.4 % of one (it counted
    as a whole core, halving the threads of a 2-core machine beside a niced neighbour)."""
    import os

    proc = tmp_path / "proc"
    _fake_task(proc, 100, 100, "R", 0)  # a CPU-bound neighbour at our priority
    _fake_task(proc, 100, 101, "S", 0)  # its sleeping thread
    _fake_task(proc, 200, 200, "R", 19)  # a niced spinner
    _fake_task(proc, 300, 300, "R", 0)
    _fake_task(proc, os.getpid(), os.getpid(), "R", 0)  # this process itself
    assert resources.busy_cores(samples=2, interval=0, proc=proc) == 2
    niced_only = tmp_path / "niced"
    _fake_task(niced_only, 200, 200, "R", 19)
    _fake_task(niced_only, 201, 201, "R", 10)
    assert resources.busy_cores(samples=1, proc=niced_only) == 0
    assert resources.busy_cores(samples=1, proc=tmp_path / "missing") == 0


def test_a_real_niced_process_is_read_with_its_priority():
    import subprocess
    import sys
    import time
    from pathlib import Path

    spinner = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        state = resources._task_state(Path(f"/proc/{spinner.pid}/stat"))
        deadline = time.monotonic() + 10  # nice applies right after exec, which a busy machine delays
        while state is not None and state[1] != 19 and time.monotonic() < deadline:
            time.sleep(0.02)
            state = resources._task_state(Path(f"/proc/{spinner.pid}/stat"))
        assert state is not None and state[1] == 19
    finally:
        spinner.kill()
        spinner.wait()


def test_threads_setting_and_cli_option(tmp_path):
    config = SchismConfig.from_ini_string("[Training]\nthreads = 1\n")
    assert config.training.threads == 1
    with pytest.raises(ConfigError, match="threads"):
        SchismConfig.from_ini_string("[Training]\nthreads = -2\n")
    threads = torch.get_num_threads()
    try:
        assert resources.apply_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


# ---- dask --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def test_dask_prediction_matches_one_process(trained_run, sample_files, tmp_path, cluster_client):
    import zarr

    from schism_napari.inference.distributed import predict_distributed
    from schism_napari.inference.files import open_lazy

    settings = InferenceConfig(tile_size=64, overlap=None, halo=16, batch_size=4)
    trained = load_trained_model(trained_run)
    array, _ = open_lazy(Path(sample_files.volume))
    expected = Predictor.from_trained(trained, settings=settings, device="cpu").predict(array)
    result = predict_distributed(
        trained_run,
        sample_files.volume,
        tmp_path / "labels.ome.zarr",
        probabilities_path=tmp_path / "probabilities.ome.zarr",
        settings=settings,
        chunk_slices=1,
        threads=1,
        client=cluster_client,
    )
    labels = zarr.open_group(str(tmp_path / "labels.ome.zarr"), mode="r")
    np.testing.assert_array_equal(labels["0"][:], expected.labels)
    probabilities = zarr.open_group(str(tmp_path / "probabilities.ome.zarr"), mode="r")["0"][:]
    np.testing.assert_allclose(probabilities, expected.probabilities, atol=1e-5)
    axes = [a["name"] for a in labels.attrs["multiscales"][0]["axes"]]
    assert axes == ["z", "y", "x"]
    # the same OME-NGFF metadata as a one-process --zarr output: the input's voxel size as the scale
    from schism_napari.data.voxels import read_voxel_size
    from schism_napari.plumbing.input_checks import ngff_multiscales

    assert labels.attrs["multiscales"] == ngff_multiscales("labels.ome", "zyx", read_voxel_size(sample_files.volume))
    pids = {chunk["pid"] for chunk in result.chunks}
    assert len(result.chunks) == len(expected.labels) and len(pids) == 2  # both workers took chunks
    assert all(chunk["loads"] == 1 for chunk in result.chunks)  # the model loaded once per worker
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.ome.zarr", "probabilities.ome.zarr"]
    with pytest.raises(Exception, match="already exists"):
        predict_distributed(trained_run, sample_files.volume, tmp_path / "labels.ome.zarr", client=cluster_client)


def test_cli_predict_on_a_local_dask_cluster(trained_run, sample_files, tmp_path):
    import zarr

    from schism_napari.cli import main

    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--weights",
            str(trained_run),
            "--input",
            str(sample_files.volume),
            "--out",
            str(out),
            "--workers",
            "1",
            "--threads",
            "1",
            "--tile-size",
            "64",
            "--halo",
            "16",
        ]
    )
    assert code == 0
    labels = zarr.open_group(str(out / f"{Path(sample_files.volume).stem}_labels.ome.zarr"), mode="r")
    assert labels["0"].shape == tifffile.imread(sample_files.volume).shape
    assert labels["0"][:].max() <= 2
    json.dumps(labels.attrs["multiscales"])  # plain JSON metadata


def test_a_long_run_rechecks_an_automatic_thread_count(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(resources, "allowed_cores", lambda: 2)
        monkeypatch.setattr(resources, "busy_cores", lambda: 1)  # a neighbour at our priority
        assert resources.apply_threads() == 1
        assert resources.recheck_threads(every=60) is None  # too soon
        monkeypatch.setattr(resources, "busy_cores", lambda: 0)  # it ended
        assert resources.recheck_threads(every=0) == 2 and torch.get_num_threads() == 2
        assert resources.recheck_threads(every=0) is None  # nothing changed
        resources.apply_threads(1)  # the user's count is never changed
        monkeypatch.setattr(resources, "busy_cores", lambda: 1)
        assert resources.recheck_threads(every=0) is None and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
