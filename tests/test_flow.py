"""Flow tracks at low SNR: seeding from unlinked detections, following along the line (spt.flow)."""

import sys
import tracemalloc

import numpy as np
import pandas as pd
import pytest
from _smaps import mapped_kb

from spt.detect import DetectConfig, locate_movie, resolve_camera_and_psf
from spt.errors import SptInputError
from spt.flow import FlowConfig, _jump_cuts, _map_fit, _seed_along, follow_flow
from spt.guided import guided_detect
from spt.io import read_movie, write_movie
from spt.link import LinkConfig, link
from spt.localize import fit_spots
from spt.metrics import match_spots
from spt.simulate import SimulationConfig, render

PX, DT = 0.2, 1 / 30
SHAPE = (64, 200)


def _flow_truth(n_particles: int, speed_px: float, seed: int) -> pd.DataFrame:
    """Particles entering at the left one after another, carried to the right at ``speed_px``
    px/frame with lateral jitter (plug flow plus diffusion, 0.5 um^2/s, as in the simulator),
    motion-blurred over the first half of each frame (4 sub-steps), 150 photons per frame."""
    rng = np.random.default_rng(seed)
    rows = []
    sd = np.sqrt(2 * 0.5 * DT) / PX / 2  # per sub-step of half a frame's diffusion
    for p in range(n_particles):
        t0 = 12 * p
        x, y = -2.0, 20.0 + 12.0 * (p % 3)
        for frame in range(t0, t0 + 60):
            xs, ys = [], []
            for _ in range(4):
                x += speed_px / 8 + rng.normal(0, sd / 2)
                y += rng.normal(0, sd / 2)
                xs.append(x)
                ys.append(y)
            x += speed_px / 2 + rng.normal(0, sd)  # unexposed half of the frame
            y += rng.normal(0, sd)
            visible = -0.5 < np.mean(xs) < SHAPE[1] - 0.5
            rows.append((frame, p, np.mean(xs), np.mean(ys), visible, 150.0, xs, ys))
            if x > SHAPE[1] + 2:
                break
    return pd.DataFrame(
        rows, columns=["frame", "particle", "x", "y", "visible", "photons", "_xs", "_ys"]
    )


_CAM = SimulationConfig().camera
#: Detection with the simulator's camera (spot signals in photons).
_CALIBRATED = DetectConfig(
    em_gain=_CAM.em_gain,
    e_per_adu=_CAM.e_per_adu,
    offset_adu=_CAM.offset_adu,
    read_noise_e=_CAM.read_noise_e,
)


def _pipeline(movie, flow: FlowConfig, link_config: LinkConfig = LinkConfig()):
    """Detection, linking and guided re-detection (with the flow pass) as `spt run` does."""
    camera, sigma = resolve_camera_and_psf(movie[:32], _CALIBRATED)
    spots = locate_movie(movie, _CALIBRATED, resolved=(camera, sigma))
    tracks = link(spots, link_config, pixel_size_um=PX, frame_interval_s=DT)
    return spots, guided_detect(
        tracks,
        movie,
        camera=camera,
        psf_sigma_px=sigma,
        pixel_size_um=PX,
        frame_interval_s=DT,
        link_config=link_config,
        spots=spots,
        flow_config=flow,
    )


def _movie(truth: pd.DataFrame, n_frames: int, seed: int) -> np.ndarray:
    cfg = SimulationConfig(shape=SHAPE, n_frames=n_frames, photons=150.0, background=20.0)
    return render(truth, cfg, np.random.default_rng(seed))


def _whole(truth: pd.DataFrame, tracks: pd.DataFrame) -> np.ndarray:
    """Per true particle, the largest share of its visible frames in one found track."""
    vis = truth[truth["visible"]].reset_index(drop=True)
    m = match_spots(vis, tracks)
    pairs = pd.DataFrame(
        {
            "t": vis["particle"].to_numpy()[m.truth_index],
            "f": tracks["particle"].to_numpy()[m.found_index],
        }
    )
    best = pairs.groupby(["t", "f"]).size().groupby(level=0).max()
    return (
        best.reindex(vis["particle"].unique(), fill_value=0) / vis.groupby("particle").size()
    ).to_numpy()


def test_dim_flowing_particles_followed_whole():
    """150-photon particles in 6 px/frame flow (streaks ~3 px long, detected in only about a
    quarter of their frames): with the flow pass each crossing is mostly one track, and more of
    each crossing is in one track than without it."""
    truth = _flow_truth(6, 6.0, seed=3)
    n_frames = int(truth["frame"].max()) + 1
    movie = _movie(truth, n_frames, seed=4)
    spots, with_flow = _pipeline(movie, FlowConfig())
    _, without = _pipeline(movie, FlowConfig(enabled=False))
    vis = truth[truth["visible"]].reset_index(drop=True)
    det = len(match_spots(vis, spots)) / len(vis)
    whole, before = _whole(truth, with_flow), _whole(truth, without)
    assert det < 0.5  # the detector alone misses most of these spots
    assert (whole >= 0.6).all()  # 60 % or more of every crossing in one track
    assert (before < 0.6).sum() >= 2  # without the flow pass, some crossings are lost
    assert whole.mean() > before.mean() + 0.1
    # the spots of the tracks lie on true particles (4 of 199 do not: 3 fits beside a spot, and
    # one frame of a particle held by two tracks)
    m = match_spots(vis, with_flow)
    assert len(with_flow) - len(m) <= 0.025 * len(with_flow)


def test_pure_noise_gets_no_flow_tracks():
    """On a movie of noise alone, the flow pass adds nothing (no seeds, nothing followed)."""
    truth = _flow_truth(1, 6.0, seed=0).assign(visible=False)
    movie = _movie(truth, 120, seed=7)
    spots, with_flow = _pipeline(movie, FlowConfig())
    _, without = _pipeline(movie, FlowConfig(enabled=False))
    assert len(with_flow) == len(without)


def test_seed_needs_three_detections_on_a_line_and_confirmation():
    """Unlinked detections on a flow line are seeded and then followed; a chain of three that
    following cannot confirm (no light beyond it) is dropped."""
    truth = _flow_truth(1, 6.0, seed=5)
    n_frames = int(truth["frame"].max()) + 1
    movie = _movie(truth, n_frames, seed=6)
    camera, sigma = resolve_camera_and_psf(movie, _CALIBRATED)
    vis = truth[truth["visible"]].reset_index(drop=True)
    # three exact detections in frames 10, 12, 13 (none in a track), signal in photons
    pick = vis[vis["frame"].isin([10, 12, 13])]
    spots = pick[["frame", "x", "y"]].assign(signal=150.0, background=20.0, sigma=sigma)
    # a static track elsewhere, so the table is not empty
    still = pd.DataFrame({"frame": [0, 1, 2], "x": 100.0, "y": 5.0, "signal": 150.0, "particle": 0})
    kw = dict(camera=camera, psf_sigma_px=sigma, pixel_size_um=PX, frame_interval_s=DT)
    out = follow_flow(still, movie, spots=spots, **kw)
    new = out[out["particle"] != out.loc[out["x"] == 100.0, "particle"].iloc[0]]
    assert new["particle"].nunique() == 1
    assert len(new) >= 0.6 * len(vis)
    assert len(match_spots(vis, new)) >= 0.95 * len(new)
    # the same chain on a movie without the particle: not confirmed, dropped
    empty = _movie(truth.assign(visible=False), n_frames, seed=8)
    out = follow_flow(still, empty, spots=spots, **kw)
    assert len(out) == len(still)


def test_pair_seeded_along_the_flow_of_followed_tracks():
    """Two unlinked detections 5 frames apart (too far apart for a chain, too dim for a pair)
    seed a track when they move the way a followed flow track moves, not when they move
    against it."""
    truth = _flow_truth(3, 6.0, seed=5)
    # the second crossing 6 px from the first one's lane, the third flows the other way
    near = truth["particle"] == 1
    truth.loc[near, "y"] -= 6.0
    truth.loc[near, "_ys"] = truth.loc[near, "_ys"].map(lambda ys: [y - 6.0 for y in ys])
    back = truth["particle"] == 2
    truth.loc[back, "x"] = SHAPE[1] - 1 - truth.loc[back, "x"]
    truth.loc[back, "_xs"] = truth.loc[back, "_xs"].map(lambda xs: [SHAPE[1] - 1 - x for x in xs])
    n_frames = int(truth["frame"].max()) + 1
    movie = _movie(truth, n_frames, seed=6)
    camera, sigma = resolve_camera_and_psf(movie, _CALIBRATED)
    vis = truth[truth["visible"]].reset_index(drop=True)
    # the first crossing's first 12 spots are a track (signal in photons)
    first = vis[vis["particle"] == 0].head(12)
    tracks = first[["frame", "x", "y", "particle"]].assign(signal=150.0)
    # two exact detections of each other crossing, 5 frames apart, dimmer than the track
    pick = pd.concat([vis[vis["particle"] == q].iloc[[8, 13]] for q in (1, 2)])
    spots = pick[["frame", "x", "y"]].assign(signal=90.0, background=20.0, sigma=sigma)
    kw = dict(camera=camera, psf_sigma_px=sigma, pixel_size_um=PX, frame_interval_s=DT)

    def share(out, q):
        """Largest share of crossing ``q``'s visible frames in one found track."""
        own = vis[vis["particle"] == q].reset_index(drop=True)
        m = match_spots(own, out)
        return out["particle"].to_numpy()[m.found_index].tolist(), len(own)

    out = follow_flow(tracks, movie, spots=spots, **kw)
    found, n = share(out, 1)
    assert max(map(found.count, set(found)), default=0) >= 0.6 * n  # along: seeded, followed
    assert len(share(out, 2)[0]) == 0  # against the flow: not seeded
    off = follow_flow(tracks, movie, spots=spots, config=FlowConfig(along_gap_frames=0), **kw)
    assert len(share(off, 1)[0]) == 0


def test_along_flow_seeds_match_their_definition_in_bounded_memory():
    """Seeding along known flow lines weighs every (pair of detections, line) combination by
    its definition (pair within the line's lateral reach and extent, direction within the
    angle), without holding all pairs x lines at once: a long movie has thousands of each."""
    rng = np.random.default_rng(0)
    f = np.repeat(np.arange(300), 8)
    xy = rng.uniform(0, 256, (len(f), 2))
    k = 1500
    centre = rng.uniform(0, 256, (k, 2))
    angle = rng.uniform(0, 2 * np.pi, k)
    unit = np.column_stack([np.cos(angle), np.sin(angle)])
    lo, hi = -rng.uniform(5, 40, k), rng.uniform(5, 40, k)
    cfg = FlowConfig()
    v_lo, v_hi = 1.7, 13.3
    tracemalloc.start()
    try:
        seeds = _seed_along(f, xy, (centre, unit, lo, hi), cfg, v_lo, v_hi)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40e6  # all pairs x lines at once: ~500 MB here
    # the definition, pair by pair over all lines
    reach, cos_min = cfg.along_lateral_px, np.cos(np.radians(cfg.along_angle_deg))
    expected = []
    for g in range(1, cfg.along_gap_frames + 1):
        for a in range(len(f)):
            for b in np.flatnonzero(f == f[a] + g):
                step = (xy[b] - xy[a]) / g
                speed = np.hypot(*step)
                if not v_lo <= speed <= v_hi:
                    continue
                rel = 0.5 * (xy[a] + xy[b]) - centre
                along = (rel * unit).sum(axis=1)
                lateral = np.abs(rel[:, 0] * unit[:, 1] - rel[:, 1] * unit[:, 0])
                ok = (lateral <= reach) & (along >= lo - reach) & (along <= hi + reach)
                cos = (unit @ step) / speed
                if ok.any() and cos[ok].max() >= cos_min:
                    expected.append((g, -cos[ok].max(), a, b))
    used, want = set(), []
    for _, _, a, b in sorted(expected):
        if a not in used and b not in used:
            used |= {a, b}
            want.append([a, b])
    assert len(want) > 50
    assert [list(s) for s in seeds] == want


def test_jump_cuts_match_their_definition():
    """The vectorised jump test gives, step by step, what its definition says on tracks that
    flow, stop, diffuse, skip frames and jump: a step is cut when it lies beyond max_sd
    jitter s.d. from the median velocity of the steps on each side (sides with >= 2 steps),
    and both sides flow."""
    rng = np.random.default_rng(1)
    v_lo, var_step, max_sd = 1.0, 0.3, 4.0
    n_cut = 0
    for _ in range(400):
        n = int(rng.integers(4, 60))
        f = np.cumsum(rng.integers(1, 4, n))
        v = rng.normal(0, 3, 2) * (rng.random() < 0.7)
        xy = np.cumsum(rng.normal(0, 0.5, (n, 2)) + v * np.r_[1, np.diff(f)][:, None], axis=0)
        if rng.random() < 0.6:
            xy[rng.integers(1, n) :] += rng.normal(0, 8, 2)
        if rng.random() < 0.3:  # the particle stops
            xy[rng.integers(1, n) :] = xy[-1] + rng.normal(0, 0.5, 2)
        window = int(rng.integers(2, 7))
        want = []
        step, gap = np.diff(xy, axis=0), np.diff(f)
        for k in range(n - 1):
            vel = step / gap[:, None]
            sides = [vel[max(0, k - window) : k], vel[k + 1 : k + 1 + window]]
            meds = [np.median(s, axis=0) for s in sides if len(s) >= 2]
            if not meds or any(np.hypot(*m) < v_lo for m in meds):
                continue
            devs = [np.hypot(*(step[k] - m * gap[k])) for m in meds]
            if min(devs) > max_sd * np.sqrt(var_step * (gap[k] + 1)):
                want.append(k)
        got = _jump_cuts(f, xy, v_lo, var_step, max_sd, window)
        assert got.tolist() == want
        n_cut += len(want)
    assert n_cut > 100


def test_fit_window_holds_the_streak_of_fast_flow():
    """At 9 px/frame a spot is a streak ~5 px long: a fit window reaching the track's motion
    beyond the PSF keeps its light (not taken for background), so more of each crossing is
    followed than with a PSF-sized window."""
    truth = _flow_truth(6, 9.0, seed=5)
    n_frames = int(truth["frame"].max()) + 1
    movie = _movie(truth, n_frames, seed=6)
    camera, sigma = resolve_camera_and_psf(movie[:32], _CALIBRATED)
    vis = truth[truth["visible"]].reset_index(drop=True)
    # the first 6 visible frames of each crossing as its track (signal in photons)
    tracks = vis.groupby("particle").head(6)[["frame", "x", "y", "particle"]].assign(signal=150.0)
    kw = dict(camera=camera, psf_sigma_px=sigma, pixel_size_um=PX, frame_interval_s=DT)
    wide = follow_flow(tracks, movie, **kw)
    # confirmation after misses and the prior on position make up for some of the narrow
    # window's lost fits: off here
    alone = dict(confirm_after_misses=False, position_prior=0.0)
    wide_alone = follow_flow(tracks, movie, config=FlowConfig(**alone), **kw)
    narrow = follow_flow(tracks, movie, config=FlowConfig(window_blur_frames=0.0, **alone), **kw)
    found_wide, found_narrow = len(match_spots(vis, wide)), len(match_spots(vis, narrow))
    assert found_wide >= 0.9 * len(vis)
    assert len(match_spots(vis, wide_alone)) >= found_narrow + 10
    assert len(wide) - found_wide <= 0.05 * len(wide)  # the spots lie on true particles


def test_interleaved_pieces_of_one_crossing_are_joined():
    """Two flow tracks of one particle whose frames interleave near the join (the later starts
    3 frames before the earlier ends, no frame shared) become one track; not when joining
    across an overlap is off."""
    truth = _flow_truth(1, 6.0, seed=5)
    vis = truth[truth["visible"]].reset_index(drop=True)
    frames = vis["frame"].to_numpy()
    t0 = frames[0]
    early = (frames <= t0 + 20) | np.isin(frames, t0 + np.array([22, 24]))
    tracks = vis[["frame", "x", "y"]].assign(signal=150.0, particle=np.where(early, 0, 1))
    tracks = tracks[frames <= t0 + 40]
    empty = _movie(truth.assign(visible=False), int(frames.max()) + 1, seed=8)
    camera, sigma = resolve_camera_and_psf(empty[:32], _CALIBRATED)
    kw = dict(camera=camera, psf_sigma_px=sigma, pixel_size_um=PX, frame_interval_s=DT)
    assert follow_flow(tracks, empty, **kw)["particle"].nunique() == 1
    off = follow_flow(tracks, empty, config=FlowConfig(join_overlap_frames=0), **kw)
    assert off["particle"].nunique() == 2


def test_gaps_inside_a_flow_track_are_fitted_but_not_blinks():
    """Frames missing inside a flow track (the particle there, its spot not found) are fitted
    at the line between the spots either side and join the track; a gap where the dot blinked
    off (dark for 6 frames) stays empty."""
    truth = _flow_truth(3, 6.0, seed=9)
    first = truth.groupby("particle")["frame"].transform("min")
    dark = (truth["particle"] == 0) & (truth["frame"] - first).between(20, 25)
    truth.loc[dark, "visible"] = False
    vis = truth[truth["visible"]].reset_index(drop=True)
    rel = (vis["frame"] - vis.groupby("particle")["frame"].transform("min")).to_numpy()
    hidden = np.isin(rel, [8, 9, 10, 11, 14, 15, 16])  # the particle is there, undetected
    tracks = vis.loc[~hidden, ["frame", "x", "y", "particle"]].assign(signal=150.0)
    movie = _movie(truth, int(truth["frame"].max()) + 1, seed=10)
    camera, sigma = resolve_camera_and_psf(movie[:32], _CALIBRATED)
    kw = dict(camera=camera, psf_sigma_px=sigma, pixel_size_um=PX, frame_interval_s=DT)
    out = follow_flow(tracks, movie, **kw)
    gaps = vis[hidden].reset_index(drop=True)
    m = match_spots(gaps, out, max_dist=1.5)
    same = gaps["particle"].to_numpy()[m.truth_index] == out["particle"].to_numpy()[m.found_index]
    assert same.sum() >= 0.8 * len(gaps)  # most hidden frames now hold the particle's spot
    assert out["particle"].nunique() == 3
    # nothing fitted in the dark frames
    dark_frames = truth.loc[dark, "frame"].to_numpy()
    own = out[out["particle"] == out.loc[out["frame"] == dark_frames[0] - 1, "particle"].iloc[0]]
    assert not np.isin(own["frame"], dark_frames).any()
    off = follow_flow(tracks, movie, config=FlowConfig(fill_gap_frames=0), **kw)
    assert len(off) == len(tracks)


def _seeded_scene(truth, *, seed: int, signal: float):
    """A movie of ``truth`` (noise ``seed``) and each particle's first 6 visible spots as its
    track; returns the visible truth and ``follow(**config)``, which follows those tracks (no
    gap filling) with ``FlowConfig(**config)`` and gives the true spots found in their own
    particle's track and the number of spots returned."""
    movie = _movie(truth, int(truth["frame"].max()) + 1, seed=seed)
    camera, sigma = resolve_camera_and_psf(movie[:32], _CALIBRATED)
    vis = truth[truth["visible"]].reset_index(drop=True)
    tracks = vis.groupby("particle").head(6)[["frame", "x", "y", "particle"]].assign(signal=signal)
    kw = dict(camera=camera, psf_sigma_px=sigma, pixel_size_um=PX, frame_interval_s=DT)

    def follow(**config) -> tuple[int, int]:
        out = follow_flow(tracks, movie, config=FlowConfig(fill_gap_frames=0, **config), **kw)
        m = match_spots(vis, out)
        own = vis["particle"].to_numpy()[m.truth_index] == out["particle"].to_numpy()[m.found_index]
        return int(own.sum()), len(out)

    return vis, follow


def test_dim_fit_after_a_miss_is_kept_when_the_next_frame_confirms_it():
    """Particles blinking off for one frame in three: after each miss the next fit must pass a
    raised SNR threshold, which a 150-photon streak often does not, so following stops; a fit
    short of it stands if the next frame's spot confirms it, and the crossings are followed
    (nearly) whole, on true spots."""
    truth = _flow_truth(6, 6.0, seed=11)
    rel = truth["frame"] - truth.groupby("particle")["frame"].transform("min")
    truth.loc[(rel >= 8) & (rel % 3 == 0), "visible"] = False
    vis, follow = _seeded_scene(truth, seed=12, signal=150.0)

    def followed(confirm: bool) -> tuple[int, int]:
        return follow(confirm_after_misses=confirm)

    (found, n_out), (found_off, _) = followed(True), followed(False)
    assert found >= 0.9 * len(vis)
    assert found_off < 0.8 * len(vis)
    assert n_out - found <= 0.05 * n_out  # the spots lie on their own particles


def test_dim_flow_is_followed_with_the_prediction_as_a_prior_on_position():
    """110-photon particles at 7 px/frame (SNR ~2-3 per frame): a fit free to move often goes to
    a noise peak in its window, off the particle (refused, or taking the track astray); with the
    prediction as a prior on its position (maximum a posteriori) it stays on the particle, and
    the crossings are followed much further, on their own particles' spots."""
    truth = _flow_truth(6, 7.0, seed=21).assign(photons=110.0)
    vis, follow = _seeded_scene(truth, seed=22, signal=110.0)

    def followed(prior: float) -> tuple[int, int]:
        return follow(position_prior=prior)

    (found, n_out), (found_mle, _) = followed(1.0), followed(0.0)
    assert found >= 0.85 * len(vis)
    assert found_mle < 0.75 * len(vis)
    assert n_out - found <= 0.05 * n_out  # the spots lie on their own particles


def test_map_fit_keeps_a_spot_inside_the_image_only():
    """The prior pulls a fit towards the prediction, but a spot entering the field, its light
    mostly beyond the edge, must not be placed outside the image (no true spot is there): a
    fit converging beyond the box is refused, as :func:`spt.localize.fit_spots` refuses it,
    and so is one where the maximum-likelihood fit it starts from found no spot; one inside is
    kept, near the true position."""
    rng = np.random.default_rng(0)
    side, sigma, read_var = 11, 1.3, 0.0
    cols = np.arange(side)

    def box(x0: float, y0: float) -> np.ndarray:
        gx = np.exp(-((cols - x0) ** 2) / (2 * sigma**2))
        gy = np.exp(-((cols - y0) ** 2) / (2 * sigma**2))
        mu = 20.0 + 400.0 * np.outer(gy, gx) / (2 * np.pi * sigma**2)
        return rng.poisson(mu)[None].astype(np.float32)

    class _Cam:
        read_var_effective = read_var

    for x_true, pred_x, want in ((-1.5, 0.2, False), (4.0, 4.8, True)):
        b = box(x_true, 5.0)
        start = fit_spots(
            b, np.array([0]), np.array([0]), np.array([pred_x]), np.array([5.0]), sigma
        )
        x, y, n, *_, ok = _map_fit(b, 0, 0, np.array([pred_x, 5.0]), 1.5, start, sigma, _Cam())
        assert ok == want
        if want:
            assert abs(x - x_true) < 0.5 and abs(y - 5.0) < 0.5
            # where the maximum-likelihood fit found no spot, the prior does not make one
            start.ok[0] = False
            assert not _map_fit(b, 0, 0, np.array([pred_x, 5.0]), 1.5, start, sigma, _Cam())[-1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_memory_mapped_movie_pages_are_released(tmp_path):
    """Following flow tracks reads a window of one frame per fit: on a memory-mapped movie the
    pages those reads map must not stay resident (a movie larger than memory would otherwise
    end up whole in the process's memory)."""
    truth = _flow_truth(12, 6.0, seed=3)
    n_frames = int(truth["frame"].max()) + 1
    frames = _movie(truth, n_frames, seed=4)
    path = write_movie(tmp_path / "m.ome.tif", frames, pixel_size_um=PX, frame_interval_s=DT)
    movie = read_movie(path)
    assert isinstance(movie.frames, np.memmap)
    camera, sigma = resolve_camera_and_psf(frames[:32], _CALIBRATED)
    # the first 6 visible frames of each crossing as its track (signal in photons): the rest
    # must be followed
    vis = truth[truth["visible"]]
    tracks = vis.groupby("particle").head(6)[["frame", "x", "y", "particle"]].assign(signal=150.0)
    kw = dict(camera=camera, psf_sigma_px=sigma, pixel_size_um=PX, frame_interval_s=DT)
    out = follow_flow(tracks, movie.frames, **kw)
    assert len(out) > len(tracks) + 100  # the crossings were followed, one fit per frame
    for t, g in out.groupby("frame"):  # the reads the pass made, without releasing
        np.asarray(movie.frames[t, int(g["y"].min()) : int(g["y"].max()) + 4]).sum()
    touched = mapped_kb(path)
    follow_flow(tracks, movie.frames, **kw)
    assert touched > 200 and mapped_kb(path) < touched / 4


def test_config_is_validated_and_input_checked():
    with pytest.raises(ValueError):
        FlowConfig(min_speed_um_s=90.0)
    with pytest.raises(ValueError):
        FlowConfig(velocity_window=1)
    with pytest.raises(ValueError):
        FlowConfig(follow_rounds=0)
    with pytest.raises(ValueError):
        FlowConfig(position_prior=-1.0)
    tracks = pd.DataFrame({"frame": [0], "x": [1.0], "y": [1.0], "particle": [0]})
    with pytest.raises(SptInputError, match="signal"):
        follow_flow(
            tracks,
            np.zeros((2, 8, 8)),
            camera=None,
            psf_sigma_px=1.3,
            pixel_size_um=PX,
            frame_interval_s=DT,
        )
    # disabled: the table comes back as it is
    tracks["signal"] = 100.0
    out = follow_flow(
        tracks,
        np.zeros((2, 8, 8)),
        camera=None,
        psf_sigma_px=1.3,
        pixel_size_um=PX,
        frame_interval_s=DT,
        config=FlowConfig(enabled=False),
    )
    assert out is tracks


def _queue(speed_px: float, behind_frames: int, seed: int) -> pd.DataFrame:
    """Two particles flowing in one lane, the second ``behind_frames`` frames behind the first
    (a queue in the vessel, ``speed_px`` * ``behind_frames`` px apart)."""
    truth = _flow_truth(2, speed_px, seed=seed)
    second = truth["particle"] == 1
    truth.loc[second, "frame"] -= 12 - behind_frames  # _flow_truth starts them 12 frames apart
    lane = truth.loc[~second, "y"].iloc[0] - truth.loc[second, "y"].iloc[0]
    truth.loc[second, "y"] += lane
    truth.loc[second, "_ys"] = truth.loc[second, "_ys"].map(lambda ys: [y + lane for y in ys])
    return truth


def test_track_jumping_to_the_particle_behind_is_cut_and_both_followed():
    """A track that follows one particle of a queue and then jumps back to the particle behind
    it (a linker's exchange, 12 px back along the flow) is cut there: each piece is followed
    along its own particle, and each crossing ends up mostly in one track; not without the
    cut."""
    truth = _queue(6.0, 2, seed=5)
    movie = _movie(truth, int(truth["frame"].max()) + 1, seed=6)
    camera, sigma = resolve_camera_and_psf(movie[:32], _CALIBRATED)
    vis = truth[truth["visible"]].reset_index(drop=True)
    mid = int(vis["frame"].median())
    # one track: the first particle's spots until ``mid``, then the second's (signal in photons)
    swapped = vis[(vis["particle"] == 0) == (vis["frame"] < mid)]
    tracks = swapped[["frame", "x", "y"]].assign(signal=150.0, particle=0)
    kw = dict(camera=camera, psf_sigma_px=sigma, pixel_size_um=PX, frame_interval_s=DT)
    out = follow_flow(tracks, movie, **kw)
    assert (_whole(truth, out) >= 0.8).all()
    off = follow_flow(tracks, movie, config=FlowConfig(split_jump_sd=0.0), **kw)
    assert (_whole(truth, off) < 0.7).all()


def test_ends_are_followed_again_after_joins_and_fills():
    """Eight dim crossings at 8 px/frame, few of them detected: after the first round of
    following, some ends stopped where a seed since dropped held the spots, or where following
    joined another piece; a second round of following (after joining and gap filling) goes on
    from them, so more crossings end up whole, on true spots."""
    truth = _flow_truth(8, 8.0, seed=8)
    movie = _movie(truth, int(truth["frame"].max()) + 1, seed=108)
    vis = truth[truth["visible"]].reset_index(drop=True)
    _, twice = _pipeline(movie, FlowConfig())
    _, once = _pipeline(movie, FlowConfig(follow_rounds=1))
    whole, whole_once = _whole(truth, twice), _whole(truth, once)
    assert (whole >= 0.8).sum() >= 6
    assert (whole >= 0.8).sum() >= (whole_once >= 0.8).sum() + 2
    # the spots added are true ones: more spots found, no more false ones
    found, found_once = len(match_spots(vis, twice)), len(match_spots(vis, once))
    assert found >= found_once + 10
    assert len(twice) - found <= len(once) - found_once
