"""napari plugin in a real viewer (Xvfb): sample via the manifest, widgets run to completion."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, SAMPLE, SAMPLE_MASKS
from qtpy.QtCore import Qt

from spt.config import PipelineConfig
from spt.io import read_track_table
from spt.napari._layers import META_KEY, STATE_COLORS, UNASSIGNED_COLOR, Run
from spt.pipeline import analyze_tracks
from spt.plot import STAGE_COLORS
from spt.schema import SEGMENT_COLUMNS, STAGE_VELOCITY_COLUMNS, STAGES, STATES, TRACK_COLUMNS

MANIFEST = ROOT / "spt" / "napari" / "napari.yaml"
LAST_FRAME = 39  # widget runs use the first 40 frames of the sample
RUN_TIMEOUT_MS = 120_000


def rgba(colors):
    from napari.utils.colormaps.standardize_color import transform_color

    return transform_color(list(colors))


@pytest.fixture
def viewer(make_napari_viewer):
    """A shown viewer with the spt plugin, from its entry point or else from the manifest file."""
    from npe2 import PluginManager, PluginManifest

    viewer = make_napari_viewer(show=True)
    pm = PluginManager.instance()
    try:
        pm.get_manifest("spt")
    except KeyError:  # running from a checkout that is not pip-installed with the entry point
        pm.register(PluginManifest.from_file(MANIFEST))
    return viewer


@pytest.fixture(scope="module")
def sample_result():
    """The pipeline on the first 40 frames of the sample, computed once for the module."""
    from spt.io import read_masks, read_movie
    from spt.napari._run import track_layer_frames

    movie = read_movie(SAMPLE)
    return track_layer_frames(
        movie.frames,
        PipelineConfig(),
        name="sample",
        source=str(SAMPLE),
        pixel_size_um=movie.pixel_size_um,
        frame_interval_s=movie.frame_interval_s,
        stop_frame=LAST_FRAME + 1,
        masks=read_masks(SAMPLE_MASKS, shape=movie.shape),
    )


def show_result(viewer, result):
    """Show a ready result as "Track particles" does after a run; returns the widget."""
    image = viewer.layers["sample"]
    _, widget = viewer.window.add_plugin_dock_widget("spt", "Track particles")
    widget.show_run(Run.from_result(result, PipelineConfig()), "sample", like=image)
    return widget


class _PersistedEvent:
    """What napari's canvas hands to drag callbacks: a wrapper re-pointed at each new event."""

    def __init__(self, event):
        self.__wrapped__ = event

    def __getattr__(self, name):
        return getattr(self.__wrapped__, name)


def click(viewer, world_position, drag_to=None):
    """A left click (or drag) on the canvas, through napari's mouse-callback machinery."""
    from types import SimpleNamespace

    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    def event(kind, position):
        return SimpleNamespace(
            type=kind,
            position=position,
            button=1,
            modifiers=(),
            is_dragging=kind == "mouse_move",
            handled=False,
            view_direction=None,
            dims_displayed=[1, 2],
        )

    mouse_press_callbacks(viewer, _PersistedEvent(event("mouse_press", world_position)))
    if drag_to is not None:
        mouse_move_callbacks(viewer, event("mouse_move", drag_to))
    mouse_release_callbacks(viewer, event("mouse_release", drag_to or world_position))


def open_sample(viewer):
    viewer.open_sample("spt", "sample")
    return viewer.layers["sample"], viewer.layers["sample masks"]


def run_tracking(viewer, qtbot):
    """Dock "Track particles", run it on the first 40 frames, wait until done.

    Returns the widget, the progress bar values seen and the ticks of a 10 ms GUI timer during
    the run (the viewer stays responsive while the worker thread tracks).
    """
    from qtpy.QtCore import QTimer

    _, widget = viewer.window.add_plugin_dock_widget("spt", "Track particles")
    widget.last_frame.setValue(LAST_FRAME)
    progress, ticks = [], []
    widget.progress.valueChanged.connect(progress.append)
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(10)
    qtbot.mouseClick(widget.run_button, Qt.MouseButton.LeftButton)
    assert widget.worker is not None and not widget.run_button.isEnabled()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)
    timer.stop()
    assert widget.last_error == "", widget.last_error
    return widget, progress, len(ticks)


def test_track_particles_widget_end_to_end(viewer, qtbot):
    image, masks = open_sample(viewer)  # through the manifest's sample-data contribution
    assert image.data.shape == (250, 128, 128)
    np.testing.assert_allclose(image.scale, (1 / 30, 0.2, 0.2))
    assert [str(u) for u in image.units] == ["second", "micrometer", "micrometer"]
    assert masks.data.shape == (128, 128) and set(np.unique(masks.data)) == {0, 1, 2, 3}
    np.testing.assert_allclose(masks.scale, (0.2, 0.2))

    widget, progress, ticks = run_tracking(viewer, qtbot)
    assert widget.masks_combo.currentText() == "sample masks"
    assert widget.progress.value() == widget.progress.maximum()
    assert len(set(progress)) >= 3, progress  # the bar moved through the frames
    assert ticks >= 5, "the GUI event loop was blocked during the run"

    spots, tracks = viewer.layers["sample spots"], viewer.layers["sample tracks"]
    assert type(spots).__name__ == "Points" and type(tracks).__name__ == "Tracks"
    np.testing.assert_allclose(tracks.scale, image.scale)
    np.testing.assert_allclose(spots.scale, image.scale)
    f = tracks.features
    for column in ("particle", "state", "stage", "speed_um_s"):
        assert column in f and column in spots.features
    assert set(f["stage"]) <= set(STAGES) and set(f["state"]) <= set(STATES)
    assert f["frame"].max() <= LAST_FRAME and spots.data[:, 0].max() <= LAST_FRAME
    np.testing.assert_array_equal(f["particle"], tracks.data[:, 0])
    assert (f["speed_um_s"] >= 0).all() and f["speed_um_s"].max() > 1.0  # flow is fast
    run = tracks.metadata[META_KEY]
    assert spots.metadata[META_KEY] is run and run.result.n_frames == LAST_FRAME + 1

    # colour by: stage and state use their fixed colours, speed and particle a colormap
    assert [widget.color_by.itemText(i) for i in range(widget.color_by.count())] == [
        "stage",
        "state",
        "speed",
        "particle",
    ]
    np.testing.assert_allclose(tracks.track_colors, rgba(STAGE_COLORS[s] for s in f["stage"]))
    stage_of_spot = spots.features["stage"]
    expected = rgba(STAGE_COLORS.get(s, UNASSIGNED_COLOR) for s in stage_of_spot)
    np.testing.assert_allclose(spots.face_color, expected, atol=1e-6)
    widget.color_by.setCurrentText("state")
    assert tracks.color_by == "state_id"
    np.testing.assert_allclose(tracks.track_colors, rgba(STATE_COLORS[s] for s in f["state"]))
    widget.color_by.setCurrentText("speed")
    assert tracks.color_by == "speed_um_s"
    fastest = np.argmax(tracks.features["speed_um_s"].to_numpy())
    slowest = np.argmin(tracks.features["speed_um_s"].to_numpy())
    assert not np.allclose(tracks.track_colors[fastest], tracks.track_colors[slowest])
    widget.color_by.setCurrentText("particle")
    assert tracks.color_by == "track_id"
    widget.color_by.setCurrentText("stage")

    # filters: min length and stage
    lengths = run.tracks.groupby("particle").size()
    widget.min_points.setValue(10)
    shown = tracks.features.groupby("particle").size()
    assert (shown >= 10).all() and set(shown.index) == set(lengths.index[lengths >= 10])
    assert set(spots.features["particle"][spots.shown]) == set(shown.index)
    widget.min_points.setValue(1)
    stage = run.tracks["stage"].value_counts().index[-1]  # the rarest stage present
    widget.stage_filter.setCurrentText(stage)
    per_track = tracks.features.groupby("particle")["stage"].agg(set)
    assert per_track.map(lambda s: stage in s).all()
    assert len(per_track) == run.tracks.loc[run.tracks["stage"] == stage, "particle"].nunique()
    widget.stage_filter.setCurrentText("all stages")
    assert len(tracks.data) == len(run.tracks)

    # the canvas shows the movie and the stage-coloured tracks
    viewer.dims.set_current_step(0, LAST_FRAME)
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.std() > 10
    circulation = np.array([int(STAGE_COLORS["circulation"][i : i + 2], 16) for i in (1, 3, 5)])
    near = np.abs(shot[..., :3].astype(int) - circulation).max(axis=-1) < 40
    assert near.sum() > 20, "no circulation-coloured track drawn"
    tracks.visible = spots.visible = False
    without = viewer.screenshot(canvas_only=True, flash=False)
    near = np.abs(without[..., :3].astype(int) - circulation).max(axis=-1) < 40
    assert near.sum() < 5


def test_cancel_stops_a_run_without_adding_layers(viewer, qtbot):
    open_sample(viewer)
    _, widget = viewer.window.add_plugin_dock_widget("spt", "Track particles")
    assert widget.last_frame.value() == 249
    widget.run()
    qtbot.mouseClick(widget.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)
    assert widget.status.text() == "cancelled"
    assert [layer.name for layer in viewer.layers] == ["sample", "sample masks"]
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_run_refuses_a_movie_without_calibration(viewer, qtbot):
    viewer.add_image(np.zeros((5, 32, 32), np.uint16), name="plain")
    _, widget = viewer.window.add_plugin_dock_widget("spt", "Track particles")
    assert widget.pixel_size.value() == 0
    assert widget.run() is None
    assert "enter the pixel size" in widget.last_error
    assert [layer.name for layer in viewer.layers] == ["plain"]


def test_a_loaded_config_is_run_whole(viewer, tmp_path):
    """Every section of a TOML configuration loaded in the widget reaches the run, including
    the guided and flow passes (once dropped silently: the widget showed four sections only)."""
    _, widget = viewer.window.add_plugin_dock_widget("spt", "Track particles")
    d = PipelineConfig()
    custom = replace(
        d,
        flow=replace(d.flow, enabled=False),
        guided=replace(d.guided, rejoin_gap_frames=40),
        output=replace(d.output, report=False),
    )
    path = tmp_path / "custom.toml"
    path.write_text(custom.to_toml())
    loaded = PipelineConfig.from_toml(path)
    assert not loaded.flow.enabled and loaded.guided.rejoin_gap_frames == 40
    assert not loaded.output.report
    widget.set_config(loaded)
    config = widget.config()
    assert not config.flow.enabled and config.guided.rejoin_gap_frames == 40
    assert not config.output.report  # a section without a form is kept as loaded
    assert config.detect == loaded.detect and config.segment == loaded.segment
    # and edited in the widget: the flow pass's form switches it back on
    widget.forms["flow"].set_value(PipelineConfig().flow)
    assert widget.config().flow.enabled


def test_results_widget_tables_track_details_and_export(viewer, sample_result, tmp_path):
    open_sample(viewer)
    show_result(viewer, sample_result)
    _, results = viewer.window.add_plugin_dock_widget("spt", "Results")
    tracks = viewer.layers["sample tracks"]
    result = tracks.metadata[META_KEY].result
    assert results.tracks_combo.currentText() == "sample tracks"
    some = result.analysis.tracks.iloc[0]
    start = tuple(tracks.data_to_world((some["frame"], some["y"], some["x"])))
    click(viewer, start, drag_to=(start[0], start[1] + 5, start[2] + 5))  # panning
    assert results.particle is None

    table = results.stage_table
    assert table.rowCount() == len(result.analysis.stage_velocities) > 0
    headers = [table.horizontalHeaderItem(j).text() for j in range(table.columnCount())]
    # The DESIGN columns come first; the extra statistics (CIs, noise floor...) follow.
    assert headers[: len(STAGE_VELOCITY_COLUMNS)] == list(STAGE_VELOCITY_COLUMNS)
    assert headers == list(result.analysis.stage_velocities.columns)
    assert [table.item(i, 0).text() for i in range(table.rowCount())] == list(
        result.analysis.stage_velocities["stage"]
    )
    [ax] = results.speed_canvas.figure.axes  # one box of step speeds per stage
    labels = [t.get_text().split(" (")[0] for t in ax.get_yticklabels()]
    assert labels == list(result.analysis.stage_velocities["stage"])

    # select the longest track by "clicking" on its point in the current frame
    longest = result.analysis.tracks.groupby("particle").size().idxmax()
    point = result.analysis.tracks[result.analysis.tracks["particle"] == longest].iloc[5]
    viewer.dims.set_current_step(0, int(point["frame"]))
    world = tuple(tracks.data_to_world((point["frame"], point["y"] + 1, point["x"] - 1)))
    click(viewer, world)
    assert results.particle == longest
    assert results.particle_combo.currentText() == str(longest)
    ax_msd, ax_speed = results.track_canvas.figure.axes
    assert len(ax_msd.lines[0].get_xdata()) >= 3
    segments = result.analysis.segments
    assert results.segment_table.rowCount() == (segments["particle"] == longest).sum()
    steps = ax_speed.lines[0].get_ydata()
    assert len(steps) == (result.analysis.tracks["particle"] == longest).sum() - 1

    folder = results.export_tables(tmp_path / "tables")
    assert folder == tmp_path / "tables" / "sample"
    back = read_track_table(folder / "tracks.csv")
    assert set(TRACK_COLUMNS) <= set(back.columns) and len(back) == len(result.analysis.tracks)
    assert set(SEGMENT_COLUMNS) <= set(pd.read_csv(folder / "segments.csv").columns)
    written = list(pd.read_csv(folder / "stage_velocities.csv").columns)
    assert written[: len(STAGE_VELOCITY_COLUMNS)] == list(STAGE_VELOCITY_COLUMNS)
    figures = results.export_figures(tmp_path / "figures")
    assert [p.name for p in figures] == [
        "sample_speed_distribution.png",
        f"sample_particle_{longest}.png",
        "sample_tracks_by_stage.png",
    ]
    import matplotlib.image

    for path in figures:
        assert matplotlib.image.imread(path).std() > 0.01, path

    # the exported folder opens again through the reader, and Results follows it
    viewer.layers.clear()
    viewer.open(str(folder), plugin="spt")
    names = [layer.name for layer in viewer.layers]
    assert names == ["sample", "sample masks", "sample spots", "sample tracks"]
    assert viewer.layers["sample tracks"].color_by == "stage_id"
    assert results.tracks_combo.currentText() == "sample tracks"
    assert results.stage_table.rowCount() == len(result.analysis.stage_velocities)


def test_saving_tracks_through_napari_writes_the_track_table(viewer, sample_result, tmp_path):
    open_sample(viewer)
    show_result(viewer, sample_result)
    tracks = viewer.layers["sample tracks"]
    [written] = tracks.save(str(tmp_path / "tracks.csv"), plugin="spt")
    back = pd.read_csv(written)
    assert list(back.columns) == list(TRACK_COLUMNS)
    assert len(back) == len(tracks.data) == len(sample_result.analysis.tracks)


def test_masks_edited_in_napari_reclassify_without_retracking(viewer, qtbot, sample_result):
    image, _ = open_sample(viewer)
    widget = show_result(viewer, sample_result)
    before = viewer.layers["sample tracks"].metadata[META_KEY].tracks.copy()

    drawn = widget.new_masks_layer()
    assert drawn.data.shape == (128, 128) and drawn.mode == "paint"
    np.testing.assert_allclose(drawn.scale, image.scale[1:])
    drawn.data = np.full((128, 128), 3, np.uint8)  # "paint" the nucleus everywhere
    assert widget.masks_combo.layer() == drawn
    widget.reclassify()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)
    assert widget.last_error == ""

    after = viewer.layers["sample tracks"].metadata[META_KEY]
    pd.testing.assert_frame_equal(
        after.tracks[["particle", "frame", "x", "y"]], before[["particle", "frame", "x", "y"]]
    )
    raw = before.drop(columns=["segment", "state", "stage"])
    direct = analyze_tracks(
        raw, PipelineConfig(), pixel_size_um=0.2, frame_interval_s=1 / 30, masks=drawn.data
    )
    pd.testing.assert_frame_equal(after.tracks, direct.tracks)
    assert not after.tracks["stage"].equals(before["stage"])
    features = viewer.layers["sample tracks"].features
    np.testing.assert_array_equal(features["stage"], after.tracks["stage"])


def test_a_plain_track_table_is_analysed_by_reclassify(viewer, qtbot, sample_result, tmp_path):
    raw = sample_result.analysis.tracks[["frame", "x", "y", "particle"]]
    path = tmp_path / "mine.csv"
    raw.to_csv(path, index=False)
    viewer.open(str(path), plugin="spt")
    tracks = viewer.layers["mine tracks"]
    assert "stage" not in tracks.features and tracks.metadata[META_KEY].result is None
    _, widget = viewer.window.add_plugin_dock_widget("spt", "Track particles")
    assert widget.tracks_combo.currentText() == "mine tracks"
    widget.pixel_size.setValue(0.2)
    widget.frame_interval.setValue(1 / 30)
    assert widget.run() is None  # no image layer to track in; the tracks can still be analysed
    widget.reclassify()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=RUN_TIMEOUT_MS)
    assert widget.last_error == ""
    analysed = viewer.layers["mine tracks"]
    assert set(analysed.features["stage"]) <= set(STAGES)
    assert analysed.metadata[META_KEY].result.pixel_size_um == pytest.approx(0.2)
    assert len(analysed.data) == len(raw)
    assert [layer.name for layer in viewer.layers] == ["mine spots", "mine tracks"]
