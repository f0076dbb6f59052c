"""Delivery-stage classification against simulator ground truth, decoding, masks and classifier."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spt.errors import SptInputError
from spt.masks import label_image, masks_from_channels, threshold_mask
from spt.schema import MASK_LABELS, STAGES
from spt.segment import segment_tracks
from spt.simulate import SimulationConfig, simulate_tracks
from spt.stages import (
    StageClassifier,
    StageConfig,
    classify_stages,
    decode_stages,
    estimate_localization_error_um,
    stage_features,
)

PX, DT, NOISE_PX = 0.2, 1 / 30, 0.25


def _labelled_tracks(seed: int, n_frames: int = 200):
    """Simulated tracks with localisation noise, segmented, with the true stage per point."""
    truth, masks = simulate_tracks(SimulationConfig(n_frames=n_frames, n_particles=20, seed=seed))
    t = truth[truth["visible"]].rename(columns={"stage": "true_stage"})
    rng = np.random.default_rng(seed)
    t[["x", "y"]] += rng.normal(0, NOISE_PX, (len(t), 2))
    tracks, segments = segment_tracks(
        t[["frame", "x", "y", "particle", "true_stage"]], pixel_size_um=PX, frame_interval_s=DT
    )
    return tracks, segments, masks


@pytest.fixture(scope="module")
def movie():
    return _labelled_tracks(seed=3)


def _accuracy(tracks: pd.DataFrame) -> float:
    return float((tracks["stage"] == tracks["true_stage"]).mean())


SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


@pytest.fixture(scope="module")
def sample_movie():
    """The bundled simulated movie, detected, linked and segmented by spt, with the true stage
    of each detection (the nearest visible true particle within 1.5 px in its frame)."""
    import tifffile
    from scipy.spatial import cKDTree

    from spt.config import PipelineConfig
    from spt.pipeline import array_chunks, track_frames

    frames = tifffile.imread(SAMPLE / "sample.ome.tif")
    masks = tifffile.imread(SAMPLE / "sample_masks.tif")
    truth = pd.read_csv(SAMPLE / "sample_truth.csv")
    truth = truth[truth["visible"]]
    config = PipelineConfig()
    _, linked = track_frames(
        array_chunks(frames), config, n_frames=len(frames), pixel_size_um=PX, frame_interval_s=DT
    )
    true_stage = np.full(len(linked), None, dtype=object)
    for f, rows in linked.groupby("frame").indices.items():
        here = truth[truth["frame"] == f]
        if here.empty:
            continue
        dist, nearest = cKDTree(here[["x", "y"]].to_numpy()).query(
            linked.iloc[rows][["x", "y"]].to_numpy()
        )
        true_stage[rows[dist < 1.5]] = here["stage"].to_numpy()[nearest[dist < 1.5]]
    linked["true_stage"] = true_stage
    tracks, segments = segment_tracks(linked, config.segment, pixel_size_um=PX, frame_interval_s=DT)
    return tracks, segments, masks


def test_recovers_the_stages_of_a_simulated_movie(sample_movie):
    """Detection, linking and segmentation by spt, then the default rules: with masks >= 95% of
    the detections get their true stage and every stage is mostly found; from motion alone
    >= 85% (issue 5 asks 0.95 and 0.80 on the benchmark movies)."""
    tracks, segments, masks = sample_movie
    out, segs = classify_stages(
        tracks, segments, masks=masks, pixel_size_um=PX, frame_interval_s=DT
    )
    known = out.dropna(subset=["true_stage"])
    assert len(known) > 0.95 * len(out)  # almost every detection is a true particle
    assert _accuracy(known) >= 0.95
    recall = known.groupby("true_stage").apply(lambda g: (g["stage"] == g.name).mean())
    assert len(recall) == len(STAGES) and recall.min() >= 0.8, recall
    assert segs["stage"].notna().all()
    motion, _ = classify_stages(tracks, segments, pixel_size_um=PX, frame_interval_s=DT)
    known = motion.dropna(subset=["true_stage"])
    assert _accuracy(known) >= 0.85
    flow = known[known["true_stage"] == "circulation"]
    assert (flow["stage"] == "circulation").mean() > 0.95


def test_recovers_known_stages_with_masks(movie):
    tracks, segments, masks = movie
    out, segs = classify_stages(
        tracks, segments, masks=masks, pixel_size_um=PX, frame_interval_s=DT
    )
    assert _accuracy(out) >= 0.92
    # every stage that is present is found for most of its points
    recall = out.groupby("true_stage").apply(lambda g: (g["stage"] == g.name).mean())
    assert recall.min() >= 0.6, recall
    assert set(segs["stage"]) <= set(STAGES)
    assert len(segs) == len(segments)


def test_recovers_known_stages_from_motion_alone(movie):
    tracks, segments, _ = movie
    out, _ = classify_stages(tracks, segments, pixel_size_um=PX, frame_interval_s=DT)
    assert _accuracy(out) >= 0.75
    flow = out[out["true_stage"] == "circulation"]
    assert (flow["stage"] == "circulation").mean() > 0.95


def test_stages_only_advance_along_each_track(movie):
    tracks, segments, masks = movie
    out, _ = classify_stages(tracks, segments, masks=masks, pixel_size_um=PX, frame_interval_s=DT)
    index = out["stage"].map({s: i for i, s in enumerate(STAGES)})
    assert (index.groupby(out["particle"]).diff().dropna() >= 0).all()


def test_decoding_ignores_a_single_noisy_point_but_follows_a_real_change():
    costs = np.full((60, 6), 5.0)
    costs[:, 2] = 0.0  # extracellular everywhere...
    costs[30, 4] = -6.0  # ...except one point that looks internalised
    costs[45:, 3] = -1.0  # and a real, lasting change to membrane binding at point 45
    stages = decode_stages(np.zeros(60, int), costs, StageConfig(switch_cost=8.0))
    assert (stages[:45] == 2).all()
    assert (stages[45:] == 3).all()


def test_decoding_handles_many_tracks_at_once():
    rng = np.random.default_rng(0)
    particle = np.repeat(np.arange(5), [1, 7, 3, 12, 2])
    costs = rng.uniform(0, 3, (len(particle), 6))
    joint = decode_stages(particle, costs)
    for p in range(5):
        sel = particle == p
        assert (decode_stages(particle[sel], costs[sel]) == joint[sel]).all()
    # strictly left-to-right by default; a finite backward cost lets strong evidence go back
    back = np.zeros((20, 6)) + 10.0
    back[:10, 5] = 0.0
    back[10:, 0] = 0.0
    assert (np.diff(decode_stages(np.zeros(20, int), back)) >= 0).all()
    loose = decode_stages(np.zeros(20, int), back, StageConfig(backward_cost=20.0))
    assert loose[0] == 5 and loose[-1] == 0


def test_distances_are_in_micrometres(movie):
    """The same tissue imaged with half the pixel size gives the same stages."""
    tracks, segments, masks = movie
    coarse, _ = classify_stages(
        tracks, segments, masks=masks, pixel_size_um=PX, frame_interval_s=DT
    )
    fine_masks = np.repeat(np.repeat(masks, 2, axis=0), 2, axis=1)
    fine_tracks = tracks.assign(x=tracks["x"] * 2 + 0.5, y=tracks["y"] * 2 + 0.5)
    fine, _ = classify_stages(
        fine_tracks, segments, masks=fine_masks, pixel_size_um=PX / 2, frame_interval_s=DT
    )
    assert (fine["stage"].to_numpy() == coarse["stage"].to_numpy()).mean() > 0.98


def test_per_frame_masks_follow_the_tissue():
    """A particle at rest: outside cells, then a cell and nucleus form around it at frame 50."""
    rng = np.random.default_rng(1)
    n = 100
    tracks = pd.DataFrame(
        {
            "frame": np.arange(n),
            "x": 20 + rng.normal(0, 0.2, n),
            "y": 20 + rng.normal(0, 0.2, n),
            "particle": 0,
        }
    )
    tracks, segments = segment_tracks(tracks, pixel_size_um=PX, frame_interval_s=DT)
    masks = np.zeros((n, 40, 40), np.uint8)
    yy, xx = np.mgrid[:40, :40]
    masks[50:][:, (yy - 20) ** 2 + (xx - 20) ** 2 < 15**2] = MASK_LABELS["cell"]
    masks[50:][:, (yy - 20) ** 2 + (xx - 23) ** 2 < 2**2] = MASK_LABELS["nucleus"]
    out, _ = classify_stages(tracks, segments, masks=masks, pixel_size_um=PX, frame_interval_s=DT)
    assert (out["stage"][:45] == "extracellular").all()
    assert (out["stage"][55:] == "perinuclear").all()
    static, _ = classify_stages(
        tracks, segments, masks=masks[-1], pixel_size_um=PX, frame_interval_s=DT
    )
    assert (static["stage"] == "perinuclear").all()


def test_localisation_error_is_measured_from_the_tracks():
    rng = np.random.default_rng(2)
    frames = np.tile(np.arange(200), 10)
    particle = np.repeat(np.arange(10), 200)
    walk = np.cumsum(rng.normal(0, 0.05, (2000, 2)), axis=0)  # slow diffusion, px
    xy = walk + rng.normal(0, 0.3, (2000, 2)) + particle[:, None] * 30
    tracks = pd.DataFrame({"frame": frames, "particle": particle, "x": xy[:, 0], "y": xy[:, 1]})
    sigma = estimate_localization_error_um(tracks, pixel_size_um=PX)
    assert sigma == pytest.approx(0.3 * PX, rel=0.1)


def test_trained_classifier_round_trips_and_generalises(movie, sample_movie, tmp_path):
    from threadpoolctl import threadpool_limits

    # one OpenMP thread: the CI machine is small and shared (this test is about results, not speed)
    with threadpool_limits(limits=1):
        _check_classifier(movie, sample_movie, tmp_path)


def _check_classifier(movie, sample_movie, tmp_path):
    """Trained on the bundled movie (spt's detections and tracks), tested on another one."""
    train_tracks, train_segments, _ = sample_movie
    known = train_tracks["true_stage"].notna().to_numpy()
    features = stage_features(train_tracks, train_segments, pixel_size_um=PX, frame_interval_s=DT)
    classifier = StageClassifier(max_iter=30).fit(
        features[known], train_tracks["true_stage"][known]
    )
    tracks, segments, _ = movie
    out, _ = classify_stages(
        tracks, segments, pixel_size_um=PX, frame_interval_s=DT, classifier=classifier
    )
    assert _accuracy(out) >= 0.7  # a held-out movie (other seed)
    path = classifier.save(tmp_path / "stages.joblib")
    config = StageConfig(classifier_path=str(path))
    again, _ = classify_stages(tracks, segments, config, pixel_size_um=PX, frame_interval_s=DT)
    assert (again["stage"] == out["stage"]).all()
    with pytest.raises(SptInputError, match="not a stage classifier"):
        (tmp_path / "bad.joblib").write_bytes(b"not a model")
        StageClassifier.load(tmp_path / "bad.joblib")


def test_bad_input_is_refused_with_a_clear_message(movie):
    tracks, segments, masks = movie
    with pytest.raises(SptInputError, match="state"):
        classify_stages(tracks.drop(columns="state"), segments, pixel_size_um=PX)
    with pytest.raises(SptInputError, match="integers"):
        classify_stages(tracks, segments, masks=masks.astype(float), pixel_size_um=PX)
    with pytest.raises(SptInputError, match="planes"):
        classify_stages(tracks, segments, masks=np.stack([masks] * 3), pixel_size_um=PX)
    with pytest.raises(ValueError, match="switch_cost"):
        StageConfig(switch_cost=-1)


def test_empty_tracks_give_empty_tables(movie):
    tracks, segments, _ = movie
    out, segs = classify_stages(tracks.iloc[:0], segments.iloc[:0], pixel_size_um=PX)
    assert out.empty and "stage" in out and "stage" in segs


def test_masks_from_a_second_channel_match_the_tissue(movie):
    _, _, masks = movie
    rng = np.random.default_rng(5)
    # a vessel dye image: bright lumen, blurred by the optics, with shot noise
    from scipy import ndimage

    dye = ndimage.gaussian_filter((masks == MASK_LABELS["vessel"]) * 200.0, 1.5) + 20
    dye = rng.poisson(dye).astype(float)
    labels = masks_from_channels(vessel=np.stack([dye, dye]))
    truth = masks == MASK_LABELS["vessel"]
    found = labels == MASK_LABELS["vessel"]
    assert (found & truth).sum() / (found | truth).sum() > 0.9  # intersection over union
    assert threshold_mask(dye, threshold=1e9).sum() == 0
    combined = label_image(vessel=truth, cell=masks >= 2, nucleus=masks == 3)
    assert (combined == masks).all()
    with pytest.raises(SptInputError, match="uniform"):
        threshold_mask(np.ones((8, 8)))


def test_classifying_in_chunks_gives_the_same_stages(movie, monkeypatch):
    """classify_stages works on chunks of whole tracks (bounded memory): the chunk size must
    not change a single stage."""
    import spt.stages

    tracks, segments, masks = movie
    whole, whole_segs = classify_stages(
        tracks, segments, masks=masks, pixel_size_um=PX, frame_interval_s=DT
    )
    monkeypatch.setattr(spt.stages, "_CHUNK_POINTS", 37)
    chunked, chunked_segs = classify_stages(
        tracks, segments, masks=masks, pixel_size_um=PX, frame_interval_s=DT
    )
    assert (chunked["stage"] == whole["stage"]).all()
    assert (chunked_segs["stage"] == whole_segs["stage"]).all()


def _cell_with_nucleus(size: int = 100, cell_px: int = 45, nucleus_px: int = 10) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    r2 = (yy - size // 2) ** 2 + (xx - size // 2) ** 2
    masks = np.zeros((size, size), np.uint8)
    masks[r2 < cell_px**2] = MASK_LABELS["cell"]
    masks[r2 < nucleus_px**2] = MASK_LABELS["nucleus"]
    return masks


def test_perinuclear_starts_on_arrival_and_keeps_its_wanderings():
    """A particle stops inside a cell, runs to the nucleus, arrives within 1 um of it and then
    diffuses in a 0.4 um region around its point of arrival, mostly farther than 1 um: it is
    internalising until it arrives (within a few frames) and perinuclear from then on."""
    rng = np.random.default_rng(7)
    masks = _cell_with_nucleus()
    centre, edge_px = 50.0, 10 - 0.5  # nucleus edge at 9.5 px from the centre pixel
    dist_um = np.r_[np.full(60, 3.5), np.linspace(3.5, 0.95, 80), np.zeros(150)]
    wander = 1.0 + 0.25 * np.sin(np.linspace(0, 12, 150)) + 0.1  # 0.85-1.35 um, mostly > 1
    dist_um[140:] = wander
    x = centre + edge_px + dist_um / PX + rng.normal(0, 0.15, dist_um.size)
    y = centre + rng.normal(0, 0.15, dist_um.size)
    tracks = pd.DataFrame({"frame": np.arange(dist_um.size), "x": x, "y": y, "particle": 0})
    tracks, segments = segment_tracks(tracks, pixel_size_um=PX, frame_interval_s=DT)
    out, _ = classify_stages(tracks, segments, masks=masks, pixel_size_um=PX, frame_interval_s=DT)
    stage = out["stage"].to_numpy()
    arrival = int(np.argmax(dist_um < 1.0))
    assert (stage[: arrival - 3] == "internalization").all()
    assert (stage[arrival + 3 :] == "perinuclear").all()
    assert (dist_um[arrival:] > 1.0).mean() > 0.5  # most of the perinuclear stay is beyond 1 um


def test_a_lone_detection_takes_its_stage_from_where_it_is():
    """A one-point track has no motion: its place decides (vessel lumen -> circulation)."""
    masks = np.zeros((40, 40), np.uint8)
    masks[5:20] = MASK_LABELS["vessel"]
    tracks = pd.DataFrame({"frame": [3], "x": [20.0], "y": [12.0], "particle": [0]})
    tracks, segments = segment_tracks(tracks, pixel_size_um=PX, frame_interval_s=DT)
    out, segs = classify_stages(
        tracks, segments, masks=masks, pixel_size_um=PX, frame_interval_s=DT
    )
    assert out["stage"].tolist() == ["circulation"]
    assert segs["stage"].tolist() == ["circulation"]


@pytest.mark.parametrize("noise_um", [0.03, 0.08])
def test_local_diffusion_coefficient_is_free_of_localisation_noise(noise_um):
    """The covariance-based D (Vestergaard et al. 2014) needs no noise estimate: Brownian
    motion gives its D, a particle at rest ~0, whatever the localisation error."""
    rng = np.random.default_rng(3)
    n, D = 600, 0.25
    walk = np.cumsum(rng.normal(0, np.sqrt(2 * D * DT), (n, 2)), axis=0)
    rows = []
    for particle, path in enumerate((walk, np.zeros((n, 2)))):
        xy = (path + rng.normal(0, noise_um, (n, 2))) / PX + 50
        rows.append(pd.DataFrame({"frame": np.arange(n), "x": xy[:, 0], "y": xy[:, 1]}))
        rows[-1]["particle"] = particle
    tracks = pd.concat(rows, ignore_index=True).assign(segment=0, state="free")
    segments = tracks[["particle", "segment"]].drop_duplicates()
    features = stage_features(tracks, segments, pixel_size_um=PX, frame_interval_s=DT)
    d25 = features.groupby(tracks["particle"])["D_25_um2_s"].median()
    assert d25[0] == pytest.approx(D, rel=0.2)
    assert abs(d25[1]) < 0.02
