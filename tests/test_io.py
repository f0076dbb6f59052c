"""Tests for spt.io: movies (metadata, axes, damaged files, lazy reading), masks, track tables."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import tifffile

from spt.errors import SptInputError
from spt.io import (
    Movie,
    read_masks,
    read_movie,
    read_track_table,
    write_movie,
    write_table,
)

DTYPES = [np.uint8, np.uint16, np.float32]


def ramp(shape: tuple[int, ...], dtype=np.uint16) -> np.ndarray:
    """Distinct values per element (wrapping for uint8), so any mix-up of frames shows."""
    data = np.arange(int(np.prod(shape))).reshape(shape) % (251 if dtype == np.uint8 else 60000)
    return data.astype(dtype)


def read_all(movie: Movie) -> np.ndarray:
    return np.concatenate([block for _, block in movie.iter_chunks(3)])


# --------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("imagej", [False, True])
def test_write_movie_round_trip_keeps_data_and_calibration(tmp_path, dtype, imagej):
    data = ramp((7, 12, 10), dtype)
    path = write_movie(
        tmp_path / "m.tif", data, pixel_size_um=0.16, frame_interval_s=0.033, imagej=imagej
    )
    movie = read_movie(path)
    assert movie.n_frames == 7 and movie.shape == (12, 10) and movie.dtype == np.dtype(dtype)
    assert movie.pixel_size_um == pytest.approx(0.16)
    assert movie.frame_interval_s == pytest.approx(0.033)
    source = "imagej" if imagej else "ome"
    assert movie.metadata_source["pixel_size_um"] == source
    assert movie.metadata_source["frame_interval_s"] == source
    np.testing.assert_array_equal(read_all(movie), data.astype(np.float32))


def test_ome_units_are_converted(tmp_path):
    path = tmp_path / "units.ome.tif"
    tifffile.imwrite(
        path,
        ramp((4, 8, 8)),
        ome=True,
        metadata={
            "axes": "TYX",
            "PhysicalSizeX": 107.0,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 107.0,
            "PhysicalSizeYUnit": "nm",
            "TimeIncrement": 50.0,
            "TimeIncrementUnit": "ms",
        },
    )
    movie = read_movie(path)
    assert movie.pixel_size_um == pytest.approx(0.107)
    assert movie.frame_interval_s == pytest.approx(0.05)


def test_ome_plane_delta_t_gives_frame_interval(tmp_path):
    path = tmp_path / "deltat.ome.tif"
    tifffile.imwrite(
        path,
        ramp((4, 8, 8)),
        ome=True,
        metadata={
            "axes": "TYX",
            "PhysicalSizeX": 0.2,
            "PhysicalSizeY": 0.2,
            "Plane": {"DeltaT": [0.0, 40.0, 80.0, 120.0], "DeltaTUnit": ["ms"] * 4},
        },
    )
    movie = read_movie(path)
    assert movie.frame_interval_s == pytest.approx(0.04)
    assert movie.metadata_source["frame_interval_s"] == "ome-deltat"


@pytest.mark.parametrize(
    ("unit", "size_in_unit", "expected_um"),
    [("micron", 0.16, 0.16), ("nm", 160.0, 0.16), ("\\u00B5m", 0.25, 0.25)],
)
def test_imagej_metadata(tmp_path, unit, size_in_unit, expected_um):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        ramp((5, 8, 8)),
        imagej=True,
        resolution=(1 / size_in_unit, 1 / size_in_unit),
        # spacing is ImageJ's z-step: it must not be taken for the pixel size
        metadata={"axes": "TYX", "unit": unit, "spacing": 3.0, "finterval": 0.033},
    )
    movie = read_movie(path)
    assert movie.pixel_size_um == pytest.approx(expected_um)
    assert movie.frame_interval_s == pytest.approx(0.033)
    assert movie.metadata_source["pixel_size_um"] == "imagej"


def test_imagej_time_unit(tmp_path):
    path = tmp_path / "ij_ms.tif"
    tifffile.imwrite(
        path,
        ramp((5, 8, 8)),
        imagej=True,
        resolution=(10.0, 10.0),
        metadata={"axes": "TYX", "unit": "micron", "finterval": 33.0, "tunit": "ms"},
    )
    assert read_movie(path).frame_interval_s == pytest.approx(0.033)


@pytest.mark.parametrize(("unit", "um_per_unit"), [("CENTIMETER", 1e4), ("INCH", 25400.0)])
def test_resolution_tags_only(tmp_path, unit, um_per_unit):
    path = tmp_path / "res.tif"
    per_unit = um_per_unit / 0.25  # pixels per cm / inch for 0.25 um pixels
    tifffile.imwrite(
        path,
        ramp((4, 8, 8)),
        photometric="minisblack",
        resolution=(per_unit, per_unit),
        resolutionunit=unit,
    )
    with pytest.raises(SptInputError, match="no frame interval") as err:
        read_movie(path)
    assert "--frame-interval" in str(err.value) and "pixel size" not in str(err.value)
    movie = read_movie(path, frame_interval_s=0.1)
    assert movie.pixel_size_um == pytest.approx(0.25)
    assert movie.metadata_source == {
        "pixel_size_um": "tiff-resolution",
        "frame_interval_s": "flag",
        "frames": movie.metadata_source["frames"],
    }


def test_screen_dpi_default_is_not_a_pixel_size(tmp_path):
    path = tmp_path / "dpi72.tif"
    tifffile.imwrite(
        path, ramp((4, 8, 8)), photometric="minisblack", resolution=(72, 72), resolutionunit="INCH"
    )
    with pytest.raises(SptInputError, match="no pixel size"):
        read_movie(path, frame_interval_s=0.1)


def test_flags_override_metadata(tmp_path):
    path = write_movie(
        tmp_path / "m.ome.tif", ramp((4, 8, 8)), pixel_size_um=0.16, frame_interval_s=0.033
    )
    movie = read_movie(path, pixel_size_um=0.5, frame_interval_s=0.1)
    assert (movie.pixel_size_um, movie.frame_interval_s) == (0.5, 0.1)
    assert movie.metadata_source["pixel_size_um"] == "flag"
    assert movie.metadata_source["frame_interval_s"] == "flag"


def test_missing_metadata_names_both_flags(tmp_path):
    path = tmp_path / "bare.tif"
    tifffile.imwrite(path, ramp((4, 8, 8)), photometric="minisblack")
    with pytest.raises(SptInputError) as err:
        read_movie(path)
    message = str(err.value)
    assert message.startswith(str(path))
    assert "--pixel-size" in message and "--frame-interval" in message
    with pytest.raises(SptInputError, match="--pixel-size") as err:
        read_movie(path, frame_interval_s=0.03)
    assert "--frame-interval" not in str(err.value)


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_non_positive_flags_are_refused(tmp_path, value):
    path = write_movie(tmp_path / "m.tif", ramp((4, 8, 8)), pixel_size_um=0.1, frame_interval_s=0.1)
    with pytest.raises(SptInputError, match="pixel_size_um must be a positive"):
        read_movie(path, pixel_size_um=value)


# --------------------------------------------------------------------------- axes


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_channel_and_z_selection_ome_hyperstack(tmp_path, compression):
    data = ramp((6, 2, 3, 8, 9))
    path = tmp_path / "tczyx.ome.tif"
    tifffile.imwrite(
        path,
        data,
        ome=True,
        compression=compression,
        metadata={"axes": "TCZYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1, "TimeIncrement": 1},
    )
    movie = read_movie(path, channel=1, z=2)
    assert movie.frames.shape == (6, 8, 9)
    np.testing.assert_array_equal(read_all(movie), data[:, 1, 2].astype(np.float32))
    np.testing.assert_array_equal(movie.frames[4], data[4, 1, 2])
    assert "channel 1" in movie.metadata_source["frames"]


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_channel_selection_imagej_hyperstack(tmp_path, compression):
    data = ramp((5, 3, 8, 8))
    path = tmp_path / "tcyx_ij.tif"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        compression=compression,
        resolution=(10.0, 10.0),
        metadata={"axes": "TCYX", "unit": "micron", "finterval": 0.05},
    )
    movie = read_movie(path, channel=2)
    np.testing.assert_array_equal(movie.frames[:], data[:, 2])
    assert movie.pixel_size_um == pytest.approx(0.1)


def test_channel_selection_rgb(tmp_path):
    data = ramp((4, 8, 8, 3), np.uint8)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, data, photometric="rgb")
    with pytest.raises(SptInputError, match=r"3 channels .*shape \(4, 8, 8, 3\).*--channel"):
        read_movie(path, pixel_size_um=0.1, frame_interval_s=0.1)
    movie = read_movie(path, channel=1, pixel_size_um=0.1, frame_interval_s=0.1)
    np.testing.assert_array_equal(movie.frames[:], data[..., 1])


def test_z_only_stack_is_read_as_frames(tmp_path):
    data = ramp((5, 8, 8))
    path = tmp_path / "zyx.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"})
    movie = read_movie(path, pixel_size_um=0.1, frame_interval_s=0.1)
    assert movie.n_frames == 5
    assert "z-planes read as frames" in movie.metadata_source["frames"]


@pytest.mark.parametrize(
    ("shape", "axes", "kwargs", "pattern"),
    [
        ((4, 3, 8, 8), "TCYX", {}, r"3 channels \(shape \(4, 3, 8, 8\), axes TCYX\).*--channel"),
        ((4, 3, 8, 8), "TZYX", {}, r"3 z-planes \(shape \(4, 3, 8, 8\), axes TZYX\).*--z"),
        ((4, 3, 8, 8), "TCYX", {"channel": 3}, r"channel=3 out of range.*3 channels"),
        ((4, 8, 8), "TYX", {"channel": 1}, r"channel=1 given but the movie has one channel"),
        ((4, 8, 8), "TYX", {"z": 2}, r"z=2 given but the movie has one z-plane"),
        ((1, 8, 8), "TYX", {}, r"single 2-D image \(shape \(8, 8\)"),
    ],
)
def test_ambiguous_or_wrong_shapes_are_refused(tmp_path, shape, axes, kwargs, pattern):
    path = tmp_path / "m.ome.tif"
    tifffile.imwrite(path, ramp(shape), ome=True, metadata={"axes": axes})
    with pytest.raises(SptInputError, match=pattern):
        read_movie(path, pixel_size_um=0.1, frame_interval_s=0.1, **kwargs)


def test_unlabelled_4d_stack_is_ambiguous(tmp_path):
    path = tmp_path / "qq.tif"
    tifffile.imwrite(path, ramp((5, 6, 8, 8)))  # tifffile shaped series, axes QQYX
    with pytest.raises(SptInputError, match=r"ambiguous shape \(shape \(5, 6, 8, 8\), axes QQYX\)"):
        read_movie(path, pixel_size_um=0.1, frame_interval_s=0.1)


def test_single_2d_image_is_not_a_movie(tmp_path):
    path = tmp_path / "one.tif"
    tifffile.imwrite(path, ramp((8, 8)))
    with pytest.raises(SptInputError, match=r"single 2-D image .*need at least 2 frames"):
        read_movie(path, pixel_size_um=0.1, frame_interval_s=0.1)


def test_complex_pixels_are_refused(tmp_path):
    path = tmp_path / "complex.tif"
    tifffile.imwrite(path, np.zeros((3, 4, 4), np.complex64), photometric="minisblack")
    with pytest.raises(SptInputError, match="unsupported pixel type complex64"):
        read_movie(path, pixel_size_um=0.1, frame_interval_s=0.1)


# --------------------------------------------------------------------------- bad files


def _good(tmp_path, name="good.ome.tif", compression=None) -> bytes:
    path = tmp_path / name
    tifffile.imwrite(
        path,
        ramp((10, 32, 32)),
        ome=True,
        compression=compression,
        metadata={"axes": "TYX", "PhysicalSizeX": 0.1, "PhysicalSizeY": 0.1, "TimeIncrement": 1},
    )
    return path.read_bytes()


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"", "empty file"),
        (b"hello, this is a text file\n", "not a readable TIFF"),
        (np.random.default_rng(0).bytes(4096), "not a readable TIFF"),
        (b"II*\x00" + b"\xff" * 60, "TIFF"),
    ],
    ids=["zero-bytes", "text", "random-bytes", "bad-header"],
)
def test_unreadable_files_are_refused(tmp_path, content, pattern):
    path = tmp_path / "bad.tif"
    path.write_bytes(content)
    with pytest.raises(SptInputError, match=pattern) as err:
        read_movie(path, pixel_size_um=0.1, frame_interval_s=0.1)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("compression", "fraction"), [(None, 0.6), (None, 0.97), ("zlib", 0.5), ("zlib", 0.97)]
)
def test_truncated_files_are_refused_up_front(tmp_path, compression, fraction):
    full = _good(tmp_path, compression=compression)
    path = tmp_path / "cut.ome.tif"
    path.write_bytes(full[: int(len(full) * fraction)])
    with pytest.raises(SptInputError, match="truncated") as err:
        read_movie(path, pixel_size_um=0.1, frame_interval_s=0.1)
    assert str(err.value).startswith(str(path))


def test_missing_path_and_folder(tmp_path):
    with pytest.raises(SptInputError, match="file not found"):
        read_movie(tmp_path / "nope.tif")
    with pytest.raises(SptInputError, match="is a folder"):
        read_movie(tmp_path)


def test_corrupt_compressed_data_fails_when_read(tmp_path):
    full = bytearray(_good(tmp_path, compression="zlib"))
    with tifffile.TiffFile(tmp_path / "good.ome.tif") as tif:
        page = tif.pages[5]
        start, count = page.dataoffsets[0], page.databytecounts[0]
    full[start : start + count] = b"\x00" * count  # garbage zlib stream, file length unchanged
    path = tmp_path / "corrupt.ome.tif"
    path.write_bytes(bytes(full))
    movie = read_movie(path)
    with pytest.raises(SptInputError, match="cannot read frames 4-7"):
        list(movie.iter_chunks(4))


# --------------------------------------------------------------------------- lazy reading


def test_uncompressed_movie_is_memory_mapped(tmp_path):
    _good(tmp_path)
    movie = read_movie(tmp_path / "good.ome.tif")
    assert isinstance(movie.frames, np.memmap)
    assert isinstance(movie.frames[3], np.ndarray)


def test_big_endian_movie_reads_native_values(tmp_path):
    data = ramp((5, 8, 8))
    path = tmp_path / "be.tif"
    tifffile.imwrite(path, data, byteorder=">", photometric="minisblack")
    movie = read_movie(path, pixel_size_um=0.1, frame_interval_s=0.1)
    assert movie.dtype == np.uint16
    np.testing.assert_array_equal(read_all(movie), data.astype(np.float32))


def test_compressed_movie_is_read_page_by_page(tmp_path):
    _good(tmp_path, compression="zlib")
    movie = read_movie(tmp_path / "good.ome.tif")
    assert not isinstance(movie.frames, np.ndarray)
    assert len(movie.frames) == 10 and movie.frames.shape == (10, 32, 32)
    expected = ramp((10, 32, 32))
    np.testing.assert_array_equal(movie.frames[-1], expected[-1])
    np.testing.assert_array_equal(movie.frames[2:9:3], expected[2:9:3])
    np.testing.assert_array_equal(movie.frames[1, 5:7, 3], expected[1, 5:7, 3])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_iter_chunks_and_max_projection_match_data(tmp_path, dtype, compression):
    data = ramp((11, 9, 7), dtype)
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, data, photometric="minisblack", compression=compression)
    movie = read_movie(path, pixel_size_um=0.1, frame_interval_s=0.1)
    chunks = list(movie.iter_chunks(4))
    assert [start for start, _ in chunks] == [0, 4, 8]
    assert [len(block) for _, block in chunks] == [4, 4, 3]
    assert all(block.dtype == np.float32 for _, block in chunks)
    np.testing.assert_array_equal(np.concatenate([b for _, b in chunks]), data.astype(np.float32))
    np.testing.assert_array_equal(movie.max_projection(4), data.max(axis=0).astype(np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_frames_raise_when_their_chunk_is_read(tmp_path, bad):
    data = ramp((10, 8, 8), np.float32)
    data[6, 2, 3] = bad
    path = write_movie(tmp_path / "nan.ome.tif", data, pixel_size_um=0.1, frame_interval_s=0.1)
    movie = read_movie(path)  # opening does not scan the data
    chunks = movie.iter_chunks(4)
    start, block = next(chunks)
    assert start == 0 and np.isfinite(block).all()
    with pytest.raises(SptInputError, match="frame 6 contains NaN or infinite values"):
        next(chunks)


# --------------------------------------------------------------------------- masks


def test_read_masks_accepts_single_plane_and_per_frame(tmp_path):
    labels = np.zeros((8, 9), np.uint8)
    labels[2:4] = 1
    labels[5:, :4] = 2
    labels[6, 1] = 3
    tifffile.imwrite(tmp_path / "m2.tif", labels)
    out = read_masks(tmp_path / "m2.tif", shape=(8, 9), n_frames=5)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, labels)

    stack = np.stack([labels] * 5).astype(np.uint16)
    tifffile.imwrite(tmp_path / "m3.tif", stack)
    np.testing.assert_array_equal(read_masks(tmp_path / "m3.tif", shape=(8, 9), n_frames=5), stack)


@pytest.mark.parametrize(
    ("data", "kwargs", "pattern"),
    [
        (np.zeros((8, 8), np.uint8), {"shape": (8, 9)}, r"mask shape \(8, 8\) does not match"),
        (
            np.zeros((4, 8, 9), np.uint8),
            {"shape": (8, 9), "n_frames": 5},
            r"mask shape \(4, 8, 9\)",
        ),
        (np.full((8, 9), 5, np.uint8), {"shape": (8, 9)}, r"mask labels 5 not allowed"),
        (np.zeros((8, 9), np.float32), {"shape": (8, 9)}, r"integer labels, not float32"),
    ],
    ids=["wrong-yx", "wrong-t", "bad-label", "float"],
)
def test_read_masks_refuses_bad_masks(tmp_path, data, kwargs, pattern):
    path = tmp_path / "mask.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    with pytest.raises(SptInputError, match=pattern):
        read_masks(path, **kwargs)


def test_read_masks_refuses_unreadable_file(tmp_path):
    path = tmp_path / "mask.tif"
    path.write_bytes(b"not a tiff")
    with pytest.raises(SptInputError, match="not a readable TIFF"):
        read_masks(path, shape=(8, 8))


# --------------------------------------------------------------------------- track tables


def _trackpy_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "y": [5.0, 6.0, 7.0, 1.0, 1.5],
            "x": [1.0, 2.0, 3.0, 9.0, 9.5],
            "mass": [10.0, 11.0, 12.0, 13.0, 14.0],
            "frame": [2, 0, 1, 0, 1],
            "particle": [0, 0, 0, 3, 3],
        }
    )


@pytest.mark.parametrize("sep", [",", ";", "\t"])
def test_read_trackpy_csv(tmp_path, sep):
    path = tmp_path / "tracks.csv"
    _trackpy_table().to_csv(path, sep=sep)  # with the index column trackpy users often keep
    df = read_track_table(path)
    assert list(df.columns) == ["frame", "x", "y", "particle", "mass"]
    assert df["frame"].dtype == np.int64 and df["particle"].dtype == np.int64
    assert df[["particle", "frame"]].values.tolist() == [[0, 0], [0, 1], [0, 2], [3, 0], [3, 1]]
    assert df["x"].tolist() == [2.0, 3.0, 1.0, 9.0, 9.5]


def test_read_trackpy_csv_with_frame_index_and_column(tmp_path):
    path = tmp_path / "tracks.csv"
    table = _trackpy_table()
    table.index = table["frame"].rename("frame")
    table.to_csv(path)  # header: frame,y,x,mass,frame,particle
    df = read_track_table(path)
    assert len(df) == 5 and df["frame"].tolist() == [0, 1, 2, 0, 1]


def _trackmate_csv(path, unit="micron", with_header_rows=True, sep=","):
    rows = [
        ["LABEL", "ID", "TRACK_ID", "QUALITY", "POSITION_X", "POSITION_Y", "POSITION_T", "FRAME"],
    ]
    if with_header_rows:
        rows += [
            ["Label", "Spot ID", "Track ID", "Quality", "X", "Y", "T", "Frame"],
            ["Label", "Spot ID", "Track ID", "Quality", "X", "Y", "T", "Frame"],
            ["", "", "", "(quality)", f"({unit})", f"({unit})", "(sec)", ""],
        ]
    rows += [
        ["ID1", "1", "0", "5.0", "0.8", "1.6", "0.033", "1"],
        ["ID0", "0", "0", "5.0", "0.4", "1.2", "0.0", "0"],
        ["ID7", "7", "1", "4.0", "3.2", "0.0", "0.0", "0"],
        ["ID9", "9", "None", "1.0", "9.9", "9.9", "0.0", "0"],
    ]
    path.write_text("\n".join(sep.join(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("sep", [",", ";"])
def test_read_trackmate_csv_converts_microns_to_pixels(tmp_path, sep):
    path = _trackmate_csv(tmp_path / "spots.csv", sep=sep)
    df = read_track_table(path, pixel_size_um=0.4)
    assert df[["particle", "frame"]].values.tolist() == [[0, 0], [0, 1], [1, 0]]
    np.testing.assert_allclose(df["x"], [1.0, 2.0, 8.0])
    np.testing.assert_allclose(df["y"], [3.0, 4.0, 0.0])
    assert "QUALITY" in df.columns and "POSITION_X" not in df.columns


def test_read_trackmate_units(tmp_path):
    path = _trackmate_csv(tmp_path / "nm.csv", unit="nm")
    np.testing.assert_allclose(read_track_table(path, pixel_size_um=0.0004)["x"], [1.0, 2.0, 8.0])
    path = _trackmate_csv(tmp_path / "px.csv", unit="pixel")
    np.testing.assert_allclose(read_track_table(path)["x"], [0.4, 0.8, 3.2])


def test_read_trackmate_needs_pixel_size(tmp_path):
    path = _trackmate_csv(tmp_path / "spots.csv", with_header_rows=False)
    with pytest.raises(SptInputError, match="physical units; pass --pixel-size"):
        read_track_table(path)


def test_time_column_needs_frame_interval(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"t": [0.0, 0.1, 0.2], "x": [1.0, 2, 3], "y": [1.0, 2, 3], "particle": 0}).to_csv(
        path, index=False
    )
    with pytest.raises(SptInputError, match="--frame-interval"):
        read_track_table(path)
    assert read_track_table(path, frame_interval_s=0.1)["frame"].tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("frame,x,y\n0,1,2\n", "missing column.*particle"),
        ("", "empty file"),
        ("frame,x,y,particle\n0,1,abc,0\n", r"column y is not numeric \(row 1: 'abc'\)"),
        ("frame,x,y,particle\n0,1,2,0\n1,,2,0\n", "missing frame/x/y/particle"),
        ("frame,x,y,particle\n0,1,2,0\n0,3,4,0\n", "particle 0 has several points in frame 0"),
        ("frame,x,y,particle\n-1,1,2,0\n", "negative frame number -1"),
        ("frame,x,y,particle\n0.5,1,2,0\n", "frame must hold whole numbers"),
        ("just one column\n1\n", "not a table"),
    ],
    ids=[
        "missing",
        "empty",
        "text",
        "nan",
        "duplicate",
        "negative",
        "fraction",
        "1col",
    ],
)
def test_read_track_table_refuses_bad_tables(tmp_path, text, pattern):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(SptInputError, match=pattern) as err:
        read_track_table(path)
    assert str(err.value).startswith(str(path))


# --------------------------------------------------------------------------- writing tables


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_write_table_round_trip_leaves_no_temp_file(tmp_path, suffix):
    df = pd.DataFrame({"frame": [0, 1], "x": [1.5, 2.5], "stage": ["circulation", "perinuclear"]})
    path = write_table(df, tmp_path / "out" / f"tracks{suffix}")
    assert os.listdir(tmp_path / "out") == [f"tracks{suffix}"]
    back = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, df, check_dtype=False)


def test_write_table_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "tracks.csv"
    path.write_text("old\n")

    def explode(_table, target, **kwargs):
        with open(target, "w") as fh:
            fh.write("half")
        raise OSError("disk full")

    # The CSV is written by Arrow when pyarrow is installed, else by pandas: both fail.
    monkeypatch.setattr(pd.DataFrame, "to_csv", explode)
    try:
        import pyarrow.csv as pa_csv
    except ImportError:
        pa_csv = None
    if pa_csv is not None:
        monkeypatch.setattr(pa_csv, "write_csv", explode)
    with pytest.raises(OSError, match="disk full"):
        write_table(pd.DataFrame({"x": [1.0]}), path)
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["tracks.csv"]


@pytest.mark.parametrize(
    "extra",
    [
        {"state": ["free", "confined", ""]},
        {"state": ["a,b", 'say "x"', "two\nlines"]},
        {"whole": [1.0, 2.0, -3.0], "part_whole": [1.0, 2.0, 2.5]},
    ],
    ids=["plain", "quoted", "whole-numbers"],
)
def test_written_csv_reads_back_as_pandas_own_csv(tmp_path, extra):
    # Arrow writes plain tables, pandas those whose text needs quotes or with a float column of
    # whole numbers (Arrow's "2" would read back as an integer); all read back the same.
    table = pd.DataFrame(
        {
            "frame": np.arange(3, dtype=np.int64),
            "x": [1e-05, -0.0, 1 / 3],
            "missing": [np.nan, np.inf, 1e300],
            "flag": [True, False, True],
            "count": pd.array([1, None, 3], dtype="Int64"),
            "stage": pd.Categorical(["circulation", "perinuclear", "circulation"]),
            **extra,
        },
        index=[7, 3, 5],
    )
    write_table(table, tmp_path / "t.csv")
    (tmp_path / "pandas.csv").write_text(table.to_csv(index=False))
    got = pd.read_csv(tmp_path / "t.csv")
    pd.testing.assert_frame_equal(got, pd.read_csv(tmp_path / "pandas.csv"))
    assert (tmp_path / "t.csv").read_text().splitlines()[0] == ",".join(table.columns)
    assert got["flag"].tolist() == [True, False, True]


def test_write_table_refuses_unknown_suffix(tmp_path):
    with pytest.raises(SptInputError, match="use .csv or .parquet"):
        write_table(pd.DataFrame({"x": [1]}), tmp_path / "t.xlsx")
