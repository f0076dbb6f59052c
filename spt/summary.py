"""Per-stage tables: how many particles, how long they stay and how fast they move in each stage.

For one movie or pooled over a batch: the stage velocity table (with bootstrap 95% confidence
intervals and a localisation-noise flag), dwell times and stage-to-stage transition counts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numba import njit

from spt.schema import STAGE_VELOCITY_COLUMNS, STAGES
from spt.stages import estimate_localization_error_um

__all__ = [
    "STAGE_TABLE_COLUMNS",
    "MovieStages",
    "StageSummary",
    "by_track",
    "column_descriptions",
    "dwell_times",
    "pooled_stage_velocities",
    "stage_summary",
    "stage_transitions",
    "stage_velocities",
    "step_speeds",
]

#: Columns of the stage velocity table: the DESIGN contract first, then the extras.
STAGE_TABLE_COLUMNS: tuple[str, ...] = (
    *STAGE_VELOCITY_COLUMNS,
    "n_points",
    "mean_speed_ci_low_um_s",
    "mean_speed_ci_high_um_s",
    "median_speed_ci_low_um_s",
    "median_speed_ci_high_um_s",
    "n_runs",
    "median_run_speed_um_s",
    "run_speed_ci_low_um_s",
    "run_speed_ci_high_um_s",
    "noise_floor_um_s",
    "noise_fraction",
    "noise_dominated",
    "n_dwells",
    "n_complete_dwells",
    "median_dwell_s",
    "median_complete_dwell_s",
)


def _ci_columns(name: str, ci: tuple) -> dict:
    """The two columns ``<name>_ci_low_um_s, <name>_ci_high_um_s`` of a 95% interval ``ci``
    (lower, upper bound; um/s, or their descriptions)."""
    return {f"{name}_ci_low_um_s": ci[0], f"{name}_ci_high_um_s": ci[1]}


def _ci_descriptions(name: str, what: str) -> dict[str, tuple[str, str]]:
    return _ci_columns(
        name,
        tuple(("um/s", f"bootstrap 95% CI of the {what}, {b} bound") for b in ("lower", "upper")),
    )


#: What each column of the stage velocity table means (unit, meaning), for files and reports.
_DESCRIPTIONS: dict[str, tuple[str, str]] = {
    "stage": ("", "delivery stage (Tada et al. 2007), in delivery order"),
    "n_tracks": ("", "tracks with at least one point in this stage"),
    "n_segments": ("", "motion segments whose majority stage is this one"),
    "n_steps": ("", "one-frame steps with both ends in this stage"),
    "mean_speed_um_s": (
        "um/s",
        "mean FRAME-TO-FRAME speed: displacement between consecutive frames / frame interval; "
        "includes localisation noise, so it is never zero even for a particle at rest",
    ),
    "median_speed_um_s": ("um/s", "median frame-to-frame speed (same steps)"),
    "sd_speed_um_s": ("um/s", "standard deviation of the frame-to-frame speeds"),
    "D_um2_s": ("um^2/s", "median diffusion coefficient of the stage's segments (MSD fit)"),
    "alpha": ("", "median anomalous exponent of the stage's segments (1 free, <1 restricted)"),
    "n_points": ("", "track points (localisations) in this stage"),
    **_ci_descriptions("mean_speed", "mean speed"),
    **_ci_descriptions("median_speed", "median speed"),
    "n_runs": ("", "directed segments (runs) in this stage"),
    "median_run_speed_um_s": (
        "um/s",
        "median NET RUN SPEED of directed segments: net displacement of a run / its duration; "
        "what a particle actually travels while it runs, almost free of localisation noise",
    ),
    **_ci_descriptions("run_speed", "median run speed"),
    "noise_floor_um_s": (
        "um/s",
        "localisation-noise floor sqrt(2) x localisation error / frame interval: the typical "
        "frame-to-frame speed of a particle that does not move at all",
    ),
    "noise_fraction": (
        "",
        "share of the mean squared frame-to-frame speed explained by localisation noise, "
        "2 x floor^2 / mean(speed^2) (1 = all noise)",
    ),
    "noise_dominated": (
        "",
        "True when noise_fraction > 0.5 (rms speed below 2 x the floor): the frame-to-frame "
        "speed of this stage is mostly jitter, read the run speed or D instead",
    ),
    "n_dwells": ("", "uninterrupted stays in this stage (one per track and visit)"),
    "n_complete_dwells": ("", "stays whose start and end were both observed"),
    "median_dwell_s": (
        "s",
        "median time spent in the stage per stay; stays cut by the start or end of a track are "
        "included, so this is a lower bound",
    ),
    "median_complete_dwell_s": ("s", "median duration of the complete stays only"),
}

_N_BOOT = 1000
_INT_COLUMNS = (
    "n_tracks",
    "n_segments",
    "n_steps",
    "n_points",
    "n_runs",
    "n_dwells",
    "n_complete_dwells",
)


def column_descriptions() -> pd.DataFrame:
    """Unit and meaning of every column of the stage velocity table."""
    return pd.DataFrame(
        [(c, *_DESCRIPTIONS[c]) for c in STAGE_TABLE_COLUMNS], columns=["column", "unit", "meaning"]
    )


@dataclass(frozen=True)
class MovieStages:
    """The classified tracks of one movie with their calibration.

    Attributes
    ----------
    tracks : DataFrame
        ``particle, frame, x, y`` (px), ``state``, ``stage`` (output of
        :func:`spt.stages.classify_stages`).
    segments : DataFrame
        ``particle, segment, state, stage, D_um2_s, alpha, speed_um_s``.
    pixel_size_um, frame_interval_s : float
        Calibration, um/px and s.
    name : str
        Movie name (tells the movies of a batch apart).
    localization_error_um : float or None
        Localisation error (s.d. per axis, um); measured from the tracks when None
        (:func:`spt.stages.estimate_localization_error_um`).
    """

    tracks: pd.DataFrame
    segments: pd.DataFrame
    pixel_size_um: float
    frame_interval_s: float
    name: str = ""
    localization_error_um: float | None = None

    @functools.cached_property
    def _parts(self) -> _MovieParts | None:
        return _movie_parts(self)

    def prepare(self) -> MovieStages:
        """Compute now this movie's share of :func:`stage_summary` (kept with it) and load the
        compiled bootstrap, e.g. while a batch waits for its other movies; returns the movie."""
        _ = self._parts
        _load_compiled()
        return self


@functools.cache
def _load_compiled() -> None:
    """Load numba's cached bootstrap median now (~0.3 s in a process that has not run numba
    code yet) rather than in the middle of :func:`stage_summary`."""
    _weighted_medians(np.zeros(1), np.zeros(1, np.intp), np.ones((1, 1), np.intp), np.ones(1))


@dataclass(frozen=True)
class _MovieParts:
    """One movie's share of :func:`stage_summary`: its frame-to-frame steps, stays and points,
    and for each table of steps, segments, stays and points the index of each row's track among
    the movie's ``n_clusters`` tracks (its bootstrap cluster, offset when movies are pooled)."""

    steps: pd.DataFrame
    dwells: pd.DataFrame
    points: pd.DataFrame
    clusters: dict[str, np.ndarray]
    n_clusters: int
    noise_floor_um_s: float


def _movie_parts(m: MovieStages) -> _MovieParts | None:
    if m.tracks.empty:
        return None
    # Clusters of the bootstrap (tracks, told apart by movie) as integers: one code per
    # (movie, particle), cheaper than pairs for millions of steps.
    particles = pd.Index(pd.unique(m.tracks["particle"]))
    sigma = m.localization_error_um
    if sigma is None:
        sigma = estimate_localization_error_um(m.tracks, pixel_size_um=m.pixel_size_um)
    steps = _frame_to_frame(
        step_speeds(m.tracks, pixel_size_um=m.pixel_size_um, frame_interval_s=m.frame_interval_s)
    )
    dwells = dwell_times(m.tracks, frame_interval_s=m.frame_interval_s)
    points = m.tracks[["particle", "stage"]]
    tables = {"steps": steps, "segments": m.segments, "dwells": dwells, "points": points}
    return _MovieParts(
        steps,
        dwells,
        points,
        {k: particles.get_indexer(t["particle"]) for k, t in tables.items()},
        len(particles),
        np.sqrt(2) * sigma / m.frame_interval_s,
    )


@dataclass
class StageSummary:
    """All per-stage tables of one movie or a pooled batch."""

    velocities: pd.DataFrame
    dwells: pd.DataFrame
    transitions: pd.DataFrame
    steps: pd.DataFrame


# ----------------------------------------------------------------------------- building blocks


def by_track(tracks: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``tracks[columns]`` sorted by ``particle, frame`` (stable), without sorting a table
    that already is (as the pipeline's are): only the columns needed are copied."""
    columns = [c for c in dict.fromkeys(["particle", "frame", *columns]) if c in tracks]
    p, f = tracks["particle"].to_numpy(), tracks["frame"].to_numpy()
    if len(p) < 2 or bool(np.all((p[1:] > p[:-1]) | ((p[1:] == p[:-1]) & (f[1:] > f[:-1])))):
        return tracks[columns]
    return tracks[columns].sort_values(["particle", "frame"], kind="stable")


def step_speeds(
    tracks: pd.DataFrame, *, pixel_size_um: float, frame_interval_s: float
) -> pd.DataFrame:
    """Speed of every step between consecutive detections of a particle.

    A step across a blinking gap of ``g`` frames is divided by ``g`` frame intervals. The
    stage tables use only the true frame-to-frame steps: ``gap_frames == 1`` and
    ``within_stage`` (both ends in the same stage).

    Returns
    -------
    DataFrame
        ``particle, frame`` (end frame), ``stage`` and ``state`` (of the end point, when the
        tracks have them), ``gap_frames``, ``within_stage``, ``speed_um_s``.
    """
    t = by_track(tracks, ["x", "y", "stage", "state"])
    p, f = t["particle"].to_numpy(), t["frame"].to_numpy()
    keep = p[1:] == p[:-1]
    d = np.diff(t[["x", "y"]].to_numpy(float), axis=0)[keep]
    gap = (f[1:] - f[:-1])[keep]
    n = int(keep.sum())
    stage = t["stage"].to_numpy() if "stage" in t else np.full(len(t), None)
    state = t["state"].to_numpy()[1:][keep] if "state" in t else np.full(n, None)
    return pd.DataFrame(
        {
            "particle": p[1:][keep],
            "frame": f[1:][keep],
            "stage": stage[1:][keep],
            "state": state,
            "gap_frames": gap.astype(np.int64),
            "within_stage": (stage[1:] == stage[:-1])[keep],
            "speed_um_s": np.hypot(d[:, 0], d[:, 1]) * pixel_size_um / (gap * frame_interval_s),
        }
    )


def _frame_to_frame(steps: pd.DataFrame) -> pd.DataFrame:
    """The steps that measure a frame-to-frame speed within one stage."""
    return steps[(steps["gap_frames"] == 1) & steps["within_stage"].astype(bool)]


def dwell_times(tracks: pd.DataFrame, *, frame_interval_s: float) -> pd.DataFrame:
    """Uninterrupted stays of each track in each stage.

    Returns
    -------
    DataFrame
        One row per stay: ``particle, stage, start_frame, end_frame, n_points``, ``dwell_s``
        (frames spanned x frame interval) and ``censored`` (True when the stay touches the start
        or end of its track, so the particle may have been in the stage longer).
    """
    columns = ["particle", "stage", "start_frame", "end_frame", "n_points", "dwell_s", "censored"]
    if tracks.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    t = by_track(tracks, ["stage"])
    p, stage = t["particle"].to_numpy(), t["stage"].to_numpy()
    new = np.r_[True, (p[1:] != p[:-1]) | (stage[1:] != stage[:-1])]
    run = np.cumsum(new) - 1
    g = pd.DataFrame({"particle": p, "stage": stage, "frame": t["frame"].to_numpy(), "run": run})
    runs = g.groupby("run").agg(
        particle=("particle", "first"),
        stage=("stage", "first"),
        start_frame=("frame", "min"),
        end_frame=("frame", "max"),
        n_points=("frame", "size"),
    )
    first = runs["particle"].ne(runs["particle"].shift())
    last = runs["particle"].ne(runs["particle"].shift(-1))
    runs["dwell_s"] = (runs["end_frame"] - runs["start_frame"] + 1) * frame_interval_s
    runs["censored"] = (first | last).to_numpy()
    return runs.reset_index(drop=True)[columns]


def stage_transitions(dwells: pd.DataFrame) -> pd.DataFrame:
    """Counts of moves between stages within tracks, for every ordered pair of stages.

    Parameters
    ----------
    dwells : DataFrame
        Output of :func:`dwell_times` (optionally with a ``movie`` column, kept apart).

    Returns
    -------
    DataFrame
        ``from_stage, to_stage, n_transitions`` for all 36 ordered pairs (zeros included), in
        delivery order.
    """
    keys = ["movie", "particle"] if "movie" in dwells else ["particle"]
    d = dwells.sort_values([*keys, "start_frame"])
    same = np.ones(max(len(d) - 1, 0), bool)
    for k in keys:
        v = d[k].to_numpy()
        same &= v[1:] == v[:-1]
    stage = d["stage"].to_numpy()
    moves = pd.DataFrame({"from_stage": stage[:-1][same], "to_stage": stage[1:][same]})
    counts = moves.value_counts()
    index = pd.MultiIndex.from_product([STAGES, STAGES], names=["from_stage", "to_stage"])
    out = counts.reindex(index, fill_value=0).rename("n_transitions").reset_index()
    return out.astype({"n_transitions": "int64"})


# ----------------------------------------------------------------------------- statistics


def _cluster_bootstrap_ci(
    values: np.ndarray, clusters: np.ndarray, statistic: str, rng: np.random.Generator
) -> tuple[float, float]:
    """Percentile 95% CI of the mean or median of ``values``, resampling whole clusters (tracks).

    Steps of one track are correlated, so tracks, not steps, are drawn with replacement
    (cluster bootstrap; Field & Welsh, J R Stat Soc B 69:369, 2007). NaN with < 2 clusters.
    A resample is a vector of draw counts per cluster: the mean is then computed from the
    clusters' sums and sizes, the median by one walk along the sorted values, so time is
    O(resamples x (clusters + steps)) and memory O(clusters), however many steps a batch has.
    """
    codes, uniques = pd.factorize(clusters)
    k = len(uniques)
    if k < 2 or values.size == 0:
        return float("nan"), float("nan")
    sizes = np.bincount(codes, minlength=k).astype(float)
    if statistic == "mean":
        sums = np.bincount(codes, weights=values, minlength=k)
    else:
        order = np.argsort(values, kind="stable")
        sorted_values, sorted_codes = values[order], codes[order]
    estimates = np.empty(_N_BOOT)
    # Draw counts are made in blocks of at most ~4 million (resample, cluster) cells.
    block = int(np.clip(4_000_000 // k, 1, 100))
    for start in range(0, _N_BOOT, block):
        b = min(block, _N_BOOT - start)
        draws = rng.integers(0, k, size=(b, k))
        weights = np.bincount((draws + k * np.arange(b)[:, None]).ravel(), minlength=b * k).reshape(
            b, k
        )
        if statistic == "mean":
            estimates[start : start + b] = (weights @ sums) / (weights @ sizes)
        else:
            totals = weights @ sizes  # resampled steps
            estimates[start : start + b] = _weighted_medians(
                sorted_values, sorted_codes, weights, totals
            )
    lo, hi = np.percentile(estimates, [2.5, 97.5])
    return float(lo), float(hi)


@njit(cache=True)
def _weighted_medians(
    sorted_values: np.ndarray, sorted_codes: np.ndarray, weights: np.ndarray, totals: np.ndarray
) -> np.ndarray:  # pragma: no cover - compiled
    """For each row of ``weights`` (count per cluster), the weighted median of the values.

    ``totals`` holds each row's total weight over the values (draw counts x cluster sizes).

    The first sorted value at which the cumulative weight reaches half the total (the lower
    median of the resampled steps).
    """
    out = np.empty(weights.shape[0])
    for r in range(weights.shape[0]):
        half = totals[r] / 2
        acc = 0.0
        out[r] = sorted_values[-1]
        for j in range(sorted_values.size):
            acc += weights[r, sorted_codes[j]]
            if acc >= half:
                out[r] = sorted_values[j]
                break
    return out


def _velocity_row(
    stage: str,
    points: pd.DataFrame,
    steps: pd.DataFrame,
    segments: pd.DataFrame,
    dwells: pd.DataFrame,
    rng: np.random.Generator | None,
) -> dict:
    speeds = steps["speed_um_s"].to_numpy(float)
    runs = segments[segments["state"] == "directed"]
    run_speeds = runs["speed_um_s"].to_numpy(float)
    floor = steps["noise_floor_um_s"].to_numpy(float)
    complete = dwells[~dwells["censored"].astype(bool)]
    with np.errstate(invalid="ignore", divide="ignore"):
        noise_fraction = (
            float(np.mean(2 * floor**2) / np.mean(speeds**2)) if speeds.size else float("nan")
        )
    nan = float("nan")
    if rng is None:  # no intervals
        mean_ci = median_ci = run_ci = (nan, nan)
    else:
        mean_ci = _cluster_bootstrap_ci(speeds, steps["cluster"].to_numpy(), "mean", rng)
        median_ci = _cluster_bootstrap_ci(speeds, steps["cluster"].to_numpy(), "median", rng)
        run_ci = _cluster_bootstrap_ci(run_speeds, runs["cluster"].to_numpy(), "median", rng)
    return {
        "stage": stage,
        "n_tracks": points["cluster"].nunique(),
        "n_segments": len(segments),
        "n_steps": speeds.size,
        "mean_speed_um_s": float(speeds.mean()) if speeds.size else nan,
        "median_speed_um_s": float(np.median(speeds)) if speeds.size else nan,
        "sd_speed_um_s": float(speeds.std(ddof=1)) if speeds.size > 1 else nan,
        "D_um2_s": float(segments["D_um2_s"].median()) if len(segments) else nan,
        "alpha": float(segments["alpha"].median()) if len(segments) else nan,
        "n_points": len(points),
        **_ci_columns("mean_speed", mean_ci),
        **_ci_columns("median_speed", median_ci),
        "n_runs": run_speeds.size,
        "median_run_speed_um_s": float(np.median(run_speeds)) if run_speeds.size else nan,
        **_ci_columns("run_speed", run_ci),
        "noise_floor_um_s": float(np.median(floor)) if floor.size else nan,
        "noise_fraction": noise_fraction,
        "noise_dominated": bool(noise_fraction > 0.5),
        "n_dwells": len(dwells),
        "n_complete_dwells": len(complete),
        "median_dwell_s": float(dwells["dwell_s"].median()) if len(dwells) else nan,
        "median_complete_dwell_s": float(complete["dwell_s"].median()) if len(complete) else nan,
    }


# ----------------------------------------------------------------------------- tables


def stage_summary(
    movies: Sequence[MovieStages],
    *,
    seed: int = 0,
    velocities: pd.DataFrame | None = None,
    intervals: bool = True,
) -> StageSummary:
    """Per-stage velocity, dwell and transition tables of one movie or pooled over several.

    Pooling concatenates the steps, segments and stays of all movies; tracks are told apart by
    movie, and the bootstrap resamples tracks across the whole batch. Each step carries the
    noise floor of its own movie.

    Parameters
    ----------
    movies : sequence of MovieStages
        Classified tracks and calibration of each movie.
    seed : int
        Seed of the bootstrap (1000 resamples), for reproducible intervals.
    velocities : DataFrame, optional
        The velocity table of these same movies, already computed (e.g. by the analysis): it is
        returned as is instead of being computed again (the bootstrap is the costly part).
    intervals : bool
        False leaves the bootstrap confidence intervals out (NaN): the quick table of the
        estimates, e.g. for figures drawn while the intervals are computed.

    Returns
    -------
    StageSummary
        ``velocities`` (one row per stage present, in delivery order, columns
        :data:`STAGE_TABLE_COLUMNS`, see :func:`column_descriptions`), ``dwells``
        (:func:`dwell_times` + ``movie``), ``transitions`` (:func:`stage_transitions`) and
        ``steps`` (the frame-to-frame steps of :func:`step_speeds` + ``movie,
        noise_floor_um_s``).
    """
    steps, segments, dwells, points = [], [], [], []
    n_clusters = 0
    for k, m in enumerate(movies):
        parts = m._parts
        if parts is None:
            continue
        movie = m.name or str(k)
        base, n_clusters = n_clusters, n_clusters + parts.n_clusters
        cluster = {name: codes + base for name, codes in parts.clusters.items()}
        steps.append(
            parts.steps.assign(
                movie=movie, noise_floor_um_s=parts.noise_floor_um_s, cluster=cluster["steps"]
            )
        )
        segments.append(m.segments.assign(movie=movie, cluster=cluster["segments"]))
        dwells.append(parts.dwells.assign(movie=movie, cluster=cluster["dwells"]))
        points.append(parts.points.assign(movie=movie, cluster=cluster["points"]))
    if not points:  # no tracks at all: the same tables, empty
        no_tracks = pd.DataFrame(
            {c: pd.Series(dtype=object) for c in ("particle", "frame", "x", "y", "stage")}
        )
        steps.append(
            step_speeds(no_tracks, pixel_size_um=1.0, frame_interval_s=1.0).assign(
                movie=pd.Series(dtype=object), noise_floor_um_s=pd.Series(dtype=float)
            )
        )
        segments.append(
            pd.DataFrame(
                {c: pd.Series(dtype=object) for c in ("movie", "particle", "stage", "state")}
            ).assign(**{c: pd.Series(dtype=float) for c in ("D_um2_s", "alpha", "speed_um_s")})
        )
        dwells.append(
            dwell_times(no_tracks, frame_interval_s=1.0).assign(movie=pd.Series(dtype=object))
        )
        points.append(no_tracks[["particle", "stage"]].assign(movie=pd.Series(dtype=object)))
    steps_t = _frame_to_frame(pd.concat(steps, ignore_index=True))
    segments_t = pd.concat(segments)
    dwells_t, points_t = pd.concat(dwells, ignore_index=True), pd.concat(points)
    for table in (steps_t, segments_t, dwells_t, points_t):
        if "cluster" not in table:  # the empty tables
            table["cluster"] = pd.Series(dtype="int64")
    if velocities is None:
        rng = np.random.default_rng(seed) if intervals else None
        rows = [
            _velocity_row(
                stage,
                points_t[points_t["stage"] == stage],
                steps_t[steps_t["stage"] == stage],
                segments_t[segments_t["stage"] == stage],
                dwells_t[dwells_t["stage"] == stage],
                rng,
            )
            for stage in STAGES
            if (points_t["stage"] == stage).any()
        ]
        velocities = pd.DataFrame(rows, columns=list(STAGE_TABLE_COLUMNS))
        velocities = velocities.astype(
            {c: "int64" for c in _INT_COLUMNS} | {"noise_dominated": bool}
        )
    dwells_t = dwells_t.drop(columns="cluster")
    return StageSummary(
        velocities=velocities,
        dwells=dwells_t[["movie", *[c for c in dwells_t if c != "movie"]]],
        transitions=stage_transitions(dwells_t),
        steps=steps_t.drop(columns="cluster"),
    )


def stage_velocities(
    tracks: pd.DataFrame,
    segments: pd.DataFrame,
    *,
    pixel_size_um: float,
    frame_interval_s: float,
    localization_error_um: float | None = None,
) -> pd.DataFrame:
    """The stage velocity table of one movie (see :func:`stage_summary`).

    Parameters
    ----------
    tracks : DataFrame
        Classified tracks: ``particle, frame, x, y`` (px), ``state``, ``stage``.
    segments : DataFrame
        Segments with ``particle, state, stage, D_um2_s, alpha, speed_um_s``.
    pixel_size_um, frame_interval_s : float
        Calibration, um/px and s.
    localization_error_um : float, optional
        Localisation error (um) for the noise floor; measured from the tracks when omitted.

    Returns
    -------
    DataFrame
        One row per stage present, in delivery order, columns :data:`STAGE_TABLE_COLUMNS`
        (DESIGN columns first). Speeds
        in um/s: ``*_speed_um_s`` are frame-to-frame speeds, ``*run_speed*`` net speeds of
        directed segments.
    """
    movie = MovieStages(
        tracks,
        segments,
        pixel_size_um,
        frame_interval_s,
        localization_error_um=localization_error_um,
    )
    return stage_summary([movie]).velocities


def pooled_stage_velocities(movies: Sequence[MovieStages]) -> pd.DataFrame:
    """The stage velocity table pooled over several movies (see :func:`stage_summary`)."""
    return stage_summary(movies).velocities
