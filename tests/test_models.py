"""Model registry: every architecture builds and forwards, SCHISM's U-Nets, local encoder weights, torchvision shim."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from schism_napari.config import ARCHITECTURES, SCHISM_ARCHITECTURES, SMP_ARCHITECTURES, ModelConfig
from schism_napari.errors import ConfigError, SchismError
from schism_napari.models import build_model, output_channels, size_divisor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# PAN's feature pyramid attention pools the 1/32 feature map three more times: it needs >= 128 px.
MINIMUM_SIDE = {"PAN": 128}


def _config(model_type: str, num_classes: int = 3, **options) -> ModelConfig:
    if model_type in SMP_ARCHITECTURES:
        options = {"encoder": "resnet18", "encoder_weights": None, **options}
    else:
        options = {"n_block": 2, "channels": 4, **options}
    config = ModelConfig(model_type=model_type, num_classes=num_classes, **options)
    config.validate(None)
    return config


def _side(model_type: str, model: torch.nn.Module) -> int:
    side = MINIMUM_SIDE.get(model_type, 64)
    divisor = size_divisor(model)
    return -(-side // divisor) * divisor  # the smallest multiple of the divisor that is large enough


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_every_architecture_builds_and_forwards(model_type: str, in_channels: int) -> None:
    torch.manual_seed(0)
    cases = ((1, 1), (2, 1), (5, 5)) if in_channels == 1 else ((2, 1), (3, 3))
    for num_classes, expected_channels in cases:
        config = _config(model_type, num_classes)
        assert output_channels(config) == expected_channels
        model = build_model(config, in_channels).eval()
        side = _side(model_type, model)
        assert side % size_divisor(model) == 0
        with torch.no_grad():
            output = model(torch.randn(1, in_channels, side, side))
        assert output.shape == (1, expected_channels, side, side), (model_type, in_channels, num_classes)
        assert torch.isfinite(output).all()


def test_schism_unets_report_their_size_divisor() -> None:
    for model_type in (*SCHISM_ARCHITECTURES, "UnetConcat"):
        for n_block in (1, 3):
            config = _config(model_type)
            config.n_block = n_block
            model = build_model(config, 1).eval()
            assert size_divisor(model) == 2**n_block
            side = 2**n_block * 3  # any multiple of 2**n_block works
            with torch.no_grad():
                assert model(torch.zeros(2, 1, side, side)).shape == (2, 3, side, side)


def test_unet_concat_options_change_the_network() -> None:
    """This project's U-Net, which older run folders saved under SCHISM's names."""
    small = build_model(_config("UnetConcat", k_size=3, channels=4), 1)
    wide = build_model(_config("UnetConcat", k_size=5, channels=8, activation="leakyrelu"), 1)
    first_small = small.encoders[0][0]
    first_wide = wide.encoders[0][0]
    assert first_small.kernel_size == (3, 3) and first_small.out_channels == 4
    assert first_wide.kernel_size == (5, 5) and first_wide.out_channels == 8
    assert isinstance(wide.encoders[0][2], torch.nn.LeakyReLU)
    deep = build_model(_config("UnetConcat", n_block=4, channels=4), 1)
    assert len(deep.encoders) == 4 and len(deep.decoders) == 4


def test_unet_segmentor_options_change_the_network() -> None:
    """SCHISM's UnetSegmentor: 3-channel biased input conv, n_block - 1 encoder blocks, n_block decoder blocks."""
    small = build_model(_config("UnetSegmentor", k_size=3, channels=4), 1)
    wide = build_model(_config("UnetSegmentor", k_size=5, channels=8, activation="leakyrelu"), 1)
    assert small.input_conv.kernel_size == (3, 3) and small.input_conv.out_channels == 4
    assert small.input_conv.in_channels == 3 and small.input_conv.bias is not None
    assert wide.input_conv.kernel_size == (5, 5) and wide.input_conv.out_channels == 8
    assert isinstance(wide.encoder_convs[0][2], torch.nn.LeakyReLU)
    deep = build_model(_config("UnetSegmentor", n_block=4, channels=4), 1)
    assert len(deep.encoder_convs) == 3 and len(deep.decoder_convs) == 4
    assert deep.seg_conv.kernel_size == (3, 3)


def test_unet_segmentor_dropout_only_while_training() -> None:
    """SCHISM kept dropout on at inference (random predictions); here eval() turns it off."""
    torch.manual_seed(0)
    config = _config("UnetSegmentor", p=0.5)
    model = build_model(config, 1)
    x = torch.randn(2, 1, 32, 32)
    model.eval()
    with torch.no_grad():
        first, second = model(x), model(x)
    assert torch.equal(first, second)
    model.train()
    with torch.no_grad():
        third, fourth = model(x), model(x)
    assert not torch.allclose(third, fourth)


def test_unet_without_dropout_is_deterministic_in_training_mode() -> None:
    torch.manual_seed(0)
    model = build_model(_config("UnetSegmentor", p=0.0), 1).train()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def _random_like(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        key: torch.randn(value.shape, generator=generator) if value.is_floating_point() else value + 3
        for key, value in state.items()
    }


def _encoder_config(path) -> ModelConfig:
    config = ModelConfig(model_type="Unet", num_classes=3, encoder="resnet18", encoder_weights=str(path))
    config.validate(None)
    return config


def _assert_encoder_equals(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    loaded = model.encoder.state_dict()
    assert set(saved) <= set(loaded)
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key


def test_local_encoder_weights_are_loaded(tmp_path) -> None:
    reference = build_model(_config("Unet"), 1)
    saved = _random_like(reference.encoder.state_dict(), seed=1)
    path = tmp_path / "resnet18_encoder.pth"
    torch.save(saved, path)
    model = build_model(_encoder_config(path), 1)
    _assert_encoder_equals(model, saved)
    # the decoder is not touched: a second build gives the same encoder but its own random decoder
    torch.manual_seed(123)
    again = build_model(_encoder_config(path), 1)
    _assert_encoder_equals(again, saved)


def test_local_encoder_weights_from_a_whole_model_or_a_classifier(tmp_path) -> None:
    reference = build_model(_config("Unet"), 1)
    encoder_state = _random_like(reference.encoder.state_dict(), seed=2)
    # a whole smp checkpoint: encoder.* keys plus decoder and head, wrapped in {"state_dict": ...}
    whole = {f"encoder.{k}": v for k, v in encoder_state.items()}
    whole.update({f"decoder.{k}": torch.zeros_like(v) for k, v in reference.decoder.state_dict().items()})
    whole["segmentation_head.0.weight"] = torch.zeros(1)
    path = tmp_path / "whole_model.pt"
    torch.save({"state_dict": whole}, path)
    _assert_encoder_equals(build_model(_encoder_config(path), 1), encoder_state)
    # a classification network's weights: its fc.* head is not part of the encoder
    classifier = dict(encoder_state, **{"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    path = tmp_path / "resnet18_classifier.pth"
    torch.save(classifier, path)
    _assert_encoder_equals(build_model(_encoder_config(path), 1), encoder_state)


def test_local_encoder_weights_from_safetensors(tmp_path) -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    reference = build_model(_config("Unet"), 1)
    saved = _random_like(reference.encoder.state_dict(), seed=3)
    path = tmp_path / "encoder.safetensors"
    safetensors_torch.save_file(saved, str(path))
    _assert_encoder_equals(build_model(_encoder_config(path), 1), saved)


def test_rgb_encoder_weights_load_into_a_gray_model(tmp_path) -> None:
    """ImageNet-style (3-channel) encoder weights are what users have; CT images are gray.

    Building a 1-channel model from them must work (smp adapts the first convolution when it
    downloads weights) or at least fail with a SchismError, never a raw RuntimeError.
    """
    rgb = build_model(_config("Unet"), 3)
    saved = _random_like(rgb.encoder.state_dict(), seed=4)
    path = tmp_path / "resnet18_rgb.pth"
    torch.save(saved, path)
    model = build_model(_encoder_config(path), 1)
    assert model.encoder.state_dict()["conv1.weight"].shape[1] == 1
    _assert_encoder_equals(model, {k: v for k, v in saved.items() if k != "conv1.weight"})


def test_missing_encoder_weights_file_names_it(tmp_path) -> None:
    path = tmp_path / "not_there.pth"
    with pytest.raises(SchismError, match=r"not_there\.pth"):
        build_model(_encoder_config(path), 1)


def test_unusable_encoder_weights_files_raise_schism_error(tmp_path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(SchismError, match=r"garbage\.pth"):
        build_model(_encoder_config(garbage), 1)
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"something.else": torch.zeros(3)}, unrelated)
    with pytest.raises(SchismError, match=r"unrelated\.pth"):
        build_model(_encoder_config(unrelated), 1)


def test_encoder_weights_names_smp_does_not_know_are_refused() -> None:
    # issue 7 point 7: imagenet is now accepted (smp's download cache); other non-file names are not
    ModelConfig(model_type="Unet", encoder="resnet18", encoder_weights="imagenet").validate(None)
    config = ModelConfig(model_type="Unet", encoder="resnet18", encoder_weights="imagenet21k")
    with pytest.raises(ConfigError, match="encoder_weights"):
        config.validate(None)


def test_bad_encoder_name_suggests_the_nearest() -> None:
    config = _config("Unet")
    config.encoder = "resnet_18"
    with pytest.raises(ConfigError) as caught:
        build_model(config, 1, source="my.ini")
    message = str(caught.value)
    assert caught.value.section == "Model" and caught.value.key == "encoder"
    assert "resnet_18" in message and "did you mean 'resnet18'" in message and "my.ini" in message


def test_unknown_architecture_is_a_config_error() -> None:
    config = ModelConfig(model_type="UnetVanilla")
    config.model_type = "NoSuchNet"  # bypassing validate(), as a caller might
    with pytest.raises(ConfigError, match="NoSuchNet"):
        build_model(config, 1)


def test_torchvision_shim_makes_smp_importable_in_a_fresh_interpreter() -> None:
    script = textwrap.dedent(
        """
        import sys
        from schism_napari.plumbing.torchvision_compat import ensure_torchvision_importable
        assert "torchvision" not in sys.modules
        first = ensure_torchvision_importable()
        assert isinstance(first, bool)
        import segmentation_models_pytorch as smp
        import torchvision
        assert "torchvision" in sys.modules
        assert ensure_torchvision_importable() is False  # idempotent once torchvision is imported
        model = smp.create_model("Unet", encoder_name="resnet18", encoder_weights=None, in_channels=1, classes=2)
        import torch
        print("OK", first, tuple(model(torch.zeros(1, 1, 64, 64)).shape))
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "OK" in completed.stdout and "(1, 2, 64, 64)" in completed.stdout


def test_torchvision_shim_is_safe_from_two_threads_at_once() -> None:
    """The napari dock's worker imports smp while a form edit validates on the GUI thread: the shim
    runs in both, and declaring the schemas twice used to raise (and abort `schism launch`)."""
    script = textwrap.dedent(
        """
        import sys, threading
        from schism_napari.plumbing.torchvision_compat import ensure_torchvision_importable
        errors, start = [], threading.Barrier(4)
        def run():
            start.wait()
            try:
                ensure_torchvision_importable()
                import segmentation_models_pytorch
            except Exception as error:
                errors.append(repr(error))
        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print("errors", errors)
        sys.exit(1 if errors else 0)
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, check=False)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
