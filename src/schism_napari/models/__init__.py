"""Model registry: smp architectures with any smp encoder, SCHISM's UnetVanilla/UnetSegmentor
(faithful rebuilds, see :mod:`.schism`), and this project's concatenating U-Net (``UnetConcat``),
which older run folders of this project saved under SCHISM's names."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .._torchvision_compat import ensure_torchvision_importable
from ..config import SCHISM_ARCHITECTURES, SMP_ARCHITECTURES, UNET_CONCAT, ModelConfig, allowed_values
from ..errors import ConfigError, SchismError


def output_channels(config: ModelConfig) -> int:
    """SCHISM: two classes or fewer is binary, with a single logit channel."""
    return 1 if config.binary else config.num_classes


def build_model(config: ModelConfig, in_channels: int, *, source: str | None = None) -> nn.Module:
    """Build the network; ``model.size_divisor`` tells what input sides it needs to divide."""
    out = output_channels(config)
    if config.model_type in SCHISM_ARCHITECTURES:
        model: nn.Module = build_schism_model(config, in_channels, out, source)
    elif config.model_type == UNET_CONCAT:
        from .unet import UNet

        model = UNet(
            in_channels,
            out,
            n_block=config.n_block,
            channels=config.channels,
            k_size=config.k_size,
            activation=config.activation,
            p=config.p,
        )
    elif config.model_type in SMP_ARCHITECTURES:
        model = _build_smp(config, in_channels, out, source)
    else:
        raise ConfigError("Model", "model_type", config.model_type, "unknown architecture", source)
    return model


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
    ensure_torchvision_importable()
    import segmentation_models_pytorch as smp
    from segmentation_models_pytorch.encoders import get_encoder_names

    names = get_encoder_names()
    if config.encoder not in names:
        raise ConfigError("Model", "encoder", config.encoder, allowed_values(tuple(names), config.encoder), source)
    try:
        model = smp.create_model(
            config.model_type, encoder_name=config.encoder, encoder_weights=None, in_channels=in_channels, classes=out
        )
    except Exception as error:  # smp raises ValueError/KeyError/AttributeError for bad combinations
        raise ConfigError(
            "Model", "encoder", config.encoder, f"cannot build {config.model_type} with it: {error}", source
        ) from None
    model.size_divisor = 32
    if config.encoder_weights:
        load_encoder_weights(model.encoder, Path(config.encoder_weights))
    return model


def load_encoder_weights(encoder: nn.Module, path: Path) -> None:
    """Load local encoder weights without executing code (safetensors or weights_only torch.load)."""
    if not path.is_file():
        raise SchismError(f"{path}: encoder weights file not found ([Model] encoder_weights)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise SchismError(f"{path}: not a loadable weights file ({error})") from None
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
