"""The registries are the one place that names an architecture or a loss: the configuration, the
builders and the README tables all come from them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from schism_napari import config
from schism_napari.models import ARCHITECTURES, SMP_ARCHITECTURES
from schism_napari.training.losses import LOSS_TERMS

REPOSITORY = Path(__file__).resolve().parent.parent


def registry_tables():
    spec = importlib.util.spec_from_file_location("registry_tables", REPOSITORY / "scripts" / "registry_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_config_names_come_from_the_registries():
    assert tuple(ARCHITECTURES) == config.ARCHITECTURES
    assert tuple(LOSS_TERMS) == config.LOSSES
    assert set(config.SCHISM_ARCHITECTURES) | set(config.SMP_ARCHITECTURES) | {config.UNET_CONCAT} == set(ARCHITECTURES)


def test_smp_entries_name_smp_classes():
    from schism_napari.plumbing.torchvision_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import segmentation_models_pytorch as smp

    for name in SMP_ARCHITECTURES:
        assert isinstance(getattr(smp, name), type), name


def test_readme_tables_match_the_registries():
    tables = registry_tables()
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    assert tables.render(readme) == readme, "README.md is stale: run python scripts/registry_tables.py"


def test_tables_list_every_entry_and_a_stale_table_is_rewritten():
    tables = registry_tables()
    stale = "<!-- registry:architectures -->\n| old |\n<!-- /registry:architectures -->\n" + (
        "<!-- registry:losses -->\n<!-- /registry:losses -->\n"
    )
    fresh = tables.render(stale)
    assert "| old |" not in fresh
    for name in (*ARCHITECTURES, *LOSS_TERMS):
        assert f"| {name} |" in fresh
    assert tables.render(fresh) == fresh


def test_a_missing_marker_is_reported():
    with pytest.raises(SystemExit, match="registry:architectures"):
        registry_tables().render("no markers here")


def test_written_out_loss_keywords_match_the_installed_classes():
    """The registry writes the [Loss] keywords out (reading torch's and smp's signatures would
    import torch when a config is validated): they must be what the installed classes take."""
    from schism_napari import registries
    from schism_napari.training.losses import signature_keywords

    for name in registries.LOSSES:
        installed = signature_keywords(name)
        if installed is not None:
            assert registries.loss_keyword_arguments(name) == installed, name


def test_every_registered_name_has_a_builder():
    from schism_napari import registries

    assert tuple(ARCHITECTURES) == tuple(registries.ARCHITECTURES)
    assert tuple(LOSS_TERMS) == tuple(registries.LOSSES)
    for name, entry in registries.ARCHITECTURES.items():
        assert (ARCHITECTURES[name].origin, ARCHITECTURES[name].keys) == (entry.origin, entry.keys)


def test_validating_a_config_imports_neither_torch_nor_smp():
    """The napari dock validates on the GUI thread: [Model] and [Loss] (names, loss keywords)
    come from the torch-free registry. [Optimizer] and [Scheduler] read torch.optim's classes,
    so a whole config's validation still imports torch; everything before them must not."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from schism_napari.config import SchismConfig\n"
        "assert 'torch' not in sys.modules, 'importing the config imports torch'\n"
        "c = SchismConfig()\n"
        "c.model.model_type = 'unet++'\n"
        "c.model.validate('x.ini')\n"
        "c.loss.loss = 'CrossEntropyLoss + 0.5*dice + TverskyLoss'\n"
        "c.loss.kwargs = {'label_smoothing': 0.1, 'beta': 0.7}\n"
        "c.loss.validate('x.ini')\n"
        "assert c.loss.loss == 'CrossEntropyLoss + 0.5*DiceLoss + TverskyLoss', c.loss.loss\n"
        "leaked = sorted(m for m in ('torch', 'segmentation_models_pytorch', 'torchvision') if m in sys.modules)\n"
        "assert not leaked, leaked\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
