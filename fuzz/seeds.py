"""Seed inputs for the fuzz harnesses: small valid TIFF movies and track tables of every layout.

The fuzzer mutates these; starting from valid files lets it reach the deep parts of the readers
(metadata, page mapping, chunked reads) instead of stopping at the magic number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

PX, DT = 0.1, 0.033


def write_tiff_seeds(folder: Path) -> list[Path]:
    """Small TIFFs: OME, ImageJ, compressed, tiled, big-endian, BigTIFF, hyperstacks, RGB."""
    folder.mkdir(parents=True, exist_ok=True)
    movie = (np.arange(3 * 8 * 6) % 251).astype(np.uint16).reshape(3, 8, 6)
    ome = {"axes": "TYX", "PhysicalSizeX": PX, "PhysicalSizeY": PX, "TimeIncrement": DT}
    seeds = {
        "ome.tif": (movie, {"ome": True, "metadata": ome}),
        "ome-zlib.tif": (movie, {"ome": True, "compression": "zlib", "metadata": ome}),
        "imagej.tif": (movie, {"imagej": True, "metadata": {"axes": "TYX", "finterval": DT}}),
        "tiled.tif": (movie, {"tile": (16, 16), "metadata": {"axes": "TYX"}}),
        "bigendian.tif": (movie, {"byteorder": ">", "metadata": {"axes": "TYX"}}),
        "bigtiff.tif": (movie.astype(np.float32), {"bigtiff": True, "metadata": {"axes": "TYX"}}),
        "hyperstack.tif": (
            np.stack([movie, movie], 1),
            {"imagej": True, "metadata": {"axes": "TCYX", "finterval": DT}},
        ),
        "rgb.tif": (
            np.stack([movie.astype(np.uint8)] * 3, -1),
            {"photometric": "rgb", "metadata": {"axes": "TYXS"}},
        ),
        "resolution.tif": (
            movie,
            {"resolution": (1e4 / PX, 1e4 / PX), "resolutionunit": "CENTIMETER"},
        ),
    }
    paths = []
    for name, (data, kwargs) in seeds.items():
        path = folder / name
        tifffile.imwrite(path, data, **kwargs)
        paths.append(path)
    return paths


def write_csv_seeds(folder: Path) -> list[Path]:
    """Track tables: trackpy CSV, semicolon with decimal commas, tab, TrackMate, time column."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [(f, 10 + 0.5 * f, 20 - 0.25 * f, p) for p in (0, 1) for f in range(4)]
    plain = "frame,x,y,particle\n" + "".join(f"{f},{x},{y},{p}\n" for f, x, y, p in rows)
    seeds = {
        "trackpy.csv": plain,
        "index.csv": ",frame,x,y,particle,frame\n"
        + "".join(f"{i},{f},{x},{y},{p},{f}\n" for i, (f, x, y, p) in enumerate(rows)),
        "semicolon.csv": plain.replace(",", ";").replace(".", ","),
        "tab.csv": plain.replace(",", "\t"),
        "time.csv": "t,x,y,particle\n" + "".join(f"{f * DT},{x},{y},{p}\n" for f, x, y, p in rows),
        "trackmate.csv": "LABEL,ID,TRACK_ID,QUALITY,POSITION_X,POSITION_Y,POSITION_T,FRAME\n"
        "Label,Spot ID,Track ID,Quality,X,Y,T,Frame\n"
        "Label,Spot ID,Track ID,Quality,X,Y,T,Frame\n"
        "(),(),(),(quality),(micron),(micron),(sec),()\n"
        + "".join(
            f"ID{i},{i},{p},1.0,{x * PX},{y * PX},{f * DT},{f}\n"
            for i, (f, x, y, p) in enumerate(rows)
        ),
        "header-only.csv": "frame,x,y,particle\n",
    }
    paths = []
    for name, text in seeds.items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths
