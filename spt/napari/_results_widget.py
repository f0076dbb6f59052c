"""The "Results" widget: per-stage velocities, speed distributions and one track in detail.

Reads the analysis carried by a Tracks layer (from "Track particles" or an opened result folder).
Clicking a track in the viewer (or choosing its particle id) shows its MSD curve, step speeds and
segments; buttons export the tables (the same folder layout as ``spt run``) and the figures.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Tracks
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from spt.config import PipelineConfig
from spt.errors import SptInputError
from spt.napari._controls import LayerCombo, TableView, ViewerWidget
from spt.napari._figures import draw_speed_distribution, draw_track
from spt.napari._layers import META_KEY, Run
from spt.pipeline import MovieResult, write_results
from spt.plot import plot_tracks_by_stage

#: A click selects the nearest track point in the current frame within this distance, px.
PICK_RADIUS_PX = 6.0


def has_result(layer: Any) -> bool:
    """Whether a layer carries an analysed spt result."""
    run = layer.metadata.get(META_KEY)
    return isinstance(run, Run) and run.result is not None


def nearest_particle(
    tracks: pd.DataFrame, frame: float, y: float, x: float, max_distance_px: float
) -> int | None:
    """Particle whose point in ``frame`` is nearest to ``(y, x)`` (px), if within the distance.

    When no track has a point in that frame, the nearest point of any frame is used.
    """
    if tracks.empty:
        return None
    here = tracks[tracks["frame"] == round(frame)]
    candidates = here if len(here) else tracks
    d = np.hypot(candidates["y"].to_numpy() - y, candidates["x"].to_numpy() - x)
    i = int(np.argmin(d))
    return int(candidates["particle"].iloc[i]) if d[i] <= max_distance_px else None


class _Canvas(FigureCanvasQTAgg):
    def __init__(self, width: float, height: float):
        super().__init__(Figure(figsize=(width, height), dpi=100))
        self.setMinimumHeight(int(height * 70))


class ResultsWidget(ViewerWidget):
    """Per-stage velocity table, speed distributions and single-track details of an spt result
    (a :class:`~spt.napari._controls.ViewerWidget`)."""

    def __init__(self, napari_viewer: Any):
        super().__init__(napari_viewer)
        self.particle: int | None = None
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.tracks_combo = LayerCombo(self.viewer, Tracks, accept=has_result)
        self.tracks_combo.layer_changed.connect(lambda _: self.refresh())
        form.addRow("tracks", self.tracks_combo)
        layout.addLayout(form)

        self.tabs = QTabWidget()
        stages = QWidget()
        s_layout = QVBoxLayout(stages)
        self.stage_table = TableView(max_rows=6)
        self.speed_canvas = _Canvas(4.5, 3)
        s_layout.addWidget(QLabel("Per-stage velocities (frame-to-frame steps)"))
        s_layout.addWidget(self.stage_table)
        s_layout.addWidget(self.speed_canvas, 1)
        self.tabs.addTab(stages, "Stages")

        track = QWidget()
        t_layout = QVBoxLayout(track)
        row = QHBoxLayout()
        self.particle_combo = QComboBox()
        self.particle_combo.setToolTip("Particle id; or click a track in the viewer")
        self.particle_combo.currentTextChanged.connect(self._on_particle_text)
        row.addWidget(QLabel("particle"))
        row.addWidget(self.particle_combo, 1)
        self.track_info = QLabel("Click a track in the viewer, or choose a particle.")
        self.track_info.setWordWrap(True)
        self.track_canvas = _Canvas(4.5, 5)
        self.segment_table = TableView(max_rows=6)
        t_layout.addLayout(row)
        t_layout.addWidget(self.track_info)
        t_layout.addWidget(self.track_canvas, 1)
        t_layout.addWidget(self.segment_table)
        self.tabs.addTab(track, "Track")
        layout.addWidget(self.tabs)

        buttons = QHBoxLayout()
        tables = QPushButton("Export tables…")
        figures = QPushButton("Export figures…")
        tables.clicked.connect(self._export_tables_dialog)
        figures.clicked.connect(self._export_figures_dialog)
        buttons.addWidget(tables)
        buttons.addWidget(figures)
        layout.addLayout(buttons)

        self._click_callback = _click_selector(self)
        self.viewer.mouse_drag_callbacks.append(self._click_callback)
        self.destroyed.connect(_remove_callback(self.viewer, self._click_callback))
        self.refresh()

    # ------------------------------------------------------------------ state

    def run(self) -> Run | None:
        layer = self.tracks_combo.layer()
        return None if layer is None else layer.metadata[META_KEY]

    def result(self) -> MovieResult | None:
        run = self.run()
        return None if run is None else run.result

    def refresh(self) -> None:
        """Show the chosen layer's tables and figures."""
        result = self.result()
        if result is None:
            self.stage_table.set_frame(pd.DataFrame())
            self.speed_canvas.figure.clear()
            self.speed_canvas.draw_idle()
            self.particle_combo.clear()
            self._show_track(None)
            return
        a = result.analysis
        self.stage_table.set_frame(a.stage_velocities)
        draw_speed_distribution(
            self.speed_canvas.figure,
            a.tracks,
            pixel_size_um=result.pixel_size_um,
            frame_interval_s=result.frame_interval_s,
        )
        self.speed_canvas.draw_idle()
        ids = sorted(int(p) for p in a.tracks["particle"].unique()) if len(a.tracks) else []
        self.particle_combo.blockSignals(True)
        self.particle_combo.clear()
        self.particle_combo.addItems([str(p) for p in ids])
        self.particle_combo.setCurrentIndex(-1)
        self.particle_combo.blockSignals(False)
        self.select_particle(self.particle if self.particle in ids else None)

    def _on_particle_text(self, text: str) -> None:
        if text.strip().lstrip("-").isdigit():
            self.select_particle(int(text))

    def select_particle(self, particle: int | None) -> None:
        """Show the MSD, step speeds and segments of one particle (``None`` clears)."""
        self.particle = particle
        self._show_track(particle)

    def _show_track(self, particle: int | None) -> None:
        result = self.result()
        fig = self.track_canvas.figure
        if result is None or particle is None:
            fig.clear()
            self.track_canvas.draw_idle()
            self.segment_table.set_frame(pd.DataFrame())
            self.track_info.setText("Click a track in the viewer, or choose a particle.")
            return
        a = result.analysis
        track = a.tracks[a.tracks["particle"] == particle]
        segments = a.segments[a.segments["particle"] == particle]
        if self.particle_combo.currentText() != str(particle):
            self.particle_combo.blockSignals(True)
            self.particle_combo.setCurrentText(str(particle))
            self.particle_combo.blockSignals(False)
        draw_track(
            fig,
            track,
            segments,
            pixel_size_um=result.pixel_size_um,
            frame_interval_s=result.frame_interval_s,
        )
        self.track_canvas.draw_idle()
        self.segment_table.set_frame(segments)
        if len(track):
            f0, f1 = int(track["frame"].min()), int(track["frame"].max())
            self.track_info.setText(
                f"particle {particle}: {len(track)} points, frames {f0}-{f1} "
                f"({(f1 - f0) * result.frame_interval_s:.2f} s), {len(segments)} segment(s)"
            )

    def select_at(self, world_position: tuple[float, ...]) -> int | None:
        """Select the track nearest a point of the canvas (world coordinates); returns its id."""
        layer = self.tracks_combo.layer()
        result = self.result()
        if layer is None or result is None or not layer.visible:
            return None
        t, y, x = layer.world_to_data(world_position)[-3:]
        shown = pd.DataFrame(layer.data[:, :4], columns=["particle", "frame", "y", "x"])
        particle = nearest_particle(shown, t, y, x, PICK_RADIUS_PX)
        if particle is not None:
            self.select_particle(particle)
            self.tabs.setCurrentIndex(1)
        return particle

    # ------------------------------------------------------------------ export

    def export_tables(self, folder: str | Path) -> Path:
        """Write the result as ``spt run`` does: ``folder/<name>/{spots,tracks,...}.csv``."""
        run = self.run()
        if run is None or run.result is None:
            raise SptInputError(None, "no spt result to export")
        return write_results(run.result, folder, run.config or PipelineConfig())

    def export_figures(self, folder: str | Path) -> list[Path]:
        """Save the speed distribution, the selected track and the tracks-by-stage figure (PNG)."""
        result = self.result()
        if result is None:
            raise SptInputError(None, "no spt result to export")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = [folder / f"{result.name}_speed_distribution.png"]
        self.speed_canvas.figure.savefig(written[-1], dpi=150)
        if self.particle is not None:
            written.append(folder / f"{result.name}_particle_{self.particle}.png")
            self.track_canvas.figure.savefig(written[-1], dpi=150)
        written.append(folder / f"{result.name}_tracks_by_stage.png")
        plot_tracks_by_stage(
            result.projection,
            result.analysis.tracks,
            written[-1],
            pixel_size_um=result.pixel_size_um,
            masks=result.masks,
            title=f"{result.name}: tracks by delivery stage",
        )
        return written

    def _export_tables_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export spt tables to folder")
        if folder:
            self._report(lambda: [self.export_tables(folder)])

    def _export_figures_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export spt figures to folder")
        if folder:
            self._report(lambda: self.export_figures(folder))

    @staticmethod
    def _report(export: Any) -> None:
        try:
            written = export()
        except (SptInputError, OSError) as err:
            show_error(str(err))
            return
        show_info("spt: wrote " + ", ".join(str(p) for p in written))


def _click_selector(widget: ResultsWidget):
    """A viewer mouse callback selecting the clicked track (a drag, e.g. panning, does not)."""
    ref = weakref.ref(widget)

    def on_click(viewer: Any, event: Any):
        if event.type != "mouse_press" or event.button != 1:
            return
        position = tuple(event.position)
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = True
            yield
        target = ref()
        if target is not None and not dragged:
            target.select_at(position)

    return on_click


def _remove_callback(viewer: Any, callback: Any):
    def remove(*_: Any) -> None:
        if callback in viewer.mouse_drag_callbacks:
            viewer.mouse_drag_callbacks.remove(callback)

    return remove
