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
    from schism_napari._torchvision_compat import ensure_torchvision_importable

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
