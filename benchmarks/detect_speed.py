"""Detection speed: CPU and wall seconds of ``locate_movie`` on one movie, and what its threads do.

Run by hand (not in CI), from the repository root; to compare two checkouts on a shared machine,
run both in the same minutes and compare CPU seconds::

    python benchmarks/detect_speed.py /work/notes/data/m1.ome.tif
    python benchmarks/detect_speed.py --simulate 512 --particles 160 --seed 1

Prints the single-thread CPU seconds (``time.process_time``, min of ``--repeats``), the wall
seconds with the default threads, and, from ``/proc/<tid>/schedstat`` (Linux), how long each
detection thread ran, waited for a free core (other jobs' load) and was blocked (GIL, locks).
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np

import spt.detect as detect
from spt.detect import DetectConfig, locate_movie


def _schedstat() -> tuple[float, float]:
    """(seconds on a CPU, seconds waiting for one) of the calling thread."""
    path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
    with open(path) as fh:
        run, wait, _ = fh.read().split()
    return int(run) / 1e9, int(wait) / 1e9


def thread_accounting(frames: np.ndarray, config: DetectConfig) -> tuple[float, dict]:
    """Wall seconds of one multi-threaded run and, per thread, (seconds inside chunks, on a CPU,
    waiting for a core)."""
    stats: dict[int, list[float]] = {}
    original = detect._locate_chunk

    def timed(*args, **kwargs):
        run0, wait0 = _schedstat()
        start = time.perf_counter()
        out = original(*args, **kwargs)
        run1, wait1 = _schedstat()
        row = stats.setdefault(threading.get_native_id(), [0.0, 0.0, 0.0])
        row[0] += time.perf_counter() - start
        row[1] += run1 - run0
        row[2] += wait1 - wait0
        return out

    detect._locate_chunk = timed
    try:
        start = time.perf_counter()
        locate_movie(frames, config)
        wall = time.perf_counter() - start
    finally:
        detect._locate_chunk = original
    return wall, stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("movie", nargs="?", help="TIFF movie (camera and PSF are estimated)")
    parser.add_argument(
        "--simulate", type=int, help="instead: a simulated square movie of this side"
    )
    parser.add_argument("--particles", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    kwargs: dict = {}
    if args.simulate:
        from spt.simulate import SimulationConfig, simulate

        # the calibrated movies of benchmarks/detect_link.py (8 cells at 512 x 512)
        sim = simulate(
            SimulationConfig(
                shape=(args.simulate, args.simulate),
                n_frames=args.frames,
                n_particles=args.particles,
                photons=400.0,
                background=20.0,
                seed=args.seed,
                n_cells=4 * max(1, args.simulate // 256),
                stage_weights=(0.1, 0.1, 0.2, 0.2, 0.2, 0.2),
            )
        )
        frames, cam = sim.movie, sim.camera
        kwargs = dict(
            em_gain=cam.em_gain,
            e_per_adu=cam.e_per_adu,
            offset_adu=cam.offset_adu,
            read_noise_e=cam.read_noise_e,
        )
    elif args.movie:
        import tifffile

        frames = tifffile.imread(args.movie)[: args.frames]
    else:
        parser.error("give a movie or --simulate SIDE")
    one, default = DetectConfig(n_threads=1, **kwargs), DetectConfig(**kwargs)
    locate_movie(frames[:40], one)  # compile / load the numba kernels
    cpu, wall = [], []
    for config, out in ((one, cpu), (default, wall)):
        for _ in range(args.repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            spots = locate_movie(frames, config)
            out.append(time.process_time() - c0 if config is one else time.perf_counter() - w0)
    n = len(frames)
    print(f"{n} frames of {frames.shape[1]} x {frames.shape[2]} px, {len(spots)} spots")
    print(f"load average {os.getloadavg()[0]:.1f}")
    best = min(cpu)
    print(f"detect CPU s, 1 thread (min of {args.repeats}): {best:.3f} ({n / best:.0f} frames/s)")
    print(f"detect wall s, default threads: {min(wall):.3f} ({n / min(wall):.0f} frames/s)")
    if os.path.exists("/proc/self/schedstat"):
        wall_1, stats = thread_accounting(frames, default)
        print(f"thread accounting of one more run ({wall_1:.3f} s wall):")
        for tid, (inside, run, wait) in stats.items():
            print(
                f"  thread {tid}: {inside:.3f} s in chunks = {run:.3f} on a CPU + {wait:.3f} "
                f"waiting for a core + {inside - run - wait:.3f} blocked (GIL, locks)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
