"""Video files as frame stacks, read lazily with PyAV, and overlay videos of predictions.

A video is a ``(T, Y, X, 3)`` uint8 stack whose frames are decoded on demand, in order, so
prediction streams through a clip of any length without holding it in memory (the predictor
asks for frames in increasing order; a jump backwards re-opens the file and seeks). Live
streams (RTSP and the like) are out of scope: a clip must be a file with a known length.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError, SchismError
from .classes import DEFAULT_COLORS

if TYPE_CHECKING:
    from av.container import InputContainer
    from av.video.stream import VideoStream

    from ..plumbing.array_types import PlaneArray

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


def is_video(path: Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise SchismError("reading videos needs PyAV: pip install 'schism-napari[video]'") from None
    return av


class VideoFrames:
    """A lazy ``(T, Y, X, 3)`` uint8 view of a video file: frame ``t`` is source frame ``t * every``.

    ``max_frames`` caps T. Indexing decodes forward from the last frame read, so reading in
    order (what the predictor does) decodes each frame once.
    """

    def __init__(self, path: str | Path, *, max_frames: int | None = None, every: int = 1):
        self.path = Path(path)
        if every < 1:
            raise DataError(f"--every {every}: must be >= 1")
        if max_frames is not None and max_frames < 1:
            raise DataError(f"--max-frames {max_frames}: must be >= 1")
        av = _av()
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise DataError(f"{self.path}: no video stream")
                stream = container.streams.video[0]
                self.rate: Fraction = stream.average_rate or stream.guessed_rate or Fraction(25)
                self.source_frames = stream.frames or _count_frames(container, stream)
                self.height, self.width = stream.codec_context.height, stream.codec_context.width
        except (av.error.FFmpegError, OSError) as error:
            raise DataError(f"{self.path}: cannot read as a video ({error})") from None
        self.every = every
        count = -(-self.source_frames // every)
        self.count = min(count, max_frames) if max_frames is not None else count
        if self.count == 0:
            raise DataError(f"{self.path}: the video has no frames")
        self.shape = (self.count, self.height, self.width, 3)
        self.ndim, self.dtype = 4, np.dtype(np.uint8)
        self._frames: Iterator[tuple[int, np.ndarray]] | None = None
        self._position = -1
        self._container: Any = None

    @property
    def frame_rate(self) -> Fraction:
        """Frames per second of the sequence as sampled (the source rate divided by ``every``)."""
        return self.rate / self.every

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> np.ndarray:
        if not isinstance(index, (int, np.integer)):
            raise TypeError("VideoFrames is indexed by frame number only")
        t = int(index) + self.count if index < 0 else int(index)
        if not 0 <= t < self.count:
            raise IndexError(f"frame {index} out of range (0..{self.count - 1})")
        wanted = t * self.every
        if self._frames is None or wanted <= self._position:
            self._open()
        assert self._frames is not None
        for number, frame in self._frames:
            self._position = number
            if number == wanted:
                return frame
        raise DataError(f"{self.path}: frame {wanted} could not be decoded (the file ends early)")

    def __iter__(self) -> Iterator[np.ndarray]:
        for t in range(self.count):
            yield self[t]

    def _open(self) -> None:
        self.close()
        av = _av()
        self._container = av.open(str(self.path))
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        decoded = (frame.to_ndarray(format="rgb24") for frame in self._container.decode(stream))
        self._frames = enumerate(decoded)
        self._position = -1

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._frames = None, None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _count_frames(container: InputContainer, stream: VideoStream) -> int:
    """Frames of a stream that does not record its length: count its packets (no decoding)."""
    count = sum(1 for packet in container.demux(stream) if packet.size)
    container.seek(0)
    return count


def overlay_frame(
    frame: np.ndarray, labels: np.ndarray, colors: Sequence[tuple[int, int, int]], alpha: float
) -> np.ndarray:
    """Blend class colours onto an RGB frame: ``(1 - alpha) * frame + alpha * colour[label]``."""
    palette = np.asarray(colors, dtype=np.float32)
    if labels.max(initial=0) >= len(palette):
        palette = np.concatenate([palette, np.asarray(DEFAULT_COLORS * 26, np.float32)])[: int(labels.max()) + 1]
    blended = (1 - alpha) * frame.astype(np.float32) + alpha * palette[labels]
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def write_overlay(
    frames: VideoFrames,
    labels: PlaneArray,
    path: Path,
    *,
    colors: Sequence[tuple[int, int, int]] | None = None,
    alpha: float = 0.5,
    codec: str = "libx264",
) -> Path:
    """Encode the frames with their labels blended on, at the sequence's frame rate (atomically).

    ``labels`` is a ``(T, Y, X)`` array (a memory-mapped TIFF works), read one frame at a time.
    H.264 (yuv420p) needs even sides: odd sides are padded by one pixel at the bottom/right.
    """
    from ..plumbing.atomic import atomic_path

    av = _av()
    colors = list(colors or DEFAULT_COLORS)
    height, width = frames.height + frames.height % 2, frames.width + frames.width % 2
    rate = frames.frame_rate
    with atomic_path(path) as temporary, av.open(str(temporary), mode="w", format=_container_format(path)) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18"}
        for t in range(frames.count):
            image = overlay_frame(frames[t], np.asarray(labels[t]), colors, alpha)
            if image.shape[:2] != (height, width):
                image = np.pad(image, ((0, height - image.shape[0]), (0, width - image.shape[1]), (0, 0)), "edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _container_format(path: Path) -> str | None:
    """The muxer from the final suffix (the temporary name hides it)."""
    return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi", ".webm": "webm"}.get(
        path.suffix.lower()
    )
