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
