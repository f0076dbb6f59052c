"""Every pipeline file shipped in pipelines/ runs end to end on a small simulated movie."""

import pandas as pd
import pytest
from conftest import ROOT

from spt.cli import main
from spt.config import PipelineConfig
from spt.metrics import match_spots
from spt.schema import STAGES, STATES

#: test_config.py checks that the in-vivo and in-vitro examples are among them.
PIPELINES = sorted((ROOT / "pipelines").glob("*.toml"))


@pytest.mark.parametrize("pipeline", PIPELINES, ids=[p.name for p in PIPELINES])
def test_shipped_pipeline_runs_on_a_simulated_movie(pipeline, small_movie, tmp_path):
    config = PipelineConfig.from_toml(pipeline)
    out = tmp_path / "out"
    movie = [str(small_movie["movie"]), "--masks", str(small_movie["masks"])]
    options = ["--config", str(pipeline), "--workers", "1", "--quiet"]
    assert main(["run", *movie, "--out", str(out), *options]) == 0
    folder = out / "small"
    # the run used the file's settings, and wrote its tables in the file's format
    assert PipelineConfig.from_toml(folder / "config.toml") == config
    ext = config.output.table_format
    read = pd.read_parquet if ext == "parquet" else pd.read_csv
    tracks = read(folder / f"tracks.{ext}")
    segments = read(folder / f"segments.{ext}")
    assert set(tracks["stage"]) <= set(STAGES) and set(tracks["state"]) <= set(STATES)
    assert len(segments) and (read(folder / f"stage_velocities.{ext}")["n_tracks"] > 0).all()
    # and found the simulated particles: most visible true positions lie on a track
    truth = small_movie["sim"].truth
    truth = truth[truth["visible"]]
    matched = match_spots(truth, tracks, max_dist=1.0)
    assert len(matched) >= 0.8 * len(truth), (len(matched), len(truth))
