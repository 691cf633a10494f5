"""A form generated from the typed configuration: one tab per INI section, one widget per key.

Widget types, ranges and tooltips come from the dataclass fields. The form turns its values
into INI text and parses it with :meth:`SchismConfig.from_ini_string`, so the widget, the INI
file and the command line share one parser and one set of error messages.

A form shows every key, but only the keys the user edited (plus those the shown config had as
given, e.g. from an INI file) count as given: the planner may still choose the others from the
data at Train time, and :meth:`ConfigForm.set_config` shows why in the fields' tooltips.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, SpinBox, Widget
from magicgui.widgets.bases import ValueWidget
from qtpy.QtWidgets import QScrollArea, QTabWidget

from ..config import SECTIONS, STARTING_SCHEDULERS, SchismConfig, field_types, format_value, scheduler_names

_TEXT_FLOATS = {"lr", "grad_clip"}  # values spanning decades: typed, not spun
_FIELD_KEYS = {(section, f.name) for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
_STEPS = {"val_split": 0.05, "overlap": 0.05, "p": 0.05, "threshold": 0.05, "intensity_jitter": 0.05}


class ConfigForm:
    """The whole :class:`SchismConfig` as magicgui widgets, generated from the dataclass fields.

    Generated rather than written by hand so that a new config key appears in the widget with its
    type, range and tooltip without touching the GUI; and read back through the INI parser so that
    a value the INI file would reject is rejected here with the same one-line message.
    """

    def __init__(self, sections: tuple[str, ...] = tuple(SECTIONS)):
        self.sections = sections
        self.widgets: dict[tuple[str, str], ValueWidget] = {}
        self._help: dict[tuple[str, str], str] = {}  # the fields' own tooltips, before any plan reason
        self._shown: dict[tuple[str, str], Any] | None = None  # widget values as set_config left them
        self._given: set[str] = set()  # "Section.key" the shown config had as given
        self.tabs = QTabWidget()
        self.tabs.setUsesScrollButtons(True)
        for section in sections:
            container: Container[Widget] = Container(labels=True)
            section_class = SECTIONS[section]
            types = field_types(section_class)
            for f in dataclasses.fields(section_class):
                widget = _make_widget(section, f, types[f.name])
                self.widgets[(section, f.name)] = widget
                self._help[(section, f.name)] = widget.tooltip or ""
                container.append(widget)
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setWidget(container.native)
            self.tabs.addTab(scroll, section)

    def set_config(self, config: SchismConfig, reasons: dict[str, str] | None = None) -> None:
        """Show ``config``; its given keys stay given, the others until the user edits them are the
        planner's to choose. ``reasons`` (a Plan's, "Section.key" -> why) go into the tooltips."""
        reasons = reasons or {}
        for (section, key), widget in self.widgets.items():
            if key == "scheduler" and isinstance(widget, ComboBox):
                widget.reset_choices()  # torch's own list, once torch is imported
            why = reasons.get(f"{section}.{key}")
            help_text = self._help[(section, key)]
            widget.tooltip = f"{help_text}\nPlanned: {why}".strip() if why else help_text
            value = getattr(config.section(section), key)
            if key == "kwargs":
                widget.value = ", ".join(f"{k}={format_value(v)}" for k, v in value.items())
            elif isinstance(widget, (LineEdit, ComboBox)):
                widget.value = "" if value is None and isinstance(widget, LineEdit) else format_value(value)
            else:
                widget.value = value
        self._shown = {key: widget.value for key, widget in self.widgets.items()}
        self._given = set(config.given)

    def show_value(self, section: str, key: str, value: Any) -> None:
        """Show a value the data chose (num_classes following the painted labels) without it
        counting as the user's edit: the planner may still change it."""
        widget = self.widgets[(section, key)]
        widget.value = value
        if self._shown is not None:
            self._shown[(section, key)] = widget.value

    def edited(self) -> set[tuple[str, str]]:
        """The fields whose value differs from what :meth:`set_config` showed (all before it is called)."""
        if self._shown is None:
            return set(self.widgets)
        return {key for key, widget in self.widgets.items() if widget.value != self._shown[key]}

    def ini_text(self) -> str:
        lines = []
        for section in self.sections:
            lines.append(f"[{section}]")
            for (owner, key), widget in self.widgets.items():
                if owner != section:
                    continue
                if key == "kwargs":
                    lines.extend(f"{k} = {v}" for k, v in split_keywords(str(widget.value)))
                    continue
                value = widget.value
                if isinstance(widget, LineEdit) and not str(value).strip():
                    value = "None"
                lines.append(f"{key} = {format_value(value)}")
            lines.append("")
        return "\n".join(lines)

    def config(self) -> SchismConfig:
        """The form's values as a validated config; raises ConfigError naming the field at fault."""
        config = SchismConfig.from_ini_string(self.ini_text(), source="form")
        edited = self.edited()
        sections = {section for section, key in edited if key == "kwargs"}  # its keys come as their own
        config.given = {name for name in config.given if name in self._given or _edited(name, edited, sections)}
        return config

    def on_change(self, callback: Any) -> None:
        """Call ``callback()`` whenever the user edits any field."""
        for widget in self.widgets.values():
            widget.changed.connect(lambda *_: callback())

    def widget(self, section: str, key: str) -> ValueWidget:
        return self.widgets[(section, key)]


def _edited(name: str, edited: set[tuple[str, str]], kwargs_sections: set[str]) -> bool:
    """Whether the given key ``Section.key`` was edited: its own field, or the section's kwargs field."""
    section, key = name.split(".", 1)
    return (section, key) in edited or (section in kwargs_sections and (section, key) not in _FIELD_KEYS)


def split_keywords(text: str) -> list[tuple[str, str]]:
    """``'weight_decay=0.01, betas=(0.9, 0.99)'`` -> ``[('weight_decay', '0.01'), ('betas', '(0.9, 0.99)')]``."""
    matches = list(re.finditer(r"(?:^|,)\s*([A-Za-z_]\w*)\s*=", text))
    pairs = []
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        pairs.append((match.group(1), text[match.end() : end].strip().rstrip(",").strip()))
    return pairs


def _scheduler_choices(_widget: Any = None) -> list[str]:
    """torch's scheduler names; before torch is imported (the dock opens without it), the usual ones."""
    loaded = "torch.optim.lr_scheduler" in sys.modules
    return ["None", *(scheduler_names() if loaded else STARTING_SCHEDULERS)]


def _make_widget(section: str, f: dataclasses.Field, annotation: Any) -> ValueWidget:
    meta = f.metadata
    options: dict[str, Any] = {"name": f.name, "label": f.name, "tooltip": meta.get("help", "")}
    optional = type(None) in typing.get_args(annotation)
    base = next((a for a in typing.get_args(annotation) if a is not type(None)), annotation)
    if f.name == "scheduler":
        return ComboBox(choices=_scheduler_choices, **options)
    if f.name == "kwargs":
        options["tooltip"] += " Write key=value pairs separated by commas, e.g. weight_decay=0.01, betas=(0.9, 0.99)."
        return LineEdit(**options)
    if "choices" in meta:
        return ComboBox(choices=list(meta["choices"]), **options)
    if optional or typing.get_origin(base) is list or base is str or f.name in _TEXT_FLOATS:
        if optional:
            options["tooltip"] += " Leave empty for None."
        return LineEdit(**options)
    if base is bool:
        return CheckBox(**options)
    if base is int:
        return SpinBox(min=meta.get("min", 0), max=meta.get("max", 10**7), **options)
    if base is float:
        return FloatSpinBox(
            min=meta.get("min", 0.0), max=meta.get("max", 1e6), step=_STEPS.get(f.name, 0.01), **options
        )
    return LineEdit(**options)
