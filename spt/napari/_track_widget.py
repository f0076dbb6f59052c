"""The "Track particles" widget: run the pipeline on an image layer, show and filter the tracks.

Tracking runs in a napari worker thread (the viewer stays responsive) with a progress bar and a
cancel button. Results become a Points layer (detections) and a Tracks layer whose features carry
particle, state, stage and speed; the display controls colour and filter them, and masks drawn
in a Labels layer re-classify the stages without re-tracking.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Layer, Points, Tracks
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)
from superqt import QCollapsible

from spt.config import MovieConfig, PipelineConfig
from spt.errors import SptInputError
from spt.napari._controls import ConfigForm, LayerCombo, ViewerWidget
from spt.napari._layers import (
    COLOR_BY,
    META_KEY,
    UNASSIGNED_COLOR,
    Run,
    mask_colormap,
    points_color_kwargs,
    spots_layer,
    track_filter,
    tracks_features,
    tracks_layer,
)
from spt.napari._run import Outcome, outcome_of, reanalyze, track_layer_frames
from spt.schema import MASK_LABELS, STAGES

ALL_STAGES = "all stages"
#: Parameter sections shown open; the others start collapsed.
MAIN_SECTIONS = ("detect", "link")
SECTIONS = ("detect", "link", "guided", "flow", "segment", "stages")


def has_run(layer: Layer) -> bool:
    """Whether a layer shows spt tracks (it carries a :class:`Run` in its metadata)."""
    return isinstance(layer.metadata.get(META_KEY), Run)


def _calibration(layer: Layer | None) -> tuple[float | None, float | None]:
    """Pixel size (um) and frame interval (s) of an Image layer, from spt's reader metadata."""
    if layer is None:
        return None, None
    meta = layer.metadata.get(META_KEY)
    if isinstance(meta, dict):
        return meta.get("pixel_size_um"), meta.get("frame_interval_s")
    return None, None


class _Signals(QObject):
    """Progress reports from the worker thread, delivered in the GUI thread."""

    progressed = Signal(str, int, int)


class TrackParticlesWidget(ViewerWidget):
    """Run spt on the selected image layer and inspect the tracks (a
    :class:`~spt.napari._controls.ViewerWidget`)."""

    def __init__(self, napari_viewer: Any):
        super().__init__(napari_viewer)
        self.worker: Any = None
        self._cancel = threading.Event()
        self._signals = _Signals()
        self._signals.progressed.connect(self._on_progress)
        self.last_error: str = ""
        self._hidden_by_filter: set[str] = set()

        layout = QVBoxLayout(self)
        layout.addWidget(self._input_box())
        layout.addWidget(self._parameters_box())
        layout.addWidget(self._run_box())
        layout.addWidget(self._display_box())
        layout.addWidget(self._masks_box())
        layout.addStretch(1)
        self._on_image_changed(self.image_combo.layer())

    # ------------------------------------------------------------------ layout

    def _input_box(self) -> QGroupBox:
        box = QGroupBox("Movie")
        form = QFormLayout(box)
        self.image_combo = LayerCombo(self.viewer, Image)
        self.masks_combo = LayerCombo(self.viewer, Labels, allow_none=True)
        self.first_frame = QSpinBox()
        self.last_frame = QSpinBox()
        self.pixel_size = QDoubleSpinBox(decimals=4, maximum=1e4, singleStep=0.01, suffix=" µm")
        self.frame_interval = QDoubleSpinBox(decimals=5, maximum=1e4, singleStep=0.001, suffix=" s")
        for box_ in (self.pixel_size, self.frame_interval):
            box_.setSpecialValueText("not set")
        self.image_combo.layer_changed.connect(self._on_image_changed)
        self.image_combo.setToolTip("Image layer (T, Y, X) to track")
        self.masks_combo.setToolTip(
            "Labels layer: 0 interstitium, 1 vessel, 2 cell, 3 nucleus. With masks, location "
            "drives the delivery stage; without, motion alone does."
        )
        self.pixel_size.setToolTip("Pixel size in micrometres (from the file's metadata if known)")
        self.frame_interval.setToolTip("Time between frames in seconds (e.g. 0.0333 at 30 fps)")
        frames = QHBoxLayout()
        frames.addWidget(self.first_frame)
        frames.addWidget(QLabel("to"))
        frames.addWidget(self.last_frame)
        form.addRow("image", self.image_combo)
        form.addRow("masks", self.masks_combo)
        form.addRow("frames", frames)
        form.addRow("pixel size", self.pixel_size)
        form.addRow("frame interval", self.frame_interval)
        return box

    def _parameters_box(self) -> QGroupBox:
        box = QGroupBox("Parameters")
        layout = QVBoxLayout(box)
        defaults = PipelineConfig()
        # the last configuration loaded: its sections without a form (output) are kept
        self._loaded = defaults
        self.forms = {name: ConfigForm(getattr(defaults, name)) for name in SECTIONS}
        for name in SECTIONS:
            section = QCollapsible(name)
            section.addWidget(self.forms[name])
            if name in MAIN_SECTIONS:
                section.expand(animate=False)
            layout.addWidget(section)
        buttons = QHBoxLayout()
        load, save = QPushButton("Load config…"), QPushButton("Save config…")
        load.clicked.connect(self._load_config_dialog)
        save.clicked.connect(self._save_config_dialog)
        buttons.addWidget(load)
        buttons.addWidget(save)
        layout.addLayout(buttons)
        return box

    def _run_box(self) -> QGroupBox:
        box = QGroupBox("Run")
        layout = QVBoxLayout(box)
        buttons = QHBoxLayout()
        self.run_button = QPushButton("Track particles")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        return box

    def _display_box(self) -> QGroupBox:
        box = QGroupBox("Display")
        form = QFormLayout(box)
        self.tracks_combo = LayerCombo(self.viewer, Tracks, accept=has_run)
        self.color_by = QComboBox()
        self.color_by.addItems(list(COLOR_BY))
        self.min_points = QSpinBox(minimum=1, maximum=100000, value=1)
        self.min_points.setToolTip("Show tracks with at least this many detections")
        self.stage_filter = QComboBox()
        self.stage_filter.addItems([ALL_STAGES, *STAGES])
        self.stage_filter.setToolTip("Show only tracks that pass through this delivery stage")
        self.tracks_combo.layer_changed.connect(lambda _: self.apply_display())
        self.color_by.currentTextChanged.connect(lambda _: self.apply_display())
        self.min_points.valueChanged.connect(lambda _: self.apply_display())
        self.stage_filter.currentTextChanged.connect(lambda _: self.apply_display())
        form.addRow("tracks", self.tracks_combo)
        form.addRow("colour by", self.color_by)
        form.addRow("min length", self.min_points)
        form.addRow("stage", self.stage_filter)
        return box

    def _masks_box(self) -> QGroupBox:
        box = QGroupBox("Masks and stages")
        layout = QVBoxLayout(box)
        legend = ", ".join(f"{v} {k}" for k, v in MASK_LABELS.items())
        layout.addWidget(QLabel(f"Paint labels: {legend}"))
        buttons = QHBoxLayout()
        self.new_masks_button = QPushButton("New masks layer")
        self.reclassify_button = QPushButton("Re-classify stages")
        self.reclassify_button.setToolTip(
            "Segment and classify the chosen tracks again with the chosen masks and parameters, "
            "without re-tracking"
        )
        self.new_masks_button.clicked.connect(self.new_masks_layer)
        self.reclassify_button.clicked.connect(self.reclassify)
        buttons.addWidget(self.new_masks_button)
        buttons.addWidget(self.reclassify_button)
        layout.addLayout(buttons)
        return box

    # ------------------------------------------------------------------ parameters

    def _on_image_changed(self, layer: Image | None) -> None:
        n = int(layer.data.shape[0]) if layer is not None and layer.ndim == 3 else 1
        for box in (self.first_frame, self.last_frame):
            box.setRange(0, max(n - 1, 0))
        self.first_frame.setValue(0)
        self.last_frame.setValue(max(n - 1, 0))
        px, dt = _calibration(layer)
        self.pixel_size.setValue(px or 0.0)
        self.frame_interval.setValue(dt or 0.0)
        if layer is not None:
            for candidate in self.viewer.layers:
                if isinstance(candidate, Labels) and candidate.name == f"{layer.name} masks":
                    self.masks_combo.set_layer(candidate)

    def config(self) -> PipelineConfig:
        """The configuration entered in the widget."""
        px, dt = self.pixel_size.value(), self.frame_interval.value()
        return replace(
            self._loaded,
            movie=replace(
                self._loaded.movie, pixel_size_um=px or None, frame_interval_s=dt or None
            ),
            **{name: form.value() for name, form in self.forms.items()},
        )

    def set_config(self, config: PipelineConfig) -> None:
        """Show ``config`` in the widget (calibration only when the config sets it)."""
        self._loaded = config
        for name, form in self.forms.items():
            form.set_value(getattr(config, name))
        if config.movie.pixel_size_um:
            self.pixel_size.setValue(config.movie.pixel_size_um)
        if config.movie.frame_interval_s:
            self.frame_interval.setValue(config.movie.frame_interval_s)

    def _load_config_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load spt config", "", "TOML (*.toml)")
        if path:
            try:
                self.set_config(PipelineConfig.from_toml(path))
            except SptInputError as err:
                self._fail(str(err))

    def _save_config_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save spt config", "spt.toml", "TOML (*.toml)")
        if path:
            Path(path).write_text(self.config().to_toml())

    # ------------------------------------------------------------------ tracking

    def run(self) -> Any:
        """Track particles in the chosen image layer in a worker thread; returns the worker."""
        if self.worker is not None:
            return None
        layer = self.image_combo.layer()
        try:
            if layer is None:
                raise SptInputError(None, "no image layer: open a movie first")
            if layer.rgb or layer.multiscale or layer.ndim != 3:
                raise SptInputError(layer.name, "need a single-channel movie layer (T, Y, X)")
            config = self.config()
            masks_layer = self.masks_combo.layer()
            kwargs = dict(
                name=layer.name,
                source=str(layer.source.path or layer.name),
                pixel_size_um=config.movie.pixel_size_um,
                frame_interval_s=config.movie.frame_interval_s,
                first_frame=self.first_frame.value(),
                stop_frame=self.last_frame.value() + 1,
                # a copy: painting may go on while the worker reads the masks
                masks=None if masks_layer is None else np.array(masks_layer.data),
            )
            if not (kwargs["pixel_size_um"] and kwargs["frame_interval_s"]):
                raise SptInputError(
                    layer.name, "enter the pixel size (µm) and frame interval (s) of the movie"
                )
        except SptInputError as err:
            self._fail(str(err))
            return None
        worker = create_worker(
            outcome_of,
            track_layer_frames,
            layer.data,
            config,
            progress=self._signals.progressed.emit,
            cancelled=self._cancel.is_set,
            _start_thread=False,
            **kwargs,
        )
        return self._start(
            worker, f"tracking {layer.name}…", lambda r: self._show_result(r, config, layer)
        )

    def _start(self, worker: Any, message: str, on_result: Any) -> Any:
        """Start ``worker`` (returning an :class:`Outcome`); ``on_result(value)`` on success."""
        self._cancel.clear()
        self.worker = worker
        self.last_error = ""
        worker.returned.connect(lambda outcome: self._on_outcome(outcome, on_result))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.run_button.setEnabled(False)
        self.reclassify_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)
        self.status.setText(message)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running worker to stop at its next check (between blocks of frames)."""
        if self.worker is not None:
            self._cancel.set()
            self.status.setText("cancelling…")

    def _on_progress(self, phase: str, done: int, total: int) -> None:
        if total:
            self.progress.setRange(0, total)
            self.progress.setValue(done)
            self.status.setText(f"{phase}: frame {done} of {total}")
        else:
            self.progress.setRange(0, 0)
            self.status.setText(f"{phase}…")

    def _on_outcome(self, outcome: Outcome, on_result: Any) -> None:
        if outcome.cancelled:
            self.status.setText("cancelled")
        elif outcome.error is not None:
            self._fail(str(outcome.error))
        else:
            on_result(outcome.value)

    def _on_error(self, err: Exception) -> None:
        # a bug, not bad input: napari shows the traceback; the widget says what failed
        self.last_error = f"{type(err).__name__}: {err}"
        self.status.setText(self.last_error)

    def _fail(self, message: str) -> None:
        self.last_error = message
        self.status.setText(message)
        show_error(message)

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.reclassify_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if not self._cancel.is_set() and not self.last_error else 0)

    def _show_result(self, result: Any, config: PipelineConfig, image: Layer | None) -> None:
        run = Run.from_result(result, config)
        self.show_run(run, result.name, like=image)
        a = result.analysis
        n_tracks = a.tracks["particle"].nunique() if len(a.tracks) else 0
        self.status.setText(
            f"{len(result.spots)} detections, {n_tracks} tracks, {len(a.segments)} segments "
            f"in {result.n_frames} frames"
        )
        show_info(f"spt: {n_tracks} tracks in {result.name}")

    def show_run(
        self, run: Run, name: str, like: Layer | None = None
    ) -> tuple[Points, Tracks | None]:
        """Add (or replace) the Points and Tracks layers of ``run``, aligned with layer ``like``.

        A run without tracks gets no Tracks layer (napari cannot show an empty one).
        """
        extra = {}
        if like is not None and like.ndim == 3:
            extra = {
                "scale": tuple(like.scale),
                "translate": tuple(like.translate),
                "units": tuple(like.units),
            }
        color_by = self.color_by.currentText()
        new = [Layer.create(*spots_layer(run, f"{name} spots", extra=extra, color_by=color_by))]
        if len(run.tracks):
            new.append(
                Layer.create(*tracks_layer(run, f"{name} tracks", extra=extra, color_by=color_by))
            )
        for layer in new:
            old = [i for i, lay in enumerate(self.viewer.layers) if lay.name == layer.name]
            if old:
                self.viewer.layers.pop(old[0])
                self.viewer.layers.insert(old[0], layer)
            else:
                self.viewer.layers.append(layer)
        tracks = new[1] if len(new) > 1 else None
        if tracks is not None:
            self.tracks_combo.set_layer(tracks)
            self.apply_display()
        return new[0], tracks

    # ------------------------------------------------------------------ display

    def _run_layers(self) -> tuple[Run | None, Tracks | None, list[Points]]:
        tracks = self.tracks_combo.layer()
        if tracks is None:
            return None, None, []
        run = tracks.metadata[META_KEY]
        points = [
            lay
            for lay in self.viewer.layers
            if isinstance(lay, Points) and lay.metadata.get(META_KEY) is run
        ]
        return run, tracks, points

    def apply_display(self) -> None:
        """Colour and filter the chosen Tracks layer (and its Points layer) as the controls say."""
        run, tracks, points = self._run_layers()
        if run is None:
            return
        color_by = self.color_by.currentText()
        stage = self.stage_filter.currentText()
        stage = None if stage == ALL_STAGES else stage
        min_points = self.min_points.value()
        keep = track_filter(run.tracks, min_points=min_points, stage=stage)
        shown = run.tracks[keep].sort_values(["particle", "frame"], kind="stable")
        prop = COLOR_BY[color_by][0]
        if not len(shown):  # napari cannot show an empty Tracks layer: hide it
            self.status.setText("no track passes the display filters")
            self._hidden_by_filter.add(tracks.name)
            tracks.visible = False
            shown = run.tracks
        elif tracks.name in self._hidden_by_filter:
            self._hidden_by_filter.discard(tracks.name)
            tracks.visible = True
        features = tracks_features(run, shown)
        with warnings.catch_warnings():
            # napari warns when new data drop the colour-by feature; it is set again below
            warnings.simplefilter("ignore", UserWarning)
            if len(tracks.data) != len(shown) or not np.array_equal(
                tracks.data[:, 0], shown["particle"].to_numpy()
            ):
                tracks.data = shown[["particle", "frame", "y", "x"]].to_numpy(dtype=float)
            tracks.features = features
        tracks.color_by = prop if prop in tracks.properties_to_color_by else "track_id"
        kept = set(shown["particle"])
        for layer in points:
            f = layer.features
            particle = f["particle"].to_numpy() if "particle" in f else np.full(len(f), -1)
            visible = np.isin(particle, list(kept))
            if min_points <= 1 and stage is None:
                visible |= particle < 0
            layer.shown = visible
            # a plain colour first: napari cannot switch a colormap straight to a category cycle
            layer.face_color = UNASSIGNED_COLOR
            settings = points_color_kwargs(layer.features, color_by)
            for key in ("face_color_cycle", "face_colormap", "face_color"):
                if key in settings:
                    setattr(layer, key, settings[key])

    # ------------------------------------------------------------------ masks

    def new_masks_layer(self) -> Labels | None:
        """Add an empty masks Labels layer over the chosen image, ready to paint vessels (1)."""
        image = self.image_combo.layer()
        if image is None or image.ndim != 3:
            self._fail("choose a movie image layer first")
            return None
        labels = self.viewer.add_labels(
            np.zeros(image.data.shape[-2:], np.uint8),
            name=f"{image.name} masks",
            scale=tuple(image.scale[-2:]),
            translate=tuple(image.translate[-2:]),
            units=tuple(image.units[-2:]),
            colormap=mask_colormap(),
            opacity=0.4,
        )
        labels.selected_label = MASK_LABELS["vessel"]
        labels.mode = "paint"
        self.masks_combo.set_layer(labels)
        return labels

    def reclassify(self) -> Any:
        """Segment and classify the chosen tracks again with the masks; returns the worker."""
        if self.worker is not None:
            return None
        run, tracks_layer_, _ = self._run_layers()
        try:
            if run is None:
                raise SptInputError(None, "no spt tracks layer to re-classify")
            px = run.pixel_size_um or self.pixel_size.value() or None
            dt = run.frame_interval_s or self.frame_interval.value() or None
            if not (px and dt):
                raise SptInputError(
                    tracks_layer_.name, "enter the pixel size (µm) and frame interval (s)"
                )
            masks_layer = self.masks_combo.layer()
            masks = None if masks_layer is None else np.array(masks_layer.data)
            result = run.result
            if result is not None:
                projection, n_frames, name, source = (
                    result.projection,
                    result.n_frames,
                    result.name,
                    str(result.source),
                )
            else:
                shape = (
                    masks.shape[-2:]
                    if masks is not None
                    else (
                        int(np.ceil(run.tracks["y"].max())) + 1,
                        int(np.ceil(run.tracks["x"].max())) + 1,
                    )
                )
                projection = np.zeros(shape, np.float32)
                n_frames = int(run.tracks["frame"].max()) + 1
                name = source = tracks_layer_.name.removesuffix(" tracks")
            config = replace(
                self.config(), movie=MovieConfig(pixel_size_um=px, frame_interval_s=dt)
            )
        except SptInputError as err:
            self._fail(str(err))
            return None
        worker = create_worker(
            outcome_of,
            reanalyze,
            run.tracks,
            run.spots,
            config,
            name=name,
            source=source,
            pixel_size_um=px,
            frame_interval_s=dt,
            projection=projection,
            n_frames=n_frames,
            masks=masks,
            _start_thread=False,
        )
        like = tracks_layer_
        return self._start(
            worker, f"re-classifying {name}…", lambda r: self._show_result(r, config, like)
        )
