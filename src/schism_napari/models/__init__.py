"""Model builders: smp architectures with any smp encoder, SCHISM's UnetVanilla/UnetSegmentor
(faithful rebuilds, see :mod:`.schism`), and this project's concatenating U-Net (``UnetConcat``),
which older run folders of this project saved under SCHISM's names.

The names, origins and [Model] keys live in the torch-free leaf :mod:`schism_napari.registries`
(the configuration validates ``model_type`` against it); :data:`ARCHITECTURES` pairs each name
with its builder, for :func:`build_model` and ``scripts/registry_tables.py``. Adding an
architecture is one name there and one builder here (see CONTRIBUTING.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, SchismError
from ..plumbing.torchvision_compat import ensure_torchvision_importable
from ..registries import ARCHITECTURES as NAMES
from ..registries import SCHISM_ARCHITECTURES, SMP_ARCHITECTURES, UNET_CONCAT, is_hub_weights

if TYPE_CHECKING:  # torch is imported where a network is built
    import torch
    from torch import nn

    from ..config import ModelConfig

# (config, input channels, output channels, INI file name for errors) -> network
Builder = Callable[["ModelConfig", int, int, "str | None"], "nn.Module"]


@dataclass(frozen=True)
class Architecture:
    """One ``model_type``: how to build it, where it comes from and which [Model] keys it reads.

    ``origin`` and ``keys`` are what the README table shows, so they cannot drift from the code.
    """

    build: Builder
    origin: str
    keys: tuple[str, ...] = ()


def output_channels(config: ModelConfig) -> int:
    """SCHISM: two classes or fewer is binary, with a single logit channel."""
    return 1 if config.binary else config.num_classes


def build_model(config: ModelConfig, in_channels: int, *, source: str | None = None) -> nn.Module:
    """Build the network; ``model.size_divisor`` tells what input sides it needs to divide."""
    architecture = ARCHITECTURES.get(config.model_type)
    if architecture is None:
        raise ConfigError("Model", "model_type", config.model_type, "unknown architecture", source)
    return architecture.build(config, in_channels, output_channels(config), source)


def _unet_concat(config: ModelConfig, in_channels: int, out: int, source: str | None) -> nn.Module:
    from .unet import UNet

    return UNet(
        in_channels,
        out,
        n_block=config.n_block,
        channels=config.channels,
        k_size=config.k_size,
        activation=config.activation,
        p=config.p,
    )


def build_schism_model(config: ModelConfig, in_channels: int, out: int, source: str | None = None) -> nn.Module:
    """SCHISM's own networks: three input channels (gray is replicated), SCHISM's module names."""
    from .schism import SCHISM_INPUT_CHANNELS, UnetSegmentor, UnetVanilla

    if in_channels not in (1, SCHISM_INPUT_CHANNELS):
        raise ConfigError(
            "Model", "in_channels", in_channels, f"{config.model_type} takes gray or RGB images (1 or 3)", source
        )
    options = {"n_block": config.n_block, "channels": config.channels, "k_size": config.k_size}
    if config.model_type == "UnetVanilla":
        return UnetVanilla(out, activation=config.activation, **options)
    return UnetSegmentor(out, activation=config.activation, p=config.p, **options)


def legacy_architecture(config: ModelConfig, state: dict) -> ModelConfig:
    """Run folders written before SCHISM's networks were rebuilt name the concatenating U-Net
    ``UnetVanilla``/``UnetSegmentor``; their weights (keys ``encoders.*``, ``head.*``) say which
    network they are, so they still load, as ``UnetConcat``."""
    from .schism import is_schism_state_dict

    if config.model_type in SCHISM_ARCHITECTURES and "head.weight" in state and not is_schism_state_dict(state):
        import dataclasses

        if config.model_type == "UnetVanilla":  # it was built with the UNet's defaults only
            return dataclasses.replace(config, model_type=UNET_CONCAT, k_size=3, activation="relu", p=0.0)
        return dataclasses.replace(config, model_type=UNET_CONCAT)
    return config


def size_divisor(model: nn.Module) -> int:
    return int(getattr(model, "size_divisor", 32))


def _build_smp(config: ModelConfig, in_channels: int, out: int, source: str | None) -> nn.Module:
    """Any smp architecture by its class name (``smp.create_model``), with any smp encoder."""
    ensure_torchvision_importable()
    import segmentation_models_pytorch as smp
    from segmentation_models_pytorch.encoders import get_encoder_names

    names = get_encoder_names()
    if config.encoder not in names:
        raise ConfigError("Model", "encoder", config.encoder, _nearest_encoders(names, config.encoder), source)
    hub = config.encoder_weights.lower() if is_hub_weights(config.encoder_weights) else None
    try:
        model = smp.create_model(
            config.model_type, encoder_name=config.encoder, encoder_weights=hub, in_channels=in_channels, classes=out
        )
    except (OSError, ConnectionError, RuntimeError) as error:
        if hub is None:
            raise
        raise SchismError(
            f"[Model] encoder_weights = {hub}: cannot get {config.encoder}'s {hub} weights through smp's download "
            f"cache ({str(error).splitlines()[0] if str(error) else type(error).__name__}); offline, give a local "
            ".pth/.safetensors file"
        ) from None
    except Exception as error:  # smp raises ValueError/KeyError/AttributeError for bad combinations
        raise ConfigError(
            "Model", "encoder", config.encoder, f"cannot build {config.model_type} with it: {error}", source
        ) from None
    model.size_divisor = 32
    if config.encoder_weights and hub is None:
        load_encoder_weights(model.encoder, Path(config.encoder_weights))
    return model


def _nearest_encoders(names: list[str], given: str) -> str:
    """A few close names, not all smp encoders on one 1,300-character line."""
    import difflib

    lowered = {name.lower(): name for name in names}
    close = difflib.get_close_matches(str(given).lower(), list(lowered), n=5, cutoff=0.5)
    if not close:
        prefix = str(given).lower()[:3]
        close = [name for name in lowered if name.startswith(prefix)][:5]
    listing = f"all {len(names)} names: segmentation_models_pytorch.encoders.get_encoder_names()"
    if not close:
        return f"unknown encoder ({listing})"
    others = f"; also close: {', '.join(lowered[name] for name in close[1:])}" if close[1:] else ""
    return f"unknown encoder; did you mean {lowered[close[0]]!r}{others} ({listing})"


def load_encoder_weights(encoder: nn.Module, path: Path) -> None:
    """Load local encoder weights without executing code (safetensors or weights_only torch.load)."""
    from torch import nn

    from ..plumbing.weights_io import first_line, load_torch_file

    if not path.is_file():
        raise SchismError(f"{path}: encoder weights file not found ([Model] encoder_weights)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path))
        except Exception as error:  # safetensors never runs code; a damaged file still gets one line
            raise SchismError(
                f"{path}: not a readable safetensors file ([Model] encoder_weights) "
                f"({type(error).__name__}: {first_line(error)})"
            ) from None
    else:
        state = load_torch_file(path, "weights file ([Model] encoder_weights)")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SchismError(f"{path}: expected a state_dict of tensors")
    state = {
        k.removeprefix("encoder."): v for k, v in state.items() if not k.startswith(("decoder.", "segmentation_head."))
    }
    own = encoder.state_dict()
    usable = {}
    for key, tensor in state.items():
        if key not in own:
            continue  # e.g. a classifier head (fc.*) shipped with the weights
        usable[key] = _adapt_input_channels(tensor, own[key]) if tensor.ndim == 4 else tensor
        if usable[key].shape != own[key].shape:
            raise SchismError(
                f"{path}: {key} has shape {tuple(tensor.shape)}, the encoder needs {tuple(own[key].shape)}"
            )
    if not usable:
        raise SchismError(f"{path}: none of its weights fit encoder {type(encoder).__name__}")
    # nn.Module's own loader: smp encoders override load_state_dict with other signatures
    nn.Module.load_state_dict(encoder, usable, strict=False)


def _adapt_input_channels(weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """First-convolution weights for another number of input channels (as smp's patch_first_conv):
    RGB weights summed for a gray input, or cycled and rescaled for more channels."""
    have, need = weight.shape[1], target.shape[1]
    if have == need or weight.shape[0] != target.shape[0] or weight.shape[2:] != target.shape[2:]:
        return weight
    if need == 1:
        return weight.sum(dim=1, keepdim=True)
    repeated = weight.repeat(1, -(-need // have), 1, 1)[:, :need]
    return repeated * (have / need)


# every name of the registry with its builder; a name without one fails here, at import
_BUILDERS: dict[str, Builder] = {
    "UnetVanilla": build_schism_model,
    "UnetSegmentor": build_schism_model,
    UNET_CONCAT: _unet_concat,
    **dict.fromkeys(SMP_ARCHITECTURES, _build_smp),
}
ARCHITECTURES: dict[str, Architecture] = {
    name: Architecture(_BUILDERS[name], entry.origin, entry.keys) for name, entry in NAMES.items()
}
