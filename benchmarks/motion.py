"""Accuracy and speed of motion-state segmentation (spt.segment) against two kinds of ground truth.

Printed side by side with a simple reference: one segment per track, state from the MSD model
chosen by BIC (spt.msd.track_msd_fits).

1. ``sim``: spt's own simulator (spt.simulate): stop-and-go internalisation, directed flow and
   extravasation, confined binding, free diffusion; Gaussian localisation noise is added here and
   blinking gaps are kept (rows with ``visible == False`` dropped). Needs only spt's own
   environment::

       PYTHONPATH=. python benchmarks/motion.py sim

2. ``andi``: the AnDi-2024 generator ``andi_datasets.models_phenom`` (multi_state,
   immobile_traps, confinement with the challenge's default parameters) scored with its own
   ``andi_datasets.utils_challenge.error_SingleTraj_dataset``. andi-datasets pins numpy<=1.26.4,
   so it lives in a separate virtualenv, never in spt's dependencies::

       python3 -m venv .venv-andi
       .venv-andi/bin/pip install "numpy<=1.26.4" scipy pandas andi-datasets
       PYTHONPATH=. .venv-andi/bin/python benchmarks/motion.py andi

   (``make bench-motion`` runs both.) AnDi positions are in pixels and frames; they are analysed
   as pixel 0.2 um and 1/30 s (the simulator's camera, so the default SegmentConfig applies) and
   D is converted back to px^2/frame for scoring.

3. ``speed``: CPU and wall time of ``segment_tracks`` (default SegmentConfig, as in
   ``spt run``) on an existing track table, e.g. the tracks.csv that ``spt run`` writes for the
   600-frame ``spt simulate --preset benchmark --seed 1`` movie; min of ``--repeat`` runs::

       PYTHONPATH=. python benchmarks/motion.py speed out/m1/tracks.csv

Timings are on whatever machine runs this (ours: 2 shared, loaded cores); CPU seconds
(``time.process_time``) are printed beside wall-clock seconds and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Small dense matrices (one per segment): BLAS threads only add contention on shared machines.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pandas as pd

from spt.msd import track_msd_fits
from spt.segment import SegmentConfig, segment_tracks

STATE_CODE = {"immobile": 0, "confined": 1, "free": 2, "directed": 3}
PX_UM, DT_S = 0.2, 1 / 30
#: AnDi's conventions: no motion blur, sub-diffusion without walls counts as "free", trapped
#: particles have D = 0 exactly, segments of >= 10 points are typical. Penalty 1.0 (not spt's
#: 0.85): on AnDi seed 1 (not the reported seed 0) it gave a lower alpha MAE and higher state F1.
#: No population decision of confinement (``pool_D_factor=0``): AnDi draws D per trajectory and
#: state independently, so D does not mark a population; on seed 1 pooling lowered state F1
#: from 0.843 to 0.798 with this config (and raised it from 0.689 to 0.758 with the defaults).
ANDI_CONFIG = SegmentConfig(
    min_segment_frames=10,
    changepoint_penalty=1.0,
    immobile_max_D_um2_s=0.0,
    confined_max_alpha=0.0,
    blur_r=0.0,
    pool_D_factor=0.0,
)


def reference_segments(
    tracks: pd.DataFrame, *, pixel_size_um: float, frame_interval_s: float
) -> pd.DataFrame:
    """One segment per track: the MSD model with the lowest BIC gives state, D and alpha."""
    fits = track_msd_fits(tracks, pixel_size_um=pixel_size_um, frame_interval_s=frame_interval_s)
    state = fits["model"].map(
        {
            "immobile": "immobile",
            "confined": "confined",
            "free": "free",
            "anomalous": "free",
            "directed": "directed",
        }
    )
    state = state.where(~((fits["model"] == "anomalous") & (fits["alpha"] >= 1.9)), "directed")
    D = fits["D_um2_s"].where(state != "immobile", 0.0).fillna(0.0)
    alpha = fits["alpha"].where(state != "immobile", 0.0).fillna(1.0)
    return fits.assign(state=state, D_um2_s=D, alpha=alpha)


# ----------------------------------------------------------------------------------- AnDi


def andi_dataset(n_per_model: int, T: int, seed: int):
    """Trajectories (list of (T, 2) arrays, px) and labels (list of (T, 3): alpha, D, state)."""
    import stochastic.random
    from andi_datasets.models_phenom import models_phenom

    # andi-datasets draws fBm through the `stochastic` package, whose default generator is
    # unseeded: point it at numpy's global RandomState so that the seed makes the data repeatable.
    stochastic.random.use_randomstate()
    np.random.seed(seed)  # noqa: NPY002 (andi-datasets draws from numpy's global state)
    rng = np.random.default_rng(seed)
    L = 1.8 * 128  # as andi_datasets.datasets_challenge._defaults_andi2
    trajs, labels, kinds = [], [], []
    for kind in ("multi_state", "immobile_traps", "confinement"):
        # Per-experiment parameters drawn as in datasets_challenge._get_dic_andi2 (which cannot be
        # imported without IPython); several experiments per model for variety.
        for n in np.diff(np.linspace(0, n_per_model, 4).round().astype(int)):  # 3 experiments
            fast = 1 + rng.normal() * 0.01
            slow = fast * (rng.uniform() * (0.1 - 0.01) + 0.01)
            a1 = rng.uniform(0.8, 1.2)
            a2 = a1 - rng.uniform(0.2, 0.6)
            if kind == "multi_state":
                t, lab = models_phenom().multi_state(
                    N=n,
                    T=T,
                    L=L,
                    Ds=np.array([[fast, fast * 0.01], [slow, slow * 0.01]]),
                    alphas=np.array([[a1, 0.01], [a2, 0.01]]),
                    M=np.array([[0.99, 0.01], [0.01, 0.99]]),
                    return_state_num=True,
                )
            elif kind == "immobile_traps":
                t, lab = models_phenom().immobile_traps(
                    N=n,
                    T=T,
                    L=L,
                    Ds=[1.0, 0.01],
                    alphas=[rng.uniform(0.5, 1.5), 0.01],
                    Pu=0.01,
                    Pb=1,
                    Nt=300,
                    r=0.4,
                )
            else:
                t, lab = models_phenom().confinement(
                    N=n,
                    T=T,
                    L=L,
                    Ds=np.array([[fast, fast * 0.01], [slow, slow * 0.01]]),
                    alphas=np.array([[a1, 0.01], [a2, 0.01]]),
                    r=5,
                    Nc=30,
                    trans=0.1,
                )
            for i in range(n):
                trajs.append(t[:, i, :] + rng.normal(0, 0.12, (T, 2)))  # challenge noise 0.12 px
                labels.append(lab[:, i, :3])
                kinds.append(kind)
    return trajs, labels, kinds


def _as_table(trajs) -> pd.DataFrame:
    return pd.concat(
        [
            pd.DataFrame({"frame": np.arange(len(t)), "x": t[:, 0], "y": t[:, 1], "particle": i})
            for i, t in enumerate(trajs)
        ],
        ignore_index=True,
    )


def _pred_df(segments: pd.DataFrame, T: int) -> pd.DataFrame:
    """AnDi prediction table: traj_idx, changepoints (incl. T), alphas, Ds (px^2/frame), states."""
    rows = []
    to_px = DT_S / PX_UM**2
    for pid, g in segments.groupby("particle", sort=True):
        g = g.sort_values("segment")
        cps = [*g["start_frame"].iloc[1:].astype(int).tolist(), T]
        rows.append(
            {
                "traj_idx": int(pid),
                "changepoints": cps,
                "alphas": np.clip(g["alpha"].fillna(1.0).to_numpy(float), 0, 1.999).tolist(),
                "Ds": (g["D_um2_s"].fillna(0.0).to_numpy(float) * to_px).tolist(),
                "states": g["state"].map(STATE_CODE).to_numpy(int).tolist(),
            }
        )
    return pd.DataFrame(rows)


def run_andi(args: argparse.Namespace) -> None:
    from andi_datasets.utils_challenge import error_SingleTraj_dataset, label_continuous_to_list

    trajs, labels, kinds = andi_dataset(args.n // 3, args.T, args.seed)
    tracks = _as_table(trajs)
    true_rows = []
    for i, lab in enumerate(labels):
        cp, a, d, s = label_continuous_to_list(lab)
        true_rows.append(
            {
                "traj_idx": i,
                "changepoints": cp.tolist(),
                "alphas": a.tolist(),
                "Ds": d.tolist(),
                "states": s.tolist(),
                "T": args.T,
            }
        )
    df_true = pd.DataFrame(true_rows)
    kinds = np.array(kinds)

    t0 = time.perf_counter()
    _, segs = segment_tracks(tracks, SegmentConfig(), pixel_size_um=PX_UM, frame_interval_s=DT_S)
    t_seg = time.perf_counter() - t0
    _, segs_andi = segment_tracks(tracks, ANDI_CONFIG, pixel_size_um=PX_UM, frame_interval_s=DT_S)
    t0 = time.perf_counter()
    ref = reference_segments(tracks, pixel_size_um=PX_UM, frame_interval_s=DT_S)
    t_ref = time.perf_counter() - t0
    ref = ref.assign(segment=0, start_frame=0)

    results = {}
    for name, seg in (
        ("reference (1 segment, MSD+BIC)", ref),
        ("spt.segment defaults", segs),
        ("spt.segment ANDI_CONFIG", segs_andi),
    ):
        pred = _pred_df(seg, args.T)
        rows = {}
        for kind in ("all", "multi_state", "immobile_traps", "confinement"):
            idx = np.arange(len(trajs)) if kind == "all" else np.flatnonzero(kinds == kind)
            rmse, ji, a_mae, d_msle, f1 = error_SingleTraj_dataset(
                pred[pred.traj_idx.isin(idx)],
                df_true[df_true.traj_idx.isin(idx)],
                threshold_cp=args.cp_threshold,
                prints=False,
                disable_tqdm=True,
            )
            rows[kind] = {
                "CP RMSE": rmse,
                "CP Jaccard": ji,
                "alpha MAE": a_mae,
                "D MSLE": d_msle,
                "state F1": f1,
            }
        results[name] = rows
    print(
        f"AnDi-2024 models_phenom: {len(trajs)} trajectories x {args.T} points, "
        "localisation noise 0.12 px, "
        f"change-point threshold {args.cp_threshold} frames, seed {args.seed}"
    )
    print("targets: CP Jaccard >= 0.50, alpha MAE <= 0.20, D MSLE <= 0.08, state F1 >= 0.80\n")
    for kind in ("all", "multi_state", "immobile_traps", "confinement"):
        table = pd.DataFrame({name: rows[kind] for name, rows in results.items()})
        print(f"[{kind}]")
        print(table.round(3).to_string())
        print()
    print(f"ANDI_CONFIG = {ANDI_CONFIG}")
    print(f"time: spt.segment (defaults) {t_seg:.1f} s, reference {t_ref:.1f} s")


# ----------------------------------------------------------------------------------- simulator


def _true_changepoints(obs: pd.DataFrame) -> dict[int, np.ndarray]:
    out = {}
    for pid, g in obs.groupby("particle", sort=True):
        s = g["state"].to_numpy()
        f = g["frame"].to_numpy()
        out[pid] = f[1:][s[1:] != s[:-1]]
    return out


def _cps_between_long_phases(obs: pd.DataFrame, min_frames: int) -> dict[int, np.ndarray]:
    """Per particle, for each true change point (as in :func:`_true_changepoints`): whether the
    true phases on both sides last at least ``min_frames`` frames."""
    out = {}
    for pid, g in obs.groupby("particle", sort=True):
        s = g["state"].to_numpy()
        f = g["frame"].to_numpy()
        idx = np.flatnonzero(s[1:] != s[:-1]) + 1
        bounds = np.r_[f[0], f[idx], f[-1] + 1]
        length = np.diff(bounds)
        out[pid] = (length[:-1] >= min_frames) & (length[1:] >= min_frames)
    return out


def _match_cps(true: np.ndarray, pred: np.ndarray, tol: int) -> tuple[int, list[int]]:
    """Greedy one-to-one matching of change points within ``tol`` frames; (n matched, offsets)."""
    used = np.zeros(len(pred), bool)
    offs = []
    for t in true:
        if len(pred) == 0:
            break
        d = np.where(used, np.inf, np.abs(pred - t))
        j = int(np.argmin(d))
        if d[j] <= tol:
            used[j] = True
            offs.append(int(pred[j] - t))
    return len(offs), offs


def _f1(true: np.ndarray, pred: np.ndarray) -> tuple[float, float, dict]:
    per = {}
    for s in STATE_CODE:
        tp = np.sum((true == s) & (pred == s))
        fp = np.sum((true != s) & (pred == s))
        fn = np.sum((true == s) & (pred != s))
        if tp + fp + fn:
            per[s] = 2 * tp / (2 * tp + fp + fn)
    macro = float(np.mean(list(per.values())))
    return float(np.mean(true == pred)), macro, per


def _segment_scores(obs: pd.DataFrame, seg: pd.DataFrame, labels: np.ndarray) -> dict:
    """Run speeds and D of detected segments against the true runs / states."""
    obs = obs.assign(pred_seg=labels)
    # True runs: maximal stretches of one (stage, state) per particle.
    key = (obs["state"] != obs.groupby("particle")["state"].shift()) | (
        obs["stage"] != obs.groupby("particle")["stage"].shift()
    )
    obs = obs.assign(true_seg=key.groupby(obs["particle"]).cumsum())
    speed_err, d_ratio_free, d_ratio_conf = [], [], []
    for (pid, _), g in obs.groupby(["particle", "true_seg"], sort=False):
        state, stage = g["state"].iloc[0], g["stage"].iloc[0]
        best = g["pred_seg"].value_counts()
        k = best.index[0]
        row = seg[(seg["particle"] == pid) & (seg["segment"] == k)]
        if row.empty:
            continue
        row = row.iloc[0]
        overlap = best.iloc[0] / max(len(g), row["n_points"])
        if state == "directed" and stage == "internalization" and len(g) >= 8:
            dur = (g["frame"].iloc[-1] - g["frame"].iloc[0]) * DT_S
            true_v = (
                np.hypot(g["tx"].iloc[-1] - g["tx"].iloc[0], g["ty"].iloc[-1] - g["ty"].iloc[0])
                * PX_UM
                / dur
            )
            if row["state"] == "directed" and overlap >= 0.5:
                speed_err.append(row["speed_um_s"] / true_v - 1)
            else:
                speed_err.append(np.nan)
        if row["n_points"] >= 30 and overlap >= 0.5 and row["state"] in ("free", "confined"):
            if state == "free" and stage == "extracellular":
                d_ratio_free.append(row["D_um2_s"] / 0.25)
            elif state == "confined" and stage == "membrane_binding":
                d_ratio_conf.append(row["D_um2_s"] / 0.05)
            elif state == "confined" and stage == "perinuclear":
                d_ratio_conf.append(row["D_um2_s"] / 0.02)
    speed_err = np.asarray(speed_err)
    within = lambda r: float(np.mean(np.abs(np.log(r)) <= np.log(1.3))) if len(r) else np.nan  # noqa: E731
    return {
        "runs (true, >= 8 frames)": len(speed_err),
        "runs found as directed": int(np.sum(np.isfinite(speed_err))),
        "median |run speed error|": float(np.nanmedian(np.abs(speed_err)))
        if np.isfinite(speed_err).any()
        else np.nan,
        "median run speed bias": float(np.nanmedian(speed_err))
        if np.isfinite(speed_err).any()
        else np.nan,
        "free segs >= 30 pts": len(d_ratio_free),
        "free: median D / true": float(np.median(d_ratio_free)) if d_ratio_free else np.nan,
        "free: D within x1.3": within(np.asarray(d_ratio_free)),
        "confined segs >= 30 pts": len(d_ratio_conf),
        "confined: median D / true": float(np.median(d_ratio_conf)) if d_ratio_conf else np.nan,
        "confined: D within x1.3": within(np.asarray(d_ratio_conf)),
    }


def run_sim(args: argparse.Namespace) -> None:
    from spt.simulate import SimulationConfig, simulate_tracks

    cfg = SimulationConfig(n_frames=args.frames, n_particles=args.particles, seed=args.seed)
    truth, _ = simulate_tracks(cfg)
    rng = np.random.default_rng(args.seed)
    obs = truth[truth["visible"]].copy()
    obs = obs.assign(tx=obs["x"], ty=obs["y"])
    sigma_px = args.sigma_um / PX_UM
    obs["x"] = obs["x"] + rng.normal(0, sigma_px, len(obs))
    obs["y"] = obs["y"] + rng.normal(0, sigma_px, len(obs))
    obs = obs.sort_values(["particle", "frame"], ignore_index=True)
    tracks = obs[["frame", "x", "y", "particle"]]
    config = SegmentConfig(blur_r=cfg.exposure_fraction / 6)

    t0, c0 = time.perf_counter(), time.process_time()
    out, segs = segment_tracks(tracks, config, pixel_size_um=PX_UM, frame_interval_s=DT_S)
    t_seg, c_seg = time.perf_counter() - t0, time.process_time() - c0
    ref = reference_segments(tracks, pixel_size_um=PX_UM, frame_interval_s=DT_S)
    ref_state = (
        obs[["particle"]]
        .merge(ref[["particle", "state"]], on="particle", how="left")["state"]
        .to_numpy()
    )

    true_state = obs["state"].to_numpy()
    true_cps = _true_changepoints(obs)
    n_true = sum(len(v) for v in true_cps.values())
    long_cps = _cps_between_long_phases(obs, config.min_segment_frames)
    table = {}
    for name, pred_state, seg_labels, seg_table in (
        (
            "reference (1 segment, MSD+BIC)",
            ref_state,
            np.zeros(len(obs), int),
            ref.assign(segment=0),
        ),
        ("spt.segment", out["state"].to_numpy(), out["segment"].to_numpy(), segs),
    ):
        acc, macro, per = _f1(true_state, pred_state)
        pred_cps = {
            pid: g["frame"].to_numpy()[1:][np.diff(seg_labels[g.index]) != 0]
            for pid, g in obs.groupby("particle", sort=True)
        }
        n_pred = sum(len(v) for v in pred_cps.values())
        matched, offs = 0, []
        matched_long = n_long = 0
        for pid, tc in true_cps.items():
            k, o = _match_cps(tc, pred_cps.get(pid, np.zeros(0)), args.cp_tol)
            matched += k
            offs += o
            # diagnostic: changes next to a true phase shorter than min_segment_frames (e.g. a
            # run cut short by the next stage), which no segment of the allowed length can match
            keep = long_cps[pid]
            n_long += int(keep.sum())
            matched_long += _match_cps(tc[keep], pred_cps.get(pid, np.zeros(0)), args.cp_tol)[0]
        row = {
            "per-point accuracy (micro F1)": acc,
            "per-point macro F1": macro,
            **{f"F1 {s}": v for s, v in per.items()},
            f"true CPs found within {args.cp_tol} frames": matched / max(n_true, 1),
            f"  same, without CPs next to phases < {config.min_segment_frames} frames "
            f"({n_true - n_long})": matched_long / max(n_long, 1),
            f"predicted CPs within {args.cp_tol} frames (precision)": matched / max(n_pred, 1),
            "mean CP offset (frames)": float(np.mean(offs)) if offs else np.nan,
        }
        if name == "spt.segment":
            row.update(_segment_scores(obs, seg_table, seg_labels))
        table[name] = row
    print(
        f"spt.simulate: {obs['particle'].nunique()} tracks, {len(obs)} visible points, "
        f"{args.frames} frames, localisation noise {args.sigma_um * 1000:.0f} nm, "
        f"seed {args.seed}; true state changes: {n_true}"
    )
    print(
        "targets: per-point F1 >= 0.90; >= 80% of true CPs within 3 frames; "
        "median |run speed error| <= 0.10; "
        "D within x1.3 for segments >= 30 points\n"
    )
    print(pd.DataFrame(table).to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"\ntime: spt.segment {c_seg:.1f} s CPU, {t_seg:.1f} s wall for {len(obs)} points")


def run_speed(args: argparse.Namespace) -> None:
    tracks = pd.read_csv(args.tracks)
    tracks = tracks[[c for c in tracks.columns if c not in ("state", "stage", "segment")]]
    kw = dict(pixel_size_um=args.pixel_size, frame_interval_s=args.frame_interval)
    segment_tracks(tracks.head(500), **kw)  # compile the numba kernels (cached on disk)
    cpu, wall = [], []
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        _, segs = segment_tracks(tracks, **kw)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    print(
        f"segment_tracks: {len(tracks)} localisations, {tracks['particle'].nunique()} tracks -> "
        f"{len(segs)} segments; min of {args.repeat}: {min(cpu):.2f} s CPU, "
        f"{min(wall):.2f} s wall; load average {os.getloadavg()[0]:.1f}"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="which", required=True)
    a = sub.add_parser("andi", help="AnDi-2024 models_phenom (needs andi-datasets)")
    a.add_argument("--n", type=int, default=99, help="trajectories (a third per model)")
    a.add_argument("--T", type=int, default=200, help="points per trajectory")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument(
        "--cp-threshold", type=int, default=10, help="change-point match threshold, frames"
    )
    s = sub.add_parser("sim", help="spt.simulate ground truth")
    s.add_argument("--frames", type=int, default=600)
    s.add_argument("--particles", type=int, default=40)
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--sigma-um", type=float, default=0.03, help="localisation noise added, um")
    s.add_argument("--cp-tol", type=int, default=3, help="change-point tolerance, frames")
    v = sub.add_parser("speed", help="time segment_tracks on a track table (CSV)")
    v.add_argument("tracks", help="track table: frame, x, y, particle (+ x_err, y_err)")
    v.add_argument("--pixel-size", type=float, default=PX_UM, help="um")
    v.add_argument("--frame-interval", type=float, default=DT_S, help="s")
    v.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    {"andi": run_andi, "sim": run_sim, "speed": run_speed}[args.which](args)


if __name__ == "__main__":
    sys.exit(main())
