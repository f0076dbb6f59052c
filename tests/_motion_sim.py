"""Small generators of 2-D tracks with known motion, for the motion-analysis tests.

Positions are exposure-averaged over the whole frame (motion blur R = 1/6) and carry Gaussian
localisation noise, as in real camera data; everything is in pixels and frames.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SUBSTEPS = 10


def _blurred_walk(rng, n, D_px2_frame, v_px_frame=(0.0, 0.0), radius_px=None, start=(0.0, 0.0)):
    """n exposure-averaged positions of a walk (free, drifting, or reflected inside a disk)."""
    dt = 1.0 / SUBSTEPS
    steps = rng.normal(0, np.sqrt(2 * D_px2_frame * dt), size=(n * SUBSTEPS, 2))
    steps += np.asarray(v_px_frame) * dt
    if radius_px is None:
        fine = np.asarray(start) + np.cumsum(steps, axis=0)
    else:
        fine = np.empty_like(steps)
        p = np.zeros(2)
        for i, s in enumerate(steps):
            q = p + s
            r = np.hypot(*q)
            if r > radius_px:  # reflect back inside the disk
                q = q * (2 * radius_px - r) / r
            p = q
            fine[i] = p
        fine += np.asarray(start)
    return fine.reshape(n, SUBSTEPS, 2).mean(axis=1)


def brownian(rng, n, D_px2_frame, sigma_px=0.0, start=(0.0, 0.0)):
    return (
        _blurred_walk(rng, n, D_px2_frame, start=start) + rng.normal(0, sigma_px, (n, 2))
        if sigma_px
        else _blurred_walk(rng, n, D_px2_frame, start=start)
    )


def directed(rng, n, v_px_frame, D_px2_frame=0.0, sigma_px=0.0, start=(0.0, 0.0)):
    return _blurred_walk(rng, n, D_px2_frame, v_px_frame, start=start) + rng.normal(
        0, sigma_px, (n, 2)
    )


def confined(rng, n, radius_px, D_px2_frame, sigma_px=0.0, start=(0.0, 0.0)):
    return _blurred_walk(rng, n, D_px2_frame, radius_px=radius_px, start=start) + rng.normal(
        0, sigma_px, (n, 2)
    )


def fbm(rng, n, alpha, K_px2_frame, sigma_px=0.0):
    """Fractional Brownian motion with MSD = 4 K t^alpha (Davies-Harte free, Cholesky exact)."""
    t = np.arange(1, n + 1, dtype=float)
    H = alpha / 2
    cov = K_px2_frame * (
        t[:, None] ** (2 * H) + t[None, :] ** (2 * H) - np.abs(t[:, None] - t[None, :]) ** (2 * H)
    )
    L = np.linalg.cholesky(cov + 1e-12 * np.eye(n))
    xy = L @ rng.normal(size=(n, 2))
    return xy + rng.normal(0, sigma_px, (n, 2))


def table(xy, particle=0, frames=None):
    frames = np.arange(len(xy)) if frames is None else np.asarray(frames)
    return pd.DataFrame({"frame": frames, "x": xy[:, 0], "y": xy[:, 1], "particle": particle})


def stop_and_go(rng, n_cycles, stop_frames, run_frames, v_px_frame, sigma_px, D_stop=0.0):
    """Alternating immobile stops and straight runs; returns positions and true per-point state."""
    pos, states = [], []
    p = np.zeros(2)
    for _ in range(n_cycles):
        stop = (
            _blurred_walk(rng, stop_frames, D_stop, start=p)
            if D_stop
            else np.tile(p, (stop_frames, 1))
        )
        pos.append(stop)
        states += ["immobile"] * stop_frames
        p = stop[-1]
        ang = rng.uniform(0, 2 * np.pi)
        v = v_px_frame * np.array([np.cos(ang), np.sin(ang)])
        run = p + v * (np.arange(1, run_frames + 1)[:, None] - 0.5)
        pos.append(run)
        states += ["directed"] * run_frames
        p = p + v * run_frames
    xy = np.concatenate(pos)
    return xy + rng.normal(0, sigma_px, xy.shape), np.array(states)
