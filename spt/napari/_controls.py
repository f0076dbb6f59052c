"""Small Qt pieces shared by the widgets: their base, a layer chooser, a config form, a table."""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

import numpy as np
import pandas as pd
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHeaderView,
    QLineEdit,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

NONE_CHOICE = "(none)"


class ViewerWidget(QWidget):
    """Base of spt's dock widgets, which napari creates with its viewer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
    """

    def __init__(self, napari_viewer: Any):
        super().__init__()
        self.viewer = napari_viewer


class LayerCombo(QComboBox):
    """Chooses a layer of one type, kept in step with the viewer's layer list.

    Parameters
    ----------
    viewer : napari.Viewer
    layer_type : type
        napari layer class offered, e.g. ``napari.layers.Image``.
    accept : callable, optional
        Further test a layer must pass (e.g. "has spt results").
    allow_none : bool
        Offer "(none)" as the first choice.
    """

    layer_changed = Signal(object)

    def __init__(
        self,
        viewer: Any,
        layer_type: type,
        *,
        accept: Callable[[Any], bool] | None = None,
        allow_none: bool = False,
        parent: QWidget | None = None,
    ):
        super().__init__(parent)
        self._viewer = viewer
        self._type = layer_type
        self._accept = accept or (lambda layer: True)
        self._allow_none = allow_none
        self._layers: list[Any] = []
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.moved.connect(self.refresh)
        self.currentIndexChanged.connect(lambda _: self.layer_changed.emit(self.layer()))
        self.refresh()

    def refresh(self, event: Any = None) -> None:
        """Re-list the layers, keeping the current choice when it is still there."""
        current = self.layer()
        inserted = (
            getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        )
        self._layers = [
            layer
            for layer in self._viewer.layers
            if isinstance(layer, self._type) and self._accept(layer)
        ]
        for layer in self._layers:  # follow renames
            layer.events.name.disconnect(self._rename)
            layer.events.name.connect(self._rename)
        choice = inserted if inserted in self._layers else current
        self.blockSignals(True)
        self.clear()
        if self._allow_none:
            self.addItem(NONE_CHOICE)
        self.addItems([layer.name for layer in self._layers])
        if choice in self._layers:
            self.setCurrentIndex(self._layers.index(choice) + int(self._allow_none))
        self.blockSignals(False)
        # plugin widgets see layers through napari's proxies: compare with ==, not identity
        if self.layer() != current:
            self.layer_changed.emit(self.layer())

    def _rename(self, event: Any = None) -> None:
        offset = int(self._allow_none)
        for i, layer in enumerate(self._layers):
            self.setItemText(i + offset, layer.name)

    def layer(self) -> Any | None:
        """The chosen layer, or ``None``."""
        i = self.currentIndex() - int(self._allow_none)
        return self._layers[i] if 0 <= i < len(self._layers) else None

    def set_layer(self, layer: Any | None) -> None:
        """Choose ``layer`` (``None`` chooses "(none)" when offered)."""
        if layer is None:
            if self._allow_none:
                self.setCurrentIndex(0)
            return
        if layer in self._layers:
            self.setCurrentIndex(self._layers.index(layer) + int(self._allow_none))


def _attribute_docs(cls: type) -> dict[str, str]:
    """``name -> description`` from the numpydoc ``Attributes`` section of ``cls``."""
    docs: dict[str, str] = {}
    lines = (cls.__doc__ or "").splitlines()
    name = None
    for line in lines:
        stripped = line.strip()
        if not stripped or set(stripped) == {"-"} or stripped == "Attributes":
            continue
        head = stripped.split(" : ")[0]
        if " : " in stripped and head.isidentifier():
            name = head
            docs[name] = ""
        elif name is not None:
            docs[name] = (docs[name] + " " + stripped).strip()
    return docs


def _float_step(value: float) -> float:
    if value == 0 or not math.isfinite(value):
        return 0.01
    return 10.0 ** (math.floor(math.log10(abs(value))) - 1)


class ConfigForm(QWidget):
    """Editable form of one frozen config dataclass (float, int, bool, str and Literal fields).

    Fields of other types keep the value they were given. Each field's tooltip is its
    description from the class docstring.
    """

    def __init__(self, config: Any, parent: QWidget | None = None):
        super().__init__(parent)
        self._config = config
        self._inputs: dict[str, QWidget] = {}
        layout = QFormLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        docs = _attribute_docs(type(config))
        hints = typing.get_type_hints(type(config))
        for f in fields(config):
            value = getattr(config, f.name)
            widget = self._make_input(value, hints.get(f.name))
            if widget is None:
                continue
            widget.setObjectName(f.name)
            widget.setToolTip(docs.get(f.name, ""))
            self._inputs[f.name] = widget
            layout.addRow(f.name.replace("_", " "), widget)
        self.set_value(config)

    @staticmethod
    def _make_input(value: Any, hint: Any) -> QWidget | None:
        if typing.get_origin(hint) is typing.Literal:
            box = QComboBox()
            box.addItems([str(v) for v in typing.get_args(hint)])
            return box
        if isinstance(value, bool):
            return QCheckBox()
        if isinstance(value, int):
            box = QSpinBox()
            box.setRange(-(10**9), 10**9)
            return box
        if isinstance(value, float):
            box = QDoubleSpinBox()
            step = _float_step(value)
            box.setDecimals(max(2, -math.floor(math.log10(step)) + 1))
            box.setRange(-1e9, 1e9)
            box.setSingleStep(step)
            return box
        if isinstance(value, str):
            return QLineEdit()
        return None

    def set_value(self, config: Any) -> None:
        """Show the values of ``config`` (same dataclass type)."""
        self._config = config
        for name, widget in self._inputs.items():
            value = getattr(config, name)
            if isinstance(widget, QComboBox):
                widget.setCurrentText(str(value))
            elif isinstance(widget, QCheckBox):
                widget.setChecked(bool(value))
            elif isinstance(widget, (QSpinBox, QDoubleSpinBox)):
                widget.setValue(value)
            else:
                widget.setText(str(value))

    def value(self) -> Any:
        """The config with the values entered (validated by the dataclass)."""
        values: dict[str, Any] = {}
        for name, widget in self._inputs.items():
            if isinstance(widget, QComboBox):
                values[name] = widget.currentText()
            elif isinstance(widget, QCheckBox):
                values[name] = widget.isChecked()
            elif isinstance(widget, (QSpinBox, QDoubleSpinBox)):
                values[name] = widget.value()
            else:
                values[name] = widget.text()
        return replace(self._config, **values)

    def input(self, name: str) -> QWidget:
        """The input widget of field ``name``."""
        return self._inputs[name]


class TableView(QTableWidget):
    """Read-only view of a DataFrame, floats rounded for reading."""

    def __init__(self, max_rows: int = 8, parent: QWidget | None = None):
        super().__init__(parent)
        self.max_rows = max_rows
        self.setEditTriggers(QTableWidget.NoEditTriggers)
        self.setSelectionBehavior(QTableWidget.SelectRows)
        self.verticalHeader().setVisible(False)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        self.frame = pd.DataFrame()

    def _fit_rows(self) -> None:
        """As tall as the rows, up to ``max_rows`` (then it scrolls)."""
        rows = min(max(self.rowCount(), 1), self.max_rows)
        header = self.horizontalHeader().sizeHint().height()
        height = header + rows * self.verticalHeader().defaultSectionSize()
        scroll = self.horizontalScrollBar().sizeHint().height()
        self.setFixedHeight(height + scroll + 2 * self.frameWidth())

    def set_frame(self, frame: pd.DataFrame, digits: int = 3) -> None:
        self.frame = frame.reset_index(drop=True)
        self.setRowCount(len(frame))
        self.setColumnCount(len(frame.columns))
        self.setHorizontalHeaderLabels([str(c) for c in frame.columns])
        for j, col in enumerate(frame.columns):
            values = frame[col].to_numpy()
            for i, v in enumerate(values):
                if isinstance(v, (float, np.floating)):
                    text = "" if np.isnan(v) else f"{v:.{digits}g}"
                else:
                    text = str(v)
                self.setItem(i, j, QTableWidgetItem(text))
        self._fit_rows()
