"""napari plugin without a viewer: manifest, headless import, readers, writers, sample, runs."""

import subprocess
import sys
import tomllib
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import ROOT, SAMPLE, SAMPLE_MASKS

from spt.config import PipelineConfig
from spt.errors import SptInputError
from spt.io import read_masks, read_movie, read_track_table, write_movie
from spt.napari import _reader, _writer
from spt.napari._layers import (
    COLOR_BY,
    META_KEY,
    STATE_COLORS,
    Run,
    point_speeds,
    track_filter,
    tracks_color_options,
    tracks_layer,
)
from spt.napari._results_widget import nearest_particle
from spt.napari._run import Cancelled, reanalyze, track_layer_frames
from spt.napari._sample_data import make_sample_data
from spt.pipeline import analyze_tracks, process_movie, run
from spt.plot import STAGE_COLORS
from spt.schema import SEGMENT_COLUMNS, SPOT_COLUMNS, STAGES, STATES, TRACK_COLUMNS

MANIFEST = ROOT / "spt" / "napari" / "napari.yaml"
GUI_PACKAGES = {"napari", "PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy", "vispy", "magicgui"}
N_FRAMES = 40


@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    """The first 40 frames of the sample as an OME-TIFF, with the sample's masks beside it."""
    folder = tmp_path_factory.mktemp("crop")
    movie = read_movie(SAMPLE)
    path = write_movie(
        folder / "crop.ome.tif",
        np.asarray(movie.frames[:N_FRAMES]),
        pixel_size_um=movie.pixel_size_um,
        frame_interval_s=movie.frame_interval_s,
    )
    (folder / "crop_masks.tif").write_bytes(SAMPLE_MASKS.read_bytes())
    return path


@pytest.fixture(scope="module")
def results(crop, tmp_path_factory):
    """``spt run`` output for the crop: (batch folder, MovieResult)."""
    out = tmp_path_factory.mktemp("out")
    outcome = run([crop], out, PipelineConfig())
    assert outcome.n_failed == 0
    return out, outcome.results[0]


def layers_by_type(layers):
    return {kind: (data, kwargs) for data, kwargs, kind in layers}


# --------------------------------------------------------------------------- packaging


def test_import_spt_does_not_import_gui_packages():
    code = (
        "import sys, spt, spt.pipeline, spt.cli, spt.io, spt.plot, spt.config, spt.napari\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {GUI_PACKAGES!r})\n"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == ""


def test_manifest_is_valid_and_importable():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()
    c = manifest.contributions
    assert manifest.name == "spt"
    assert [s.key for s in c.sample_data] == ["sample"]
    assert {w.display_name for w in c.widgets} == {"Track particles", "Results"}
    assert {w.display_name for w in c.writers} == {"spt tracks", "spt segments", "spt spots"}
    cli = subprocess.run(
        [Path(sys.executable).with_name("npe2"), "validate", str(MANIFEST)],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr


def test_pyproject_declares_the_manifest_entry_point():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["napari.manifest"]["spt"] == "spt.napari:napari.yaml"
    assert "napari/napari.yaml" in meta["tool"]["setuptools"]["package-data"]["spt"]


# --------------------------------------------------------------------------- readers


def test_movie_reader_applies_the_physical_scale_and_finds_masks():
    reader = _reader.get_movie_reader(str(SAMPLE))
    assert reader is not None
    layers = layers_by_type(reader(str(SAMPLE)))
    data, kw = layers["image"]
    assert data.shape == (250, 128, 128)
    np.testing.assert_allclose(kw["scale"], (1 / 30, 0.2, 0.2))
    assert kw["units"] == ("s", "µm", "µm")
    assert kw["metadata"][META_KEY]["pixel_size_um"] == pytest.approx(0.2)
    masks, mkw = layers["labels"]
    np.testing.assert_array_equal(masks, read_masks(SAMPLE_MASKS, shape=(128, 128)))
    np.testing.assert_allclose(mkw["scale"], (0.2, 0.2))


def test_masks_file_reads_as_labels_calibrated_by_its_movie():
    reader = _reader.get_movie_reader(SAMPLE_MASKS)
    [(data, kw, kind)] = reader(SAMPLE_MASKS)
    assert kind == "labels" and data.dtype == np.uint8
    assert set(np.unique(data)) <= {0, 1, 2, 3}
    np.testing.assert_allclose(kw["scale"], (0.2, 0.2))


def test_uncalibrated_movie_opens_in_pixels_with_a_warning(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((5, 16, 16), np.uint16))
    reader = _reader.get_movie_reader(path)
    with pytest.warns(UserWarning, match="no pixel size"):
        [(data, kw, kind)] = reader(path)
    assert kind == "image" and data.shape == (5, 16, 16)
    assert kw["scale"] == (1.0, 1.0, 1.0) and "units" not in kw
    assert kw["metadata"][META_KEY]["pixel_size_um"] is None


def test_readers_return_none_for_what_they_cannot_read(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    not_tiff = tmp_path / "fake.tif"
    not_tiff.write_text("not a tiff")
    image_2d = tmp_path / "image.tif"
    tifffile.imwrite(image_2d, np.zeros((16, 16), np.uint16))
    other_csv = tmp_path / "other.csv"
    other_csv.write_text("a,b\n1,2\n")
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    for path in (text, not_tiff, image_2d, other_csv, empty_folder, tmp_path / "missing.tif"):
        assert _reader.get_movie_reader(path) is None, path
        assert _reader.get_results_reader(path) is None, path
    assert _reader.get_movie_reader([SAMPLE, SAMPLE]) is None
    assert _reader.get_results_reader(SAMPLE) is None


def check_result_layers(layers, result):
    by_type = layers_by_type(layers)
    assert set(by_type) == {"image", "labels", "points", "tracks"}
    tracks, kw = by_type["tracks"]
    features = kw["features"]
    assert len(tracks) == len(result.analysis.tracks)
    for column in ("particle", "state", "stage", "speed_um_s", "stage_id", "state_id"):
        assert column in features
    assert set(features["stage"]) <= set(STAGES) and set(features["state"]) <= set(STATES)
    assert kw["color_by"] == "stage_id"
    np.testing.assert_allclose(kw["scale"], (result.frame_interval_s, 0.2, 0.2))
    points, pkw = by_type["points"]
    assert len(points) == len(result.spots)
    assert pkw["face_color"] == "stage"
    assert isinstance(kw["metadata"][META_KEY], Run)
    return kw["metadata"][META_KEY]


def test_results_folder_opens_as_spots_tracks_masks_and_movie(results):
    out, result = results
    for path in (out / "crop", out, out / "crop" / "tracks.csv"):
        reader = _reader.get_results_reader(path)
        assert reader is not None, path
        layer_run = check_result_layers(reader(path), result)
        pd.testing.assert_frame_equal(
            layer_run.result.analysis.segments.reset_index(drop=True),
            pd.read_csv(out / "crop" / "segments.csv"),
        )
        assert layer_run.result.masks is not None


def test_stage_and_state_colours_are_fixed_per_category(results):
    from napari.layers import Tracks
    from napari.utils.colormaps.standardize_color import transform_color

    _, result = results
    data, kwargs, _ = tracks_layer(Run.from_result(result), "t")
    layer = Tracks(data, **kwargs)
    stages = layer.features["stage"].to_numpy()
    expected = transform_color([STAGE_COLORS[s] for s in stages])
    np.testing.assert_allclose(layer.track_colors, expected, atol=1e-6)
    layer.color_by = COLOR_BY["state"][0]
    expected = transform_color([STATE_COLORS[s] for s in layer.features["state"]])
    np.testing.assert_allclose(layer.track_colors, expected, atol=1e-6)


def test_generic_track_table_opens_in_pixels(tmp_path):
    table = pd.DataFrame(
        {
            "frame": [0, 1, 2, 0, 1],
            "x": [1.0, 2, 3, 9, 9],
            "y": [5.0, 5, 5, 1, 2],
            "particle": [3, 3, 3, 7, 7],
        }
    )
    path = tmp_path / "mine.csv"
    table.to_csv(path, index=False)
    layers = layers_by_type(_reader.get_results_reader(path)(path))
    data, kw = layers["tracks"]
    np.testing.assert_array_equal(data[:, 0], [3, 3, 3, 7, 7])
    assert kw["scale"] == (1.0, 1.0, 1.0)
    assert tracks_color_options(kw["features"]) == ["particle"]
    assert "speed_um_s" not in kw["features"]
    assert kw["name"] == "mine tracks" and layers["points"][1]["name"] == "mine spots"

    spots = tmp_path / "found.csv"
    table.drop(columns="particle").assign(signal=1.0).to_csv(spots, index=False)
    [(data, kw, kind)] = _reader.get_results_reader(spots)(spots)
    assert kind == "points" and kw["name"] == "found"
    np.testing.assert_array_equal(data, table[["frame", "y", "x"]].to_numpy())
    assert (kw["features"]["particle"] == -1).all()


# --------------------------------------------------------------------------- writers


def test_writers_write_design_tables(results, tmp_path):
    _, result = results
    layer_run = Run.from_result(result)
    data, kw, _ = tracks_layer(layer_run, "crop tracks")
    [written] = _writer.write_tracks(str(tmp_path / "tracks"), data, kw)
    assert written.endswith("tracks.csv")
    assert list(pd.read_csv(written).columns) == list(TRACK_COLUMNS)
    back = read_track_table(written)[list(TRACK_COLUMNS)]
    expected = result.analysis.tracks.sort_values(["particle", "frame"], ignore_index=True)
    pd.testing.assert_frame_equal(back, expected[list(TRACK_COLUMNS)], check_dtype=False)

    shown = data[np.isin(data[:, 0], data[:3, 0])]
    [seg_path] = _writer.write_segments(str(tmp_path / "segments.csv"), shown, kw)
    segments = pd.read_csv(seg_path)
    assert list(segments.columns[: len(SEGMENT_COLUMNS)]) == list(SEGMENT_COLUMNS)
    assert set(segments["particle"]) == set(shown[:, 0].astype(int))

    from spt.napari._layers import spots_layer

    pdata, pkw, _ = spots_layer(layer_run, "crop spots")
    [spots_path] = _writer.write_spots(str(tmp_path / "spots.csv"), pdata, pkw)
    spots = pd.read_csv(spots_path)
    assert list(spots.columns) == list(SPOT_COLUMNS)
    assert len(spots) == len(result.spots)


def test_segments_writer_refuses_tracks_without_analysis(tmp_path):
    data = np.array([[0, 0, 1.0, 1.0], [0, 1, 1.0, 2.0]])
    with pytest.raises(SptInputError, match="no motion segments"):
        _writer.write_segments(str(tmp_path / "s.csv"), data, {"name": "t", "metadata": {}})
    assert not (tmp_path / "s.csv").exists()


# --------------------------------------------------------------------------- sample, runs


def test_sample_data_has_movie_and_masks():
    layers = layers_by_type(make_sample_data())
    assert layers["image"][0].shape == (250, 128, 128)
    assert layers["labels"][0].shape == (128, 128)


def test_missing_sample_gives_a_clear_error(tmp_path):
    with pytest.raises(SptInputError, match="sample movie not found.*spt simulate"):
        make_sample_data(tmp_path)


def test_layer_run_equals_spt_run_on_the_same_frames(tmp_path):
    # the widget's run must give what `spt run` gives on the same frames (detection, linking,
    # track-guided re-detection, analysis), though it reads smaller blocks of frames
    movie = read_movie(SAMPLE)
    frames = np.asarray(movie.frames[:N_FRAMES])
    masks = read_masks(SAMPLE_MASKS, shape=movie.shape)
    config = PipelineConfig()
    calib = dict(pixel_size_um=movie.pixel_size_um, frame_interval_s=movie.frame_interval_s)
    reports = []
    result = track_layer_frames(
        frames,
        config,
        name="s",
        source="s",
        masks=masks,
        progress=lambda *a: reports.append(a),
        **calib,
    )
    path = write_movie(tmp_path / "s.ome.tif", frames, **calib)
    masks_path = tmp_path / "s_masks.tif"
    tifffile.imwrite(masks_path, masks)
    expected = process_movie(path, config, masks_path=masks_path)
    assert len(expected.analysis.tracks) > 0
    pd.testing.assert_frame_equal(result.spots.reset_index(drop=True), expected.spots)
    pd.testing.assert_frame_equal(result.analysis.tracks, expected.analysis.tracks)
    pd.testing.assert_frame_equal(
        result.analysis.stage_velocities, expected.analysis.stage_velocities
    )
    np.testing.assert_array_equal(result.projection, frames.max(axis=0))
    assert ("detecting", N_FRAMES, N_FRAMES) in reports and ("analysing", 0, 0) in reports


def test_layer_run_keeps_frame_numbers_and_can_be_cancelled():
    movie = read_movie(SAMPLE)
    calib = dict(pixel_size_um=movie.pixel_size_um, frame_interval_s=movie.frame_interval_s)
    run = partial(track_layer_frames, movie.frames, PipelineConfig(), name="s", source="s")
    result = run(first_frame=100, stop_frame=120, **calib)
    assert result.spots["frame"].between(100, 119).all() and result.n_frames == 20
    with pytest.raises(Cancelled):
        run(cancelled=lambda: True, **calib)
    with pytest.raises(SptInputError, match="pixel size must be a positive number"):
        run(pixel_size_um=0, frame_interval_s=1)


def test_reanalyze_with_new_masks_keeps_the_tracks(results):
    _, result = results
    config = PipelineConfig()
    calib = dict(pixel_size_um=result.pixel_size_um, frame_interval_s=result.frame_interval_s)
    nucleus = np.full(result.projection.shape, 3, np.uint8)
    crop = dict(name="crop", source="crop", projection=result.projection, n_frames=result.n_frames)
    again = reanalyze(result.analysis.tracks, result.spots, config, masks=nucleus, **crop, **calib)
    raw = result.analysis.tracks.drop(columns=["segment", "state", "stage"])
    direct = analyze_tracks(raw, config, masks=nucleus, **calib)
    pd.testing.assert_frame_equal(again.analysis.tracks, direct.tracks)
    pd.testing.assert_frame_equal(
        again.analysis.tracks[["particle", "frame", "x", "y"]],
        result.analysis.tracks[["particle", "frame", "x", "y"]],
    )
    assert not again.analysis.tracks["stage"].equals(result.analysis.tracks["stage"])
    with pytest.raises(SptInputError, match="mask labels \\[7\\] not allowed"):
        reanalyze(result.analysis.tracks, result.spots, config, masks=nucleus + 4, **crop, **calib)


# --------------------------------------------------------------------------- helpers


def test_point_speeds_are_step_speeds_in_um_per_s():
    tracks = pd.DataFrame(
        {"particle": [1, 1, 1, 2], "frame": [0, 1, 3, 5], "x": [0.0, 3, 3, 0], "y": [0.0, 4, 8, 0]}
    )
    speeds = point_speeds(tracks, pixel_size_um=0.5, frame_interval_s=0.1)
    # steps: 5 px in 1 frame -> 25 um/s; 4 px in 2 frames -> 10 um/s; first point takes the first
    np.testing.assert_allclose(speeds, [25.0, 25.0, 10.0, 0.0])


def test_track_filter_by_length_and_stage():
    tracks = pd.DataFrame(
        {
            "particle": [1, 1, 1, 2, 2, 3],
            "frame": [0, 1, 2, 0, 1, 0],
            "stage": [
                "circulation",
                "extravasation",
                "extravasation",
                "circulation",
                "circulation",
                "perinuclear",
            ],
        }
    )
    np.testing.assert_array_equal(track_filter(tracks, min_points=2), [1, 1, 1, 1, 1, 0])
    kept = track_filter(tracks, stage="extravasation")
    np.testing.assert_array_equal(kept, [1, 1, 1, 0, 0, 0])
    assert not track_filter(tracks, min_points=4).any()


def test_nearest_particle_prefers_the_current_frame():
    tracks = pd.DataFrame(
        {
            "particle": [1, 2, 2],
            "frame": [5, 4, 5],
            "y": [10.0, 10.0, 20.0],
            "x": [10.0, 10.0, 20.0],
        }
    )
    assert nearest_particle(tracks, 5, 11, 11, 6) == 1
    assert nearest_particle(tracks, 5, 19, 19, 6) == 2
    assert nearest_particle(tracks, 5, 50, 50, 6) is None
