"""Videos: lazy frame reading, frame-by-frame prediction from the CLI, overlay videos with class colours."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import tifffile

av = pytest.importorskip("av")

from schism_napari.cli import main  # noqa: E402
from schism_napari.data.video import VideoFrames, overlay_frame, write_overlay  # noqa: E402
from schism_napari.errors import DataError  # noqa: E402
from schism_napari.inference import Predictor  # noqa: E402
from schism_napari.runs import load_trained_model  # noqa: E402
from schism_napari.sample import make_rock  # noqa: E402

RATE = 10


def write_clip(path, frames: int = 7, size=(64, 80), rate: int = RATE) -> None:
    """A small H.264 clip of the synthetic rock, moving a little each frame (gray as RGB)."""
    image, _ = make_rock((size[0], size[1] + 2 * frames), seed=3)
    gray = (image.astype(np.float32) / 65535 * 255).astype(np.uint8)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[1], size[0], "yuv420p"
        stream.options = {"crf": "10"}
        for t in range(frames):
            frame = np.repeat(gray[:, 2 * t : 2 * t + size[1], None], 3, axis=2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def decode_all(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_clip(path)
    return path


def test_frames_are_read_lazily_in_order_and_on_demand(clip):
    decoded = decode_all(clip)
    frames = VideoFrames(clip)
    assert frames.shape == (7, 64, 80, 3) and frames.dtype == np.uint8 and frames.frame_rate == RATE
    for t in (0, 1, 2, 5):
        np.testing.assert_array_equal(frames[t], decoded[t])
    np.testing.assert_array_equal(frames[1], decoded[1])  # backwards: re-opened and decoded again
    sampled = VideoFrames(clip, max_frames=3, every=2)
    assert len(sampled) == 3 and sampled.frame_rate == Fraction(RATE, 2)
    for t in range(3):
        np.testing.assert_array_equal(sampled[t], decoded[2 * t])
    with pytest.raises(IndexError):
        sampled[3]


def test_not_a_video_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(DataError, match=r"bad\.mp4: cannot read as a video"):
        VideoFrames(bad)


def test_a_video_stack_predicts_frame_by_frame(trained_run, clip):
    """(T, Y, X, C) arrays (a video layer in napari) go through the Predictor frame by frame."""
    predictor = Predictor.from_trained(load_trained_model(trained_run), device="cpu")
    frames = np.stack(list(VideoFrames(clip, max_frames=3)))
    stacked = predictor.predict(frames, rgb=True).labels
    assert stacked.shape == (3, 64, 80)
    for t in range(3):
        np.testing.assert_array_equal(stacked[t], predictor.predict(frames[t], rgb=True).labels)


def test_overlay_blends_class_colours():
    frame = np.full((4, 6, 3), 100, np.uint8)
    labels = np.array([[0, 1, 2, 0, 1, 2]] * 4)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    blended = overlay_frame(frame, labels, colours, 0.5)
    np.testing.assert_array_equal(blended[0, 0], [178, 50, 50])
    np.testing.assert_array_equal(blended[0, 1], [50, 178, 50])
    np.testing.assert_array_equal(blended[0, 2], [50, 50, 178])


def test_cli_predicts_a_video_and_writes_an_overlay(trained_run, clip, tmp_path):
    out, overlay = tmp_path / "out", tmp_path / "overlay.mp4"
    assert main(["predict", "--weights", str(trained_run), "--input", str(clip), "--out", str(out),
                 "--max-frames", "3", "--every", "2", "--overlay", str(overlay)]) == 0  # fmt: skip
    labels = tifffile.imread(out / "clip_labels.tif")
    assert labels.shape == (3, 64, 80)
    trained = load_trained_model(trained_run)
    predictor = Predictor.from_trained(trained, device="cpu")
    decoded = decode_all(clip)
    for t in range(3):  # frames 0, 2, 4 of the clip, each predicted as one image
        np.testing.assert_array_equal(labels[t], predictor.predict(decoded[2 * t], rgb=True).labels)
    with av.open(str(overlay)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == Fraction(RATE, 2)  # the sampled sequence's rate
        shown = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    assert len(shown) == 3
    colours = np.asarray(trained.class_colors or [(50, 90, 220), (90, 190, 110), (240, 190, 40)], np.float32)
    expected = overlay_frame(decoded[2], labels[1], colours, 0.5).astype(np.float32)
    frame = shown[1].astype(np.float32)
    assert np.abs(frame - expected).mean() < 6  # lossy H.264, but the same picture
    # each class's pixels show that class's colour tint: the nearest expected blend is their own
    for k in np.unique(labels[1]):
        inside = labels[1] == k
        if inside.sum() < 200:
            continue
        tint = (frame[inside] - 0.5 * decoded[2][inside]).mean(axis=0) / 0.5
        assert np.argmin(np.abs(colours - tint).sum(axis=1)) == k
    # never overwritten
    assert main(["predict", "--weights", str(trained_run), "--input", str(clip), "--out", str(tmp_path / "o2"),
                 "--overlay", str(overlay)]) == 2  # fmt: skip


def test_video_options_need_a_video(trained_run, sample_files, tmp_path):
    assert main(["predict", "--weights", str(trained_run), "--input", str(sample_files.volume),
                 "--out", str(tmp_path / "o"), "--every", "2"]) == 2  # fmt: skip


def test_write_overlay_pads_odd_sizes(clip, tmp_path):
    frames = VideoFrames(clip, max_frames=2)
    cropped = _Cropped(frames)
    path = write_overlay(cropped, np.zeros((2, 63, 79), np.uint8), tmp_path / "o.mp4", colors=[(255, 0, 0)])
    assert decode_all(path)[0].shape == (64, 80, 3)


class _Cropped:
    def __init__(self, frames):
        self.frames, self.count, self.height, self.width = frames, frames.count, 63, 79
        self.frame_rate = frames.frame_rate

    def __getitem__(self, t):
        return self.frames[t][:63, :79]
