#!/usr/bin/env bash
# GPU check: one run of under 8 minutes on a CUDA machine, nothing installed beyond the README set-up.
#
#   ./scripts/bootstrap.sh            # the README set-up (once)
#   benchmarks/gpu_check.sh           # or PYTHON=/path/to/python benchmarks/gpu_check.sh
#
# Prints: training steps/s and images/s, fp32 vs AMP (fp16 autocast), for a fixed number of steps of
# smp Unet/resnet18 on the synthetic rock sample; prediction MP/s of a 4096^2 image and a 64x1024^2
# stack (default halo tiling, and 256 px tiles at overlap 0.25 for comparison); peak GPU memory of
# each; and whether GPU memory returns after training ends while a napari Session holds the model
# (micro-sam users report it does not there). Exits 1 when no CUDA device is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
STEPS="${STEPS:-150}"
exec timeout 470 "$PYTHON" - "$STEPS" <<'EOF'
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

if not torch.cuda.is_available():
    print("gpu_check: no CUDA device visible to torch", torch.__version__)
    sys.exit(1)

from schism_napari.config import InferenceConfig, SchismConfig
from schism_napari.data import samples_from_arrays
from schism_napari.inference import Predictor
from schism_napari.runs import TrainedModel, default_class_names
from schism_napari.sample import make_rock
from schism_napari.training.trainer import Trainer

STEPS = int(sys.argv[1])
BATCH = 16
device = torch.cuda.get_device_name(0)
print(f"gpu_check: {device}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"bf16 {torch.cuda.is_bf16_supported()}, {STEPS} training steps of batch {BATCH}")
torch.backends.cudnn.benchmark = True
MB = 1 << 20

INI = """
[Model]
model_type = Unet
encoder = resnet18
num_classes = 3
[Optimizer]
optimizer = AdamW
lr = 0.001
[Scheduler]
scheduler = None
[Loss]
loss = CrossEntropyLoss
[Training]
batch_size = {batch}
epochs = 1
val_split = 0.9
device = cuda
amp = {amp}
seed = 0
[Data]
crop_size = 256
img_res = 256
num_samples = 10
crops_per_image = {crops}
"""

images, masks = zip(*(make_rock((768, 768), seed=s) for s in range(10)), strict=True)
data = samples_from_arrays(list(images), list(masks), class_count=3)
train_images = 9  # val_split 0.9 of 10
crops = -(-STEPS * BATCH // train_images)


def train(amp: bool, folder: Path):
    config = SchismConfig.from_ini_string(INI.format(batch=BATCH, amp=amp, crops=crops), source="gpu_check.ini")
    torch.cuda.reset_peak_memory_stats()
    times = []

    def on_event(event) -> None:
        if type(event).__name__ == "BatchEnded":
            torch.cuda.synchronize()
            times.append(time.perf_counter())

    result = Trainer(config, data, folder / f"run_amp_{amp}", callback=on_event, curves_each_epoch=False).run()
    steady = np.diff(times[5:])  # after warm-up (cudnn.benchmark picks kernels on the first steps)
    per_step = float(np.median(steady)) if len(steady) else float("nan")
    label = "AMP fp16" if amp else "fp32"
    print(f"train {label:8s}: {len(times)} steps, {1 / per_step:.2f} steps/s, {BATCH / per_step:.1f} images/s, "
          f"peak GPU memory {torch.cuda.max_memory_allocated() / MB:.0f} MB")
    return result


def predict(model, normalization, image, label: str, **settings) -> None:
    predictor = Predictor(model, class_count=3, in_channels=1, normalization=normalization,
                          settings=InferenceConfig(batch_size=8, **settings), device="cuda")
    predictor.predict(image[:1] if image.ndim == 3 else image[:512, :512], keep_probabilities=False)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    predictor.predict(image, keep_probabilities=False)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    print(f"predict {label}: {image.size / 1e6 / seconds:.2f} MP/s ({seconds:.1f} s, tile {predictor.tile_size}, "
          f"halo {predictor.halo}), peak GPU memory {torch.cuda.max_memory_allocated() / MB:.0f} MB")


with tempfile.TemporaryDirectory() as temporary:
    folder = Path(temporary)
    baseline = torch.cuda.memory_allocated()
    train(False, folder)
    result = train(True, folder)
    # as the napari Training widget does: the trained model goes into the viewer's Session
    from schism_napari._widgets.session import Session

    session = Session()
    session.set_model(TrainedModel(result.config, result.model, data.stats["default"], data.in_channels,
                                   default_class_names(3), None, "gpu_check"))
    gc.collect()
    held = torch.cuda.memory_allocated() - baseline
    weights = sum(p.numel() * p.element_size() for p in result.model.parameters())
    weights += sum(b.numel() * b.element_size() for b in result.model.buffers())
    reserved_before = torch.cuda.memory_reserved()
    torch.cuda.empty_cache()
    print(f"after training, Session holding the model: {held / MB:.0f} MB allocated "
          f"(model weights {weights / MB:.0f} MB), reserved {reserved_before / MB:.0f} MB -> "
          f"{torch.cuda.memory_reserved() / MB:.0f} MB after empty_cache; "
          f"memory returns: {'yes' if held <= weights * 1.1 + 8 * MB else 'NO'}")
    model, normalization = session.model.model, session.model.normalization
    image, _ = make_rock((4096, 4096), seed=21)
    stack, _ = make_rock((64, 1024, 1024), seed=22)
    predict(model, normalization, image, "4096^2 image, default halo tiling")
    predict(model, normalization, image, "4096^2 image, 256 px tiles overlap 0.25", tile_size=256, overlap=0.25)
    predict(model, normalization, stack, "64x1024^2 stack, default halo tiling")
    session.set_model(None)
    del session, model, result
    gc.collect()
    torch.cuda.empty_cache()
    print(f"after the Session let go of the model: {(torch.cuda.memory_allocated() - baseline) / MB:.0f} MB allocated, "
          f"{torch.cuda.memory_reserved() / MB:.0f} MB reserved")
EOF
