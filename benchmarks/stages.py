"""Benchmark of delivery-stage classification and per-stage speeds on simulated movies.

For several seeds and photon counts, each movie is simulated (spt.simulate), its spots are
detected, and two track sets are analysed:

- ``perfect``: the detections linked with the ground-truth identities (each detection matched
  to the true particle in its frame), i.e. a perfect tracker on the same noisy localisations;
- ``pipeline``: the detections linked by spt's own linker.

Both are segmented (spt.segment) and classified (spt.stages) with masks and without, by the
rules and by a classifier trained on separate seeds. Printed: per-point stage accuracy,
macro-F1, the confusion matrix, and each stage's median frame-to-frame speed against the
perfect-tracker reference (the true speed for circulation).

Run by hand (not in CI):

    PYTHONPATH=. python benchmarks/stages.py            # 3 seeds x {400, 150} photons
    PYTHONPATH=. python benchmarks/stages.py --quick    # 1 seed, 400 photons
    PYTHONPATH=. python benchmarks/stages.py --speed TRACKS.csv MASKS.tif [--tile 21]
        # CPU time and memory of classify_stages on a track table (segmented first), and on
        # the table repeated --tile times (e.g. 21 x 26k points = a 2 GB movie's 540k points)
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from threadpoolctl import threadpool_limits

from spt.config import PipelineConfig
from spt.pipeline import array_chunks, track_frames
from spt.schema import STAGES
from spt.segment import segment_tracks
from spt.simulate import PRESETS, SimulationConfig, simulate
from spt.stages import StageClassifier, classify_stages, stage_features
from spt.summary import step_speeds

MATCH_PX = 2.5  # a detection within this distance of a true particle is that particle


@dataclass
class Movie:
    """One simulated movie: detections matched to the truth, and its two track sets."""

    seed: int
    photons: float
    masks: np.ndarray
    truth: pd.DataFrame
    tracks: dict[str, pd.DataFrame]  # "perfect" / "pipeline", with true_stage per point
    segments: dict[str, pd.DataFrame]
    px: float
    dt: float


def match_to_truth(spots: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Match detections to visible true particles per frame (Hungarian, within MATCH_PX).

    Returns ``spots`` plus ``true_particle`` and ``true_stage`` (NaN / None when unmatched).
    """
    out = spots.assign(true_particle=-1, true_stage=None)
    vis = truth[truth["visible"]]
    by_frame = {f: g for f, g in vis.groupby("frame")}
    tp = np.full(len(spots), -1)
    ts = np.full(len(spots), None, dtype=object)
    for f, idx in spots.groupby("frame").indices.items():
        t = by_frame.get(f)
        if t is None:
            continue
        s = spots.iloc[idx]
        d = np.hypot(
            s["x"].to_numpy()[:, None] - t["x"].to_numpy()[None],
            s["y"].to_numpy()[:, None] - t["y"].to_numpy()[None],
        )
        r, c = linear_sum_assignment(np.where(d < MATCH_PX, d, 1e6))
        ok = d[r, c] < MATCH_PX
        tp[idx[r[ok]]] = t["particle"].to_numpy()[c[ok]]
        ts[idx[r[ok]]] = t["stage"].to_numpy()[c[ok]]
    out["true_particle"] = tp
    out["true_stage"] = ts
    return out


def make_movie(
    seed: int, photons: float, preset: str, config: PipelineConfig, trackers=("perfect", "pipeline")
) -> Movie:
    sim = simulate(SimulationConfig(**PRESETS[preset], photons=photons, seed=seed))
    px, dt = sim.pixel_size_um, sim.frame_interval_s
    spots, linked = track_frames(
        array_chunks(sim.movie),
        config,
        n_frames=len(sim.movie),
        pixel_size_um=px,
        frame_interval_s=dt,
    )
    matched = match_to_truth(spots, sim.truth)
    perfect = matched[matched["true_particle"] >= 0].assign(particle=lambda d: d["true_particle"])
    perfect = perfect.drop_duplicates(["particle", "frame"])
    key = ["frame", "x", "y"]
    pipeline = linked.merge(matched[[*key, "true_stage"]], on=key, how="left")
    tracks, segments = {}, {}
    for name, t in (("perfect", perfect), ("pipeline", pipeline)):
        if name not in trackers:
            continue
        cols = ["frame", "x", "y", "particle", "x_err", "y_err", "true_stage"]
        tracks[name], segments[name] = segment_tracks(
            t[cols], config.segment, pixel_size_um=px, frame_interval_s=dt
        )
    return Movie(seed, photons, sim.masks, sim.truth, tracks, segments, px, dt)


def train_classifiers(movies: list[Movie]) -> dict[bool, StageClassifier]:
    """One classifier without and one with mask features, trained on perfect-tracker points."""
    out = {}
    for use_masks in (False, True):
        feats, labels = [], []
        for m in movies:
            t, s = m.tracks["perfect"], m.segments["perfect"]
            f = stage_features(
                t,
                s,
                pixel_size_um=m.px,
                frame_interval_s=m.dt,
                masks=m.masks if use_masks else None,
            )
            feats.append(f)
            labels.append(t["true_stage"])
        out[use_masks] = StageClassifier(use_masks=use_masks).fit(
            pd.concat(feats, ignore_index=True), pd.concat(labels, ignore_index=True)
        )
    return out


def markdown(df: pd.DataFrame, index: bool = False) -> str:
    """A DataFrame as a Markdown table (floats with 3 decimals)."""
    if index:
        df = df.reset_index()
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in df.to_numpy()]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def macro_f1(cm: pd.DataFrame) -> float:
    """Mean F1 over the stages present in the truth (rows of the confusion matrix)."""
    scores = []
    for s in cm.index[cm.sum(axis=1) > 0]:
        tp = cm.loc[s, s]
        precision = tp / cm[s].sum() if cm[s].sum() else 0.0
        recall = tp / cm.loc[s].sum()
        scores.append(2 * precision * recall / (precision + recall) if tp else 0.0)
    return float(np.mean(scores))


def median_speeds(tracks: pd.DataFrame, stage_column: str, px: float, dt: float) -> pd.Series:
    t = tracks.assign(stage=tracks[stage_column]).dropna(subset=["stage"])
    steps = step_speeds(t, pixel_size_um=px, frame_interval_s=dt)
    steps = steps[(steps["gap_frames"] == 1) & steps["within_stage"]]  # frame-to-frame
    return steps.groupby("stage")["speed_um_s"].median().reindex(list(STAGES))


def true_flow_speed(truth: pd.DataFrame, px: float, dt: float) -> float:
    """Median frame-to-frame speed of the noise-free true positions in circulation."""
    t = truth[truth["stage"] == "circulation"]
    steps = step_speeds(t, pixel_size_um=px, frame_interval_s=dt)
    return float(steps.loc[steps["gap_frames"] == 1, "speed_um_s"].median())


def evaluate(
    movies: list[Movie],
    tracker: str,
    use_masks: bool,
    classifier: StageClassifier | None,
    config: PipelineConfig,
) -> tuple[dict, pd.DataFrame]:
    cms, errors = [], []
    for m in movies:
        tracks = m.tracks[tracker]
        staged, _ = classify_stages(
            tracks,
            m.segments[tracker],
            config.stages,
            masks=m.masks if use_masks else None,
            pixel_size_um=m.px,
            frame_interval_s=m.dt,
            classifier=classifier,
        )
        scored = staged.dropna(subset=["true_stage"])
        cms.append(
            pd.crosstab(scored["true_stage"], scored["stage"]).reindex(
                index=list(STAGES), columns=list(STAGES), fill_value=0
            )
        )
        measured = median_speeds(staged, "stage", m.px, m.dt)
        reference = median_speeds(m.tracks["perfect"], "true_stage", m.px, m.dt)
        reference["circulation"] = true_flow_speed(m.truth, m.px, m.dt)
        errors.append((measured - reference) / reference)
    cm = sum(cms)
    row = {
        "accuracy": np.trace(cm.to_numpy()) / cm.to_numpy().sum(),
        "macro_f1": macro_f1(cm),
    }
    speed_error = pd.concat(errors, axis=1)
    for s in STAGES:  # the worst movie for each stage
        e = speed_error.loc[s].dropna()
        row[f"{s}_speed_err"] = float(e.abs().max()) if len(e) else np.nan
    return row, cm


def speed_and_memory(tracks_csv: str, masks_tif: str, tile: int, px: float, dt: float) -> None:
    """CPU seconds (min of 3) and memory of classify_stages, rules with masks."""
    import resource
    import tracemalloc

    import tifffile

    tracks = pd.read_csv(tracks_csv)
    tracks = tracks[[c for c in tracks.columns if c not in ("state", "stage", "segment")]]
    masks = tifffile.imread(masks_tif)
    with threadpool_limits(limits=1):
        tracks, segments = segment_tracks(tracks, pixel_size_um=px, frame_interval_s=dt)

    def run(t: pd.DataFrame, s: pd.DataFrame) -> float:
        c0 = time.process_time()
        classify_stages(t, s, masks=masks, pixel_size_um=px, frame_interval_s=dt)
        return time.process_time() - c0

    cpu = min(run(tracks, segments) for _ in range(3))
    print(f"{len(tracks)} points: classify_stages {cpu:.2f} CPU s (min of 3)")
    offset = int(tracks["particle"].max()) + 1
    big = pd.concat(
        [tracks.assign(particle=tracks["particle"] + k * offset) for k in range(tile)],
        ignore_index=True,
    )
    big_segments = pd.concat(
        [segments.assign(particle=segments["particle"] + k * offset) for k in range(tile)],
        ignore_index=True,
    )
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    tracemalloc.start()
    cpu = run(big, big_segments)
    peak = tracemalloc.get_traced_memory()[1] / 1e6
    tracemalloc.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    size = big.memory_usage(deep=True).sum() / 1e6
    print(
        f"{len(big)} points ({tile} copies, table {size:.0f} MB): {cpu:.2f} CPU s; peak of "
        f"Python allocations during the call {peak:.0f} MB; peak RSS {rss0:.0f} -> {rss1:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[101, 102, 103])
    parser.add_argument("--photons", type=float, nargs="+", default=[400.0, 150.0])
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument(
        "--quick", action="store_true", help="one seed, 400 photons, 1 training seed"
    )
    parser.add_argument("--speed", nargs=2, metavar=("TRACKS_CSV", "MASKS_TIF"))
    parser.add_argument("--tile", type=int, default=21)
    parser.add_argument("--pixel-size", type=float, default=0.2)
    parser.add_argument("--frame-interval", type=float, default=1 / 30)
    args = parser.parse_args()
    if args.speed:
        speed_and_memory(*args.speed, args.tile, args.pixel_size, args.frame_interval)
        return
    if args.quick:
        args.seeds, args.photons, args.train_seeds = args.seeds[:1], [400.0], args.train_seeds[:1]
    config = PipelineConfig()
    t0 = time.perf_counter()
    train = [
        make_movie(s, p, args.preset, config, trackers=("perfect",))
        for s in args.train_seeds
        for p in args.photons
    ]
    with threadpool_limits(limits=1):  # OpenMP threads fight on a small shared machine
        classifiers = train_classifiers(train)
    print(f"trained on {len(train)} movies in {time.perf_counter() - t0:.0f} s")
    rows, matrices = [], {}
    for photons in args.photons:
        t1 = time.perf_counter()
        movies = [make_movie(s, photons, args.preset, config) for s in args.seeds]
        for tracker in ("perfect", "pipeline"):
            for use_masks in (True, False):
                for method in ("rules", "trained"):
                    clf = classifiers[use_masks] if method == "trained" else None
                    row, cm = evaluate(movies, tracker, use_masks, clf, config)
                    key = (photons, tracker, "masks" if use_masks else "no masks", method)
                    rows.append(
                        dict(zip(("photons", "tracker", "masks", "method"), key, strict=True)) | row
                    )
                    matrices[key] = cm
        print(f"{photons:.0f} photons: {len(movies)} movies in {time.perf_counter() - t1:.0f} s")
    table = pd.DataFrame(rows)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    print(
        f"\npreset {args.preset}, seeds {args.seeds}, classifier trained on seeds "
        f"{args.train_seeds} (all photon counts)\n"
    )
    print(markdown(table[["photons", "tracker", "masks", "method", "accuracy", "macro_f1"]]))
    print(
        "\nRelative error of each stage's median frame-to-frame speed (worst movie; "
        "reference: perfect tracker with true stages, true speed for circulation)\n"
    )
    speed_cols = [f"{s}_speed_err" for s in STAGES]
    print(
        markdown(
            table[["photons", "tracker", "masks", "method", *speed_cols]].rename(
                columns=lambda c: c.replace("_speed_err", "")
            )
        )
    )
    shown = [
        ("masks", "rules"),
        ("masks", "trained"),
        ("no masks", "rules"),
        ("no masks", "trained"),
    ]
    for key in [k for k in matrices if k[1] == "perfect" and k[2:] in shown]:
        print(f"\nConfusion matrix (rows true, columns found): {key}\n")
        print(markdown(matrices[key], index=True))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s (shared, loaded machine)")


if __name__ == "__main__":
    main()
