"""Command line: ``spt run``, ``spt classify``, ``spt simulate``, ``spt config``.

Bad input ends with one line on standard error naming the file and the problem, and exit code 1
(2 for a malformed command line, 3 for an internal error; see docs/input_policy.md).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import spt
from spt.errors import SptInputError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
#: Set this environment variable to get the full traceback of an internal error.
DEBUG_ENV = "SPT_DEBUG"


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _file_name(text: str) -> str:
    if not text or text in (".", "..") or "/" in text or os.sep in text or "\x00" in text:
        raise argparse.ArgumentTypeError(
            f"must be a file name prefix without folders, got {text!r}"
        )
    return text


def _add_calibration(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pixel-size",
        type=_positive_float,
        metavar="UM",
        help="pixel size in micrometres (overrides the file's metadata)",
    )
    p.add_argument(
        "--frame-interval",
        type=_positive_float,
        metavar="S",
        help="time between frames in seconds, e.g. 0.0333 for 30 frames/s (overrides metadata)",
    )
    _add_config(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE.toml",
        help="pipeline configuration (see `spt config --show` and pipelines/*.toml)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one configuration value, e.g. --set detect.threshold=4 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spt",
        description="Single-particle tracking of fluorescent probes (e.g. quantum dots): from TIFF "
        "movies to tracks, motion states and per-stage delivery velocities.",
    )
    parser.add_argument("--version", action="version", version=f"spt {spt.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="track particles in TIFF movies and write per-stage velocity tables",
        description="Detect, link and analyse particles in TIFF/OME-TIFF movies. For each movie "
        "writes OUT/<movie>/{spots,tracks,segments,stage_velocities}.csv, a figure of the tracks "
        "coloured by delivery stage, the configuration used and provenance.json; plus "
        "OUT/stage_velocities.csv pooled over all movies and OUT/batch_summary.csv. Movies whose "
        "results are complete for the same input and configuration are skipped on a re-run.",
    )
    run.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="TIFF/OME-TIFF files, folders of them (searched recursively), quoted glob patterns "
        "('data/**/*.tif') or list files (.txt, one input per line)",
    )
    run.add_argument("--out", required=True, metavar="DIR", help="folder for the results")
    run.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="cores of this machine to use (default: all available). With at least N movies, "
        "N worker processes each process one movie at a time; with fewer, each movie is "
        "detected in N threads while N (at most 8) helper processes analyse its tracks and "
        "draw its figures. --workers 1 runs in one process and one thread",
    )
    run.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="send the work to a running Dask distributed scheduler, e.g. tcp://host:8786 "
        "(workers need spt installed and the same paths)",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="recompute movies whose results are complete and up to date (default: skip them)",
    )
    run.add_argument(
        "--format",
        choices=["csv", "parquet"],
        help="table format (default csv, or [output] table_format of the config)",
    )
    run.add_argument(
        "--masks",
        metavar="MASKS.tif",
        help="label image: 0 interstitium, 1 vessel, 2 cell, 3 nucleus (one plane, or one per "
        "frame). Default: <movie>_masks.tif beside the movie if present; otherwise stages come "
        "from motion alone",
    )
    run.add_argument(
        "--channel", type=int, metavar="C", help="channel to track in a multi-channel movie"
    )
    run.add_argument(
        "--z", type=int, metavar="Z", help="z-plane to track in a movie with several planes"
    )
    _add_calibration(run)

    classify = sub.add_parser(
        "classify",
        help="motion states and delivery stages for an existing track table",
        description="Segment the tracks of a trackpy- or TrackMate-style CSV into motion states "
        "and classify delivery stages; writes tracks.csv, segments.csv and stage_velocities.csv.",
    )
    classify.add_argument(
        "tracks", metavar="TRACKS.csv", help="track table (frame, x, y, particle in pixels)"
    )
    classify.add_argument("--out", required=True, metavar="DIR", help="folder for the results")
    classify.add_argument("--masks", metavar="MASKS.tif", help="label image (see `spt run --help`)")
    _add_calibration(classify)

    config = sub.add_parser(
        "config",
        help="print or write a pipeline configuration (TOML)",
        description="Print (--show) or write (--write FILE) the configuration: the defaults, or "
        "a --config file with --set overrides applied, with every parameter documented.",
    )
    action = config.add_mutually_exclusive_group(required=True)
    action.add_argument("--show", action="store_true", help="print the configuration")
    action.add_argument("--write", metavar="FILE.toml", help="write the configuration to a file")
    config.add_argument("--force", action="store_true", help="overwrite an existing --write file")
    _add_config(config)

    simulate = sub.add_parser(
        "simulate",
        help="write a simulated movie with masks and ground truth",
        description="Simulate quantum dots through the six delivery stages (vessel flow, "
        "extravasation, extracellular diffusion, membrane binding, stop-and-go internalisation, "
        "perinuclear confinement) with blinking and EM-CCD noise. Writes <name>.ome.tif, "
        "<name>_masks.tif, <name>_truth.csv and <name>_simulation.toml.",
    )
    simulate.add_argument("--out", required=True, metavar="DIR", help="output folder")
    simulate.add_argument(
        "--name", type=_file_name, default="sim", help="file name prefix (default: sim)"
    )
    simulate.add_argument("--preset", default="default", help="sample, default, benchmark or large")
    simulate.add_argument(
        "--seed", type=_non_negative_int, default=0, help="random seed >= 0 (default: 0)"
    )
    simulate.add_argument("--frames", type=_positive_int, help="number of frames")
    simulate.add_argument(
        "--size", type=_positive_int, nargs=2, metavar=("Y", "X"), help="frame size, pixels"
    )
    simulate.add_argument("--particles", type=_non_negative_int, help="number of particles")
    simulate.add_argument("--photons", type=_positive_float, help="mean photons per spot per frame")
    simulate.add_argument(
        "--background", type=_non_negative_float, help="background photons per pixel"
    )
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _check_out_dir(path: str | os.PathLike) -> Path:
    """Refuse an output folder that is an existing file (or lies below one)."""
    out = Path(path)
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                where = "is a file" if parent == out else f"lies inside {parent}, which is a file"
                raise SptInputError(out, f"output folder {where}; give a folder with --out")
            break
    return out


def _config(args: argparse.Namespace):
    from spt.config import PipelineConfig

    config = PipelineConfig.from_toml(args.config) if args.config else PipelineConfig()
    config = config.with_overrides(args.set) if args.set else config
    movie = replace(
        config.movie,
        **{
            k: v
            for k, v in dict(
                pixel_size_um=getattr(args, "pixel_size", None),
                frame_interval_s=getattr(args, "frame_interval", None),
                channel=getattr(args, "channel", None),
                z=getattr(args, "z", None),
            ).items()
            if v is not None
        },
    )
    config = replace(config, movie=movie)
    if getattr(args, "format", None):
        config = replace(config, output=replace(config.output, table_format=args.format))
    return config


def _cmd_run(args: argparse.Namespace) -> int:
    helpers = _early_helper_server(args)
    from spt.batch import run_batch
    from spt.progress import BatchProgress

    config = _config(args)
    _check_out_dir(args.out)
    if args.scheduler and args.workers is not None:
        raise SptInputError(
            "--workers", "give either --workers (this machine) or --scheduler (a Dask cluster)"
        )
    progress = BatchProgress(0, enabled=not args.quiet)

    def on_error(message: str) -> None:
        progress.close()
        print(f"spt: error: {message}", file=sys.stderr)

    outcome = run_batch(
        args.inputs,
        args.out,
        config,
        masks_path=args.masks,
        workers=args.workers,
        scheduler=args.scheduler,
        force=args.force,
        progress=progress,
        on_error=on_error,
        mp_context=helpers,
    )
    out = Path(args.out)
    if not args.quiet:
        counts = outcome.summary["status"].value_counts()
        print(", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "skipped", "failed")), "movie(s)")
    if not args.quiet and outcome.folders:
        fmt = config.output.table_format
        print(f"results in {out}/<movie>/; batch summary: {out / 'batch_summary.csv'}")
        print(f"per-stage velocities, all movies: {out / f'stage_velocities.{fmt}'}")
        if len(outcome.summary) == 1:
            print(outcome.read_table(outcome.folders[0], "stage_velocities").to_string(index=False))
    if outcome.n_failed:
        print(f"spt: {outcome.n_failed} of {len(outcome.summary)} movie(s) failed", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _early_helper_server(args: argparse.Namespace):
    """For one movie on several cores, launch the forkserver of its helper processes now
    (:mod:`spt._helpers`), so that they warm up while this process imports spt and detects;
    None (helpers, if any, forked when needed) for batches, Dask and ``--workers 1``."""
    if args.scheduler or args.workers == 1 or len(args.inputs) != 1:
        return None
    path = Path(args.inputs[0])
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
        return None
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if args.workers is None and affinity is not None and len(affinity) < 2:
        return None  # one core: everything runs here
    from spt._helpers import start_helper_server

    return start_helper_server()


def _cmd_config(args: argparse.Namespace) -> int:
    config = _config(args)
    text = config.to_toml(comments=True)
    header = (
        f"# spt {spt.__version__} pipeline configuration. Use with: spt run ... --config FILE\n"
        "# Every key is optional: missing keys take the default shown here.\n\n"
    )
    if args.show:
        sys.stdout.write(header + text)
        return EXIT_OK
    path = Path(args.write)
    if path.exists() and not args.force:
        raise SptInputError(path, "file exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(header + text, encoding="utf-8")
    os.replace(tmp, path)
    print(f"configuration written to {path}")
    return EXIT_OK


def _cmd_classify(args: argparse.Namespace) -> int:
    from spt.io import read_track_table, write_table
    from spt.pipeline import analyze_tracks

    config = _config(args)
    px, dt = config.movie.pixel_size_um, config.movie.frame_interval_s
    if px is None or dt is None:
        missing = [
            flag for flag, v in (("--pixel-size", px), ("--frame-interval", dt)) if v is None
        ]
        raise SptInputError(
            args.tracks, f"a track table carries no calibration: pass {' and '.join(missing)}"
        )
    out = _check_out_dir(args.out)
    tracks = read_track_table(args.tracks, pixel_size_um=px, frame_interval_s=dt)
    masks = _masks_for_table(args.masks, tracks) if args.masks else None
    analysis = analyze_tracks(tracks, config, pixel_size_um=px, frame_interval_s=dt, masks=masks)
    tables = {
        "tracks.csv": analysis.tracks,
        "segments.csv": analysis.segments,
        "stage_velocities.csv": analysis.stage_velocities,
    }
    created = not out.exists()
    # All tables are written to a hidden folder first and moved into place only when all are
    # complete, so a failed or interrupted run never mixes new tables with those of a former run.
    tmp = out / f".classify.partial-{os.getpid()}"
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        for name, table in tables.items():
            write_table(table, tmp / name)
        for name in tables:
            os.replace(tmp / name, out / name)
    except BaseException:
        shutil.rmtree(out if created else tmp, ignore_errors=True)
        raise
    tmp.rmdir()
    if not args.quiet:
        print(f"results in {out}")
        print(analysis.stage_velocities.to_string(index=False))
    return EXIT_OK


def _masks_for_table(path: str, tracks):
    """Read a mask for a track table: its own shape must cover every track point."""
    from spt.io import read_masks, tiff_plane_shape

    shape = tiff_plane_shape(path)
    masks = read_masks(path, shape=shape, n_frames=None)
    if len(tracks) and (tracks["x"].max() > shape[1] - 0.5 or tracks["y"].max() > shape[0] - 0.5):
        raise SptInputError(
            path, f"mask of shape {shape} (Y, X) does not cover the tracks' x, y range"
        )
    return masks


def _cmd_simulate(args: argparse.Namespace) -> int:
    from spt.simulate import PRESETS, SimulationConfig, simulate, write_simulation

    if args.preset not in PRESETS:
        raise SptInputError(
            None, f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}"
        )
    overrides = dict(PRESETS[args.preset], seed=args.seed)
    for key, value in (
        ("n_frames", args.frames),
        ("shape", tuple(args.size) if args.size else None),
        ("n_particles", args.particles),
        ("photons", args.photons),
        ("background", args.background),
    ):
        if value is not None:
            overrides[key] = value
    try:
        cfg = SimulationConfig(**overrides)
    except ValueError as err:
        raise SptInputError(None, f"invalid simulation parameters: {err}") from None
    _check_out_dir(args.out)
    _check_simulation_fits_in_memory(cfg)
    sim = simulate(cfg)
    paths = write_simulation(sim, args.out, args.name)
    print(f"movie: {paths['movie']}\nmasks: {paths['masks']}\nground truth: {paths['truth']}")
    return EXIT_OK


def _check_simulation_fits_in_memory(cfg) -> None:
    """Refuse a simulation whose movie and ground truth would not fit in half the RAM.

    The simulator holds the whole movie (uint16) and every particle's sub-frame path in memory;
    asking for more would end in a crash or a machine swapping for hours, not in a movie.
    """
    h, w = cfg.shape
    need = cfg.n_frames * h * w * 2 + cfg.n_frames * cfg.n_particles * (16 * cfg.substeps + 200)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
        return
    if need > ram / 2:
        raise SptInputError(
            None,
            f"a simulation of {cfg.n_frames} frames of {h} x {w} px with {cfg.n_particles} "
            f"particles needs about {need / 1e9:.3g} GB of memory; this machine has "
            f"{ram / 1e9:.3g} GB. Use fewer frames, particles or pixels",
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spt`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    handler = {
        "run": _cmd_run,
        "classify": _cmd_classify,
        "simulate": _cmd_simulate,
        "config": _cmd_config,
    }[args.command]
    try:
        return handler(args)
    except SptInputError as err:
        print(f"spt: error: {_one_line(str(err))}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as err:  # unwritable output, disk full, a file vanishing mid-run
        where = f"{err.filename}: " if err.filename else ""
        print(f"spt: error: {where}{err.strerror or _one_line(str(err))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("spt: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get(DEBUG_ENV):
            raise
        print(
            f"spt: internal error (a bug in spt, please report it): {type(err).__name__}: "
            f"{_one_line(str(err))}; run with {DEBUG_ENV}=1 for the traceback",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _one_line(text: str) -> str:
    """A message on one line (CLI errors are one line, so scripts and logs can grep them)."""
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or "(no message)"


def console_main() -> None:
    """Entry point of the ``spt`` console script: :func:`main`, then a quick exit.

    Tearing the interpreter down (freeing every object of numpy, pandas, numba, matplotlib...)
    takes 0.3-0.6 s once the work is done. By then every output is written, closed and renamed
    into place, so the exit handlers are run, the streams flushed and the process ended at once.
    """
    code = main()
    atexit._run_exitfuncs()  # what a normal exit runs (multiprocessing and logging clean-up)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console_main()
