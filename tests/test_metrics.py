"""Scoring measures on hand-computed cases (spt.metrics; ISBI 2012, Chenouard et al. 2014)."""

import numpy as np
import pandas as pd
import pytest

from spt.metrics import detection_scores, isbi_scores, match_spots, track_scores


def _track(pid, frames, x0=10.0, y=10.0, dx=0.0):
    return pd.DataFrame({"frame": list(frames), "particle": pid, "x": x0 + dx, "y": y})


def test_perfect_tracks_score_one():
    truth = pd.concat([_track(0, range(20)), _track(1, range(5, 30), x0=50.0)], ignore_index=True)
    s = isbi_scores(truth, truth)
    assert (s.alpha, s.beta, s.jsc, s.jsc_theta) == (1.0, 1.0, 1.0, 1.0)
    ts = track_scores(truth, truth)
    assert ts.recovered == 1.0 and ts.switches_per_100_links == 0.0


def test_offset_track_alpha_beta():
    """4 points 1 px off with eps = 5: d(X,Y) = 4, d(X,0) = 20 -> alpha = beta = 0.8, JSC = 1."""
    truth = _track(0, range(4))
    found = _track(7, range(4), dx=1.0)
    s = isbi_scores(truth, found, eps=5.0)
    assert s.alpha == pytest.approx(0.8)
    assert s.beta == pytest.approx(0.8)
    assert s.jsc == 1.0 and s.jsc_theta == 1.0


def test_spurious_track_lowers_beta_not_alpha():
    truth = _track(0, range(4))
    found = pd.concat(
        [_track(7, range(4), dx=1.0), _track(8, range(3), x0=100.0)], ignore_index=True
    )
    s = isbi_scores(truth, found, eps=5.0)
    assert s.alpha == pytest.approx(0.8)
    assert s.beta == pytest.approx((20 - 4) / (20 + 15))
    assert s.jsc == pytest.approx(4 / 7)
    assert s.jsc_theta == pytest.approx(0.5)


def test_split_track():
    """A 10-point track found as two 5-point halves: the better half is paired, the other is
    unpaired. d(X,Y) = 5 eps = 25 of d(X,0) = 50."""
    truth = _track(0, range(10))
    found = pd.concat([_track(3, range(5)), _track(4, range(5, 10))], ignore_index=True)
    s = isbi_scores(truth, found, eps=5.0)
    assert s.alpha == pytest.approx(0.5)
    assert s.beta == pytest.approx(25 / 75)
    assert s.jsc == pytest.approx(5 / 15)
    assert s.jsc_theta == pytest.approx(0.5)
    ts = track_scores(truth, found, min_points=5)
    assert ts.recovered == 0.0
    assert ts.switches_per_100_links == pytest.approx(100 / 9)


def test_pairing_with_far_track_is_not_forced():
    """A candidate that never comes within eps is worse than a dummy: reference stays unpaired."""
    truth = _track(0, range(5))
    found = _track(1, range(5), x0=200.0)
    s = isbi_scores(truth, found, eps=5.0)
    assert s.alpha == 0.0 and s.jsc == 0.0 and s.jsc_theta == 0.0


def test_match_spots_is_one_to_one_and_gated():
    truth = pd.DataFrame({"frame": [0, 0, 1], "x": [0.0, 1.0, 5.0], "y": [0.0, 0.0, 5.0]})
    found = pd.DataFrame({"frame": [0, 1, 1], "x": [0.4, 5.0, 50.0], "y": [0.0, 7.5, 5.0]})
    m = match_spots(truth, found, max_dist=2.0)
    assert len(m) == 1  # one found spot for two true spots; the others are too far
    assert m["dx"].abs().max() <= 0.6
    s = detection_scores(truth, found, max_dist=2.0)
    assert s.recall == pytest.approx(1 / 3) and s.precision == pytest.approx(1 / 3)
    # the 2.5 px match counts with a wider gate
    assert detection_scores(truth, found, max_dist=3.0).n_matched == 2


def test_rmse_is_per_axis():
    truth = pd.DataFrame({"frame": np.arange(100), "x": 0.0, "y": 0.0})
    found = truth.assign(x=0.3, y=0.4)
    assert detection_scores(truth, found).rmse_px == pytest.approx(np.sqrt((0.09 + 0.16) / 2))
