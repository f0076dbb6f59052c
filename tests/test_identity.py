"""Identity repair where two tracks meet (spt.identity)."""

import numpy as np
import pandas as pd
import pytest

from spt.errors import SptInputError
from spt.identity import step_variance, untangle_tracks


def _two_still_particles(rng, exchange_at=None, brightness=(400.0, 650.0)):
    """Two immobile particles 2 px apart, localised with 0.15 px noise; their track ids are
    exchanged from frame ``exchange_at`` on (frame ``exchange_at - 1`` missed by both)."""
    rows = []
    for pid, (y, ph) in enumerate(zip((23.0, 25.0), brightness, strict=True)):
        for f in range(60):
            if exchange_at is not None and f == exchange_at - 1:
                continue
            owner = pid if exchange_at is None or f < exchange_at else 1 - pid
            e = rng.normal(0, 0.15, 2)
            rows.append((f, 30.0 + e[0], y + e[1], ph * rng.normal(1, 0.08), owner, pid))
    return pd.DataFrame(rows, columns=["frame", "x", "y", "signal", "particle", "truth"])


def _purity(tracks):
    return tracks.groupby("particle")["truth"].agg(lambda v: v.value_counts().iloc[0] / len(v))


def test_exchange_of_two_still_particles_is_undone_and_correct_tracks_are_left_alone():
    rng = np.random.default_rng(0)
    swapped = _two_still_particles(rng, exchange_at=31)
    assert _purity(swapped).max() < 0.6
    out = untangle_tracks(swapped)
    assert _purity(out).min() == 1.0
    assert len(out) == len(swapped)
    # correct tracks stay as they are
    right = _two_still_particles(rng)
    assert _purity(untangle_tracks(right)).min() == 1.0
    # off: nothing exchanged
    assert _purity(untangle_tracks(swapped, min_llr=1e9)).max() < 0.6


def _overtaking(rng, exchange_at=None):
    """Two flowing particles, 4 and 6 px/frame along x, lanes 4.5 px apart: the faster one
    passes the slower at frame 20 (no frame has them closer than 4.5 px); their track ids are
    exchanged from frame ``exchange_at`` on."""
    rows = []
    for pid, (x0, speed, y) in enumerate(((10.0, 4.0, 30.0), (-30.0, 6.0, 34.5))):
        for f in range(41):
            owner = pid if exchange_at is None or f < exchange_at else 1 - pid
            e = rng.normal(0, 0.3, 2)
            rows.append((f, x0 + speed * f + e[0], y + e[1], 150 * rng.normal(1, 0.2), owner, pid))
    return pd.DataFrame(rows, columns=["frame", "x", "y", "signal", "particle", "truth"])


def test_flowing_particles_exchanged_while_overtaking_are_untangled():
    """Flowing particles pass each other between frames: the meeting is found within
    ``flow_contact_px`` and judged by each one's velocity, not within ``contact_px``."""
    rng = np.random.default_rng(2)
    swapped = _overtaking(rng, exchange_at=21)
    assert _purity(swapped).max() < 0.6
    assert _purity(untangle_tracks(swapped)).min() == 1.0
    assert _purity(untangle_tracks(_overtaking(rng))).min() == 1.0  # correct ones left alone
    assert _purity(untangle_tracks(swapped, flow_contact_px=3.0)).max() < 0.6
    # still particles 4.5 px apart do not meet (within reach of the flow contact only)
    still = _two_still_particles(rng).assign(y=lambda t: t["y"] + 2.5 * t["truth"])
    assert untangle_tracks(still)["particle"].tolist() == still["particle"].tolist()


def _dim_meeting(rng, brightness=(400.0, 480.0), swapped=True, neighbour=False):
    """Two dim particles (per-frame log-brightness s.d. 0.25, as at ~150 photons) 8 px apart
    for 60 frames, at one place for 4, then 8 px apart at right angles to before for 60: where
    each one went is equally likely from its place. Particle 0 goes to x = 34, particle 1 to
    x = 26; with ``swapped``, the track ids are exchanged after the meeting. With
    ``neighbour``, a third particle 1 px from particle 0 in frames 20-59, whose light the fit
    of particle 0's spot takes (twice its signal)."""
    rows = []
    places = {
        0: ((30.0, 26.0), (30.0, 29.5), (34.0, 30.0)),
        1: ((30.0, 34.0), (30.0, 30.5), (26.0, 30.0)),
    }
    for pid, (before, during, after) in places.items():
        for f in range(124):
            xy = before if f < 60 else during if f < 64 else after
            owner = 1 - pid if swapped and f >= 62 else pid
            signal = brightness[pid] * np.exp(rng.normal(0, 0.25))
            if neighbour and pid == 0 and 40 <= f < 60:
                signal *= 2
            e = rng.normal(0, 0.15, 2)
            rows.append((f, xy[0] + e[0], xy[1] + e[1], signal, owner, pid))
    if neighbour:
        for f in range(40, 60):
            rows.append((f, 31.0, 26.0, 800.0 * np.exp(rng.normal(0, 0.25)), 2, 2))
    return pd.DataFrame(rows, columns=["frame", "x", "y", "signal", "particle", "truth"])


def test_dim_particles_are_told_apart_by_brightness_over_enough_frames():
    """At ~150 photons, ten frames either side of a meeting cannot tell quantum dots 20 %
    apart in brightness (log-likelihood ratio ~3); the brightness of enough frames (s.d. of
    the mean 0.04: ~40 frames) can, and it leaves correct tracks and equal particles alone.
    Spots that a neighbour's light brightens are left out of it."""

    def untangled(tracks):  # each track holds one particle (but a frame or two at the meeting)
        return bool(_purity(tracks).min() >= 0.95)

    n = dict.fromkeys(("long", "ten", "equal", "right", "crowd", "crowd_all_spots"), 0)
    for seed in range(12):
        rng = np.random.default_rng(seed)
        swapped = _dim_meeting(rng)
        assert _purity(swapped).max() < 0.6
        n["long"] += untangled(untangle_tracks(swapped))
        n["ten"] += untangled(untangle_tracks(swapped, brightness_sd=1.0))  # 10-frame windows
        n["equal"] += untangled(
            untangle_tracks(_dim_meeting(rng, brightness=(440.0, 440.0), swapped=False))
        )
        n["right"] += untangled(untangle_tracks(_dim_meeting(rng, swapped=False)))
        crowd = _dim_meeting(rng, neighbour=True)
        n["crowd"] += untangled(untangle_tracks(crowd))
        n["crowd_all_spots"] += untangled(untangle_tracks(crowd, isolation_px=0.0))
    assert n["long"] >= 9 and n["crowd"] >= 9
    assert n["equal"] == 12 and n["right"] == 12  # nothing exchanged that should not be
    assert n["ten"] <= 3 and n["crowd_all_spots"] <= 3


def test_step_variance_is_the_tracks_own_and_input_is_validated():
    rng = np.random.default_rng(1)
    t = _two_still_particles(rng)
    var = step_variance(
        t["particle"].to_numpy(), t["frame"].to_numpy(), t["x"].to_numpy(), t["y"].to_numpy()
    )
    # steps of 0.15 px noise on each end: per-axis variance 2 * 0.15^2, median of a chi-square
    assert var.between(0.3 * 0.045, 1.5 * 0.045).all()
    with pytest.raises(SptInputError, match="signal"):
        untangle_tracks(t.drop(columns="signal"))
    with pytest.raises(ValueError):
        untangle_tracks(t, window_frames=1)
    with pytest.raises(ValueError):
        untangle_tracks(t, isolation_px=-1)
