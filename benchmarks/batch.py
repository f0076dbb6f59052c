"""Batch speed and memory benchmark for ``spt run`` (run by hand; results in docs/benchmarks.md).

Prints, on generated movies:

1. whole ``spt run`` (read to report) on one 256x256 movie: frames/s, 1 and 2 workers;
2. wall time of 8 movies with ``--workers 1`` and ``--workers 2`` (speed-up);
3. the same 8 movies through a Dask ``LocalCluster`` (2 worker processes on loopback);
4. peak resident memory of ``spt run --workers 1`` on a ~2 GB uint16 movie (repeated simulated
   frames), against a 1/8-length movie of the same frames;
5. whether the tables of 1 worker, 2 workers and Dask are identical.

Usage::

    python benchmarks/batch.py [--work DIR] [--big-gb 2.0] [--skip-big]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from spt.simulate import PRESETS, SimulationConfig, simulate, write_simulation

TABLES = ("spots", "tracks", "segments", "stage_velocities")


def spt_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "spt.cli", *args]


def timed_run(args: list[str]) -> tuple[float, float]:
    """Wall time and CPU time (s) of one ``spt`` command and its worker processes."""
    wall, tree = traced_run(args)
    return wall, tree.cpu_s


def traced_run(args: list[str]) -> tuple[float, ProcessTree]:
    """Wall time (s) of one ``spt`` command, and its process tree (CPU per process)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        spt_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    with ProcessTree(proc.pid) as tree:
        _, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"spt {' '.join(args)} failed:\n{err}")
    return wall, tree


def make_movies(folder: Path, n: int, *, shape=(256, 256), n_frames=300, particles=40) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        name = f"movie_{k:02d}"
        if not (folder / f"{name}.ome.tif").exists():
            cfg = SimulationConfig(
                shape=shape, n_frames=n_frames, n_particles=particles, n_cells=4, seed=100 + k
            )
            write_simulation(simulate(cfg), folder, name)
    return folder


def differing_tables(a: Path, b: Path) -> dict[str, int]:
    """For each table kind, the number of movies whose tables differ between runs ``a``, ``b``."""
    counts = dict.fromkeys(TABLES, 0)
    for folder in sorted(p for p in a.iterdir() if p.is_dir()):
        for table in TABLES:
            left = pd.read_csv(folder / f"{table}.csv")
            right = pd.read_csv(b / folder.name / f"{table}.csv")
            counts[table] += not left.equals(right)
    return counts


def provenance_timings(out: Path) -> dict[str, float]:
    """Stage timings (s) from the ``provenance.json`` files under ``out``, summed over movies."""
    total: dict[str, float] = {}
    for prov in out.rglob("provenance.json"):
        for k, v in json.loads(prov.read_text())["timings_s"].items():
            total[k] = total.get(k, 0.0) + v
    return total


# ----------------------------------------------------------------------------- memory


class ProcessTree:
    """Sample a process and its descendants: peak resident memory and CPU time.

    Worker processes started through a forkserver are found too (the forkserver is a child).
    """

    def __init__(self, pid: int):
        self.pid = pid
        self.peak = {"total": 0, "anon": 0, "file": 0}
        #: (seconds since start, resident bytes of the whole tree) every 0.1 s
        self.samples: list[tuple[float, int]] = []
        self._t0 = time.perf_counter()
        self._cpu: dict[int, float] = {}
        self._tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def per_process(self) -> dict[int, float]:
        """User + system CPU seconds of each process seen (last sample), by pid."""
        return dict(self._cpu)

    def cpu_of(self, pid: int) -> float:
        return self._cpu.get(pid, 0.0)

    @property
    def cpu_s(self) -> float:
        """User + system CPU seconds of every process seen (last sample of each)."""
        return sum(self._cpu.values())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _tree(self) -> list[int]:
        pids, frontier = [self.pid], [self.pid]
        while frontier:
            pid = frontier.pop()
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            pids += map(int, children)
            frontier += map(int, children)
        return pids

    def _sample(self, pid: int) -> int:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return 0
        fields = stat.rsplit(")", 1)[1].split()
        self._cpu[pid] = (int(fields[11]) + int(fields[12])) / self._tick
        values = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        kb = {k: int(values.get(k, "0 kB").split()[0]) for k in ("RssAnon", "RssFile")}
        sample = {
            "total": (kb["RssAnon"] + kb["RssFile"]) * 1024,
            "anon": kb["RssAnon"] * 1024,
            "file": kb["RssFile"] * 1024,
        }
        for key, value in sample.items():
            self.peak[key] = max(self.peak[key], value)
        return sample["total"]

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = sum(self._sample(pid) for pid in self._tree())
            self.samples.append((time.perf_counter() - self._t0, rss))
            time.sleep(0.1)


def phase_peaks(samples: list[tuple[float, int]], timings: dict[str, float]) -> dict[str, float]:
    """Peak resident MB in each pipeline phase, placing the provenance timings (which run
    back to back, in this order) so that they end with the process (start-up before them)."""
    order = ["read", "detect", "link", "analyze", "hash_inputs", "write"]
    end = samples[-1][0] if samples else 0.0
    start = end - sum(timings.get(k, 0.0) for k in order)
    peaks = {"start-up": 0.0}
    for key in order:
        peaks[key] = 0.0
    bounds = [("start-up", -1.0, start)]
    t = start
    for key in order:
        bounds.append((key, t, t + timings.get(key, 0.0)))
        t += timings.get(key, 0.0)
    for when, rss in samples:
        for key, a, b in bounds:
            if a <= when < b or (key == "write" and when >= b):
                peaks[key] = max(peaks[key], rss / 2**20)
                break
    return peaks


def write_big_movie(path: Path, source: Path, target_bytes: float) -> int:
    """A uint16 ImageJ TIFF of ``target_bytes`` made by repeating ``source``'s frames.

    Every other repeat is mirrored left-right, so that particles that do not move jump at each
    repeat instead of linking into tracks as long as the whole movie (which real recordings
    of this length would not have).
    """
    frames = tifffile.imread(source)
    n = int(np.ceil(target_bytes / frames[0].nbytes))
    if path.exists() and path.stat().st_size >= target_bytes:
        return n

    def pages():
        for i in range(n):
            frame = frames[i % len(frames)]
            yield frame[:, ::-1] if (i // len(frames)) % 2 else frame

    tmp = path.with_name(path.name + ".tmp")
    tifffile.imwrite(
        tmp,
        pages(),
        shape=(n, *frames.shape[1:]),
        dtype=frames.dtype,
        imagej=True,
        resolution=(5.0, 5.0),
        metadata={"axes": "TYX", "unit": "um", "finterval": 1 / 30},
    )
    os.replace(tmp, path)
    return n


def peak_memory_run(movie: Path, out: Path, *extra: str) -> tuple[float, dict, dict]:
    """Wall time, peak memory and peak memory per phase of ``spt run`` on ``movie``."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        spt_command("run", str(movie), "--out", str(out), "--quiet", *extra),
        stderr=subprocess.PIPE,
        text=True,
    )
    with ProcessTree(proc.pid) as mem:
        _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(err)
    phases = phase_peaks(mem.samples, provenance_timings(out))
    return time.perf_counter() - t0, dict(mem.peak), phases


# ----------------------------------------------------------------------------- main


def load() -> str:
    """The machine's load average: timings on a shared machine are only meaningful with it."""
    return "load average {:.1f} / {:.1f} / {:.1f}".format(*os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/spt-bench-batch", help="scratch folder")
    parser.add_argument(
        "--movie",
        help="movie for the whole-run timing and the big movie (default: simulate one with the "
        "`benchmark` preset, seed 100)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="whole-run repeats (min is kept)")
    parser.add_argument("--big-gb", type=float, default=2.0, help="size of the big movie, GB")
    parser.add_argument("--skip-big", action="store_true", help="skip the big-movie memory test")
    parser.add_argument("--skip-many", action="store_true", help="skip the 8-movie batch tests")
    parser.add_argument("--only-big", action="store_true", help="only the big-movie memory test")
    parser.add_argument(
        "--skip-whole", action="store_true", help="skip the whole-run timing of one movie"
    )
    parser.add_argument("--movies", type=int, default=8)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"spt batch benchmark on {os.cpu_count()} CPUs, {load()}\n")

    # 1. one 256x256 movie, read to report
    if args.movie:
        movie = Path(args.movie)
    else:
        one = work / "one"
        preset = PRESETS["benchmark"]
        make_movies(one, 1, shape=preset["shape"], n_frames=preset["n_frames"])
        movie = one / "movie_00.ome.tif"
    n_frames = tifffile.TiffFile(movie).series[0].shape[0]
    if not (args.only_big or args.skip_whole):
        whole_run(movie, n_frames, work, args.repeats)
    if not (args.only_big or args.skip_many):
        many_movies(work, args.movies)
    if not args.skip_big:
        big_movie(movie, work, args.big_gb)


def start_up_s(repeats: int) -> float:
    """Wall time (s, min of ``repeats``) of starting Python and importing what ``spt run``
    imports before its first movie (``spt.cli``, ``spt.batch``)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import spt.cli, spt.batch"], check=True)
        best = min(best, time.perf_counter() - t0)
    return best


def whole_run(movie: Path, n_frames: int, work: Path, repeats: int) -> None:
    phases = ("read", "detect", "link", "analyze", "hash_inputs", "write")
    start_up = start_up_s(repeats)
    print(
        f"| whole `spt run`, {movie.name} ({n_frames} frames), min of {repeats} | wall s | "
        "frames/s | CPU s (all processes) | " + " | ".join(phases) + " | start-up + rest | "
        "of which start-up (interpreter + imports, measured alone) |"
    )
    print("|---|---|---|---|" + "---|" * len(phases) + "---|---|")
    for workers in (1, 2):
        best = None
        for _ in range(repeats):
            out = work / f"out_one_w{workers}"
            shutil.rmtree(out, ignore_errors=True)
            wall, cpu = timed_run(
                ["run", str(movie), "--out", str(out), "--workers", str(workers), "--quiet"]
            )
            if best is None or wall < best[0]:
                best = (wall, cpu, provenance_timings(out))
        wall, cpu, t = best
        rest = wall - sum(t.get(k, 0.0) for k in phases)
        print(
            f"| --workers {workers} | {wall:.2f} | {n_frames / wall:.0f} | {cpu:.1f} | "
            + " | ".join(f"{t.get(k, 0.0):.2f}" for k in phases)
            + f" | {rest:.2f} | {start_up:.2f} |"
        )
    print(f"({load()})")


def many_movies(work: Path, n_movies: int) -> None:
    """Eight movies: 1 and 2 local workers, a Dask LocalCluster, identical tables."""
    many = make_movies(work / "many", n_movies)
    print(
        f"\n| {n_movies} movies (256x256 x 300 frames) | wall s | speed-up | CPU s | CPU s of "
        "the main process | CPU s of the busiest worker | CPU critical path s (speed-up) |"
    )
    print("|---|---|---|---|---|---|---|")
    walls, paths = {}, {}
    for workers in (1, 2):
        out = work / f"out_many_w{workers}"
        shutil.rmtree(out, ignore_errors=True)
        walls[workers], tree = traced_run(
            ["run", str(many), "--out", str(out), "--workers", str(workers), "--quiet"]
        )
        # On a loaded machine the wall time says little; the CPU seconds of the main process
        # plus those of the busiest worker are what the run would take with its cores to itself.
        main_cpu = tree.cpu_of(tree.pid)
        busiest = max((c for p, c in tree.per_process().items() if p != tree.pid), default=0.0)
        paths[workers] = main_cpu + busiest
        print(
            f"| --workers {workers} | {walls[workers]:.1f} | {walls[1] / walls[workers]:.2f}x | "
            f"{tree.cpu_s:.0f} | {main_cpu:.1f} | {busiest:.1f} | {paths[workers]:.1f} "
            f"({paths[1] / paths[workers]:.2f}x) |"
        )

    print(f"({load()})")
    # 3. the same through a Dask LocalCluster (2 processes, 1 thread each, loopback)
    from distributed import LocalCluster

    t0 = time.perf_counter()
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        started = time.perf_counter() - t0
        out = work / "out_many_dask"
        shutil.rmtree(out, ignore_errors=True)
        address = cluster.scheduler_address
        wall, _ = timed_run(
            ["run", str(many), "--out", str(out), "--scheduler", address, "--quiet"]
        )
    print(
        f"| Dask LocalCluster, 2 processes (start {started:.1f} s not included) | {wall:.1f} "
        f"| {walls[1] / wall:.2f}x | (not seen: Dask's own processes) |"
    )
    print(f"({load()})")
    for other in ("out_many_w2", "out_many_dask"):
        diff = differing_tables(work / "out_many_w1", work / other)
        shown = ", ".join(f"{table} {n}/{n_movies}" for table, n in diff.items())
        print(f"Movies whose tables differ, --workers 1 vs {other}: {shown}")

    print(f"({load()})")


def big_movie(movie: Path, work: Path, big_gb: float) -> None:
    """Peak memory on a ~``big_gb`` GB movie and on 1/8 of it, in total and per phase."""
    big = work / "big.tif"
    small = work / "big_eighth.tif"
    write_big_movie(big, movie, big_gb * 1e9)
    write_big_movie(small, movie, big_gb * 1e9 / 8)
    print("\n| movie | frames | file GB | wall s | peak RSS MB | anon MB | file-backed MB |")
    print("|---|---|---|---|---|---|---|")
    per_phase = {}
    for path in (small, big):
        # One process (--workers 1): summed resident sizes of forked helpers would count the
        # pages they share with the main process several times.
        wall, peak, per_phase[path.name] = peak_memory_run(
            path, work / f"out_{path.stem}", "--workers", "1"
        )
        frames = tifffile.TiffFile(path).series[0].shape[0]
        print(
            f"| {path.name} | {frames} | {path.stat().st_size / 1e9:.2f} | {wall:.0f} "
            f"| {peak['total'] / 2**20:.0f} | {peak['anon'] / 2**20:.0f} "
            f"| {peak['file'] / 2**20:.0f} |"
        )
    names = list(next(iter(per_phase.values())))
    print("\n| peak RSS MB by phase | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for movie_name, peaks in per_phase.items():
        print(f"| {movie_name} | " + " | ".join(f"{peaks[k]:.0f}" for k in names) + " |")
    print(f"({load()})")


if __name__ == "__main__":
    main()
