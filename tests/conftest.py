"""Shared fixtures: the bundled sample movie and small simulated movies written as real TIFFs."""

from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "sample.ome.tif"
SAMPLE_MASKS = ROOT / "sample_data" / "sample_masks.tif"
SAMPLE_TRUTH = ROOT / "sample_data" / "sample_truth.csv"


@pytest.fixture(scope="session")
def sample_truth() -> pd.DataFrame:
    return pd.read_csv(SAMPLE_TRUTH)


@pytest.fixture(scope="session")
def small_movie(tmp_path_factory):
    """A 60-frame simulated movie on disk with masks and truth: dict of paths + Simulation."""
    from spt.simulate import SimulationConfig, simulate, write_simulation

    sim = simulate(SimulationConfig(n_frames=60, n_particles=10, seed=21))
    paths = write_simulation(sim, tmp_path_factory.mktemp("movie"), "small")
    return {"sim": sim, **paths}
