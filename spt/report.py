"""Per-stage outputs of a movie or a batch: tables (CSV + Parquet), figures and an HTML report.

The report is one self-contained HTML file (figures embedded as base64 PNG) that a biologist can
open in any browser; it explains what each number means and flags noise-dominated speeds.
"""

from __future__ import annotations

import base64
import contextlib
import html
import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

import spt
from spt import plot
from spt.io import write_table
from spt.plot import STAGE_COLORS, save_figure
from spt.schema import STAGES
from spt.stages import estimate_localization_error_um
from spt.summary import MovieStages, StageSummary, column_descriptions, stage_summary

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from spt.pipeline import MovieResult

__all__ = ["start_movie_report", "write_batch_report", "write_movie_report"]

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222;
       line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
tr.noise td { background: #fff3cd; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.4em;
          vertical-align: middle; border-radius: 2px; }
.note { background: #eef4fb; border-left: 4px solid #4a90d9; padding: 0.6em 1em; }
.warn { background: #fff3cd; border-left: 4px solid #e0a800; padding: 0.6em 1em; }
img { max-width: 100%; } figure { margin: 1em 0; } figcaption { font-size: 0.85em; color: #555; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
"""

_HOW_TO_READ = """
<div class="note">
<p><b>How to read the stage table.</b> Each row is a delivery stage (Tada et al., Cancer Res.
2007), in delivery order. <b>Frame-to-frame speed</b> is the displacement between two consecutive
frames divided by the frame interval, over every step whose two ends lie in the stage. It always
contains localisation noise: a particle that does not move at all still shows a frame-to-frame
speed of about the <b>noise floor</b> &radic;2&nbsp;&times;&nbsp;localisation error / frame
interval. <b>Net run speed</b> is the net displacement of a directed segment (a run) divided by its
duration: what a particle really travels while it runs, nearly free of noise.</p>
<p>Rows marked <b>noise-dominated</b> (yellow) are stages where localisation noise explains more
than half of the mean squared frame-to-frame speed; do not read their frame-to-frame speed as
motion: use the run speed or D instead. Brackets are bootstrap 95% confidence intervals
(tracks resampled, 1000 times). Dwell times include stays cut short by the start or end of a
track, so they are lower bounds; the complete stays are counted separately.</p>
</div>
"""


def _parquet_available() -> bool:
    return importlib.util.find_spec("pyarrow") is not None


def _write_tables(tables: dict[str, pd.DataFrame], folder: Path) -> list[Path]:
    """Write each table as CSV, and as Parquet when pyarrow is installed."""
    written = []
    for name, table in tables.items():
        written.append(write_table(table, folder / f"{name}.csv"))
        if _parquet_available():
            written.append(write_table(table, folder / f"{name}.parquet"))
    return written


def _embed(fig: Figure, stem: Path) -> str:
    """Save ``fig`` as PNG + SVG beside the report and return the PNG as an embedded <img>."""
    png, _svg = save_figure(fig, stem)
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(stem.name)}" src="data:image/png;base64,{data}">'


def _draw(figure: str, args: tuple, kwargs: dict, stem: Path) -> str:
    """Draw ``spt.plot.<figure>(*args, **kwargs)``, save it and return its <img> (a task)."""
    return _embed(getattr(plot, figure)(*args, **kwargs), stem)


def _start_drawing(figures: dict[str, tuple], folder: Path, executor: Any) -> dict[str, Any]:
    """Draw ``{name: (figure function, args, kwargs)}`` into ``folder`` here (each name's <img>),
    or send them to ``executor`` (each name's future)."""
    if executor is None:
        return {n: _draw(*job, folder / n) for n, job in figures.items()}
    return {n: executor.submit(_draw, *job, folder / n) for n, job in figures.items()}


def _fmt(value: float, digits: int = 3) -> str:
    if value is None or not np.isfinite(value):
        return "&ndash;"
    return f"{value:.{digits}g}"


def _with_ci(value: float, lo: float, hi: float) -> str:
    if not np.isfinite(value):
        return "&ndash;"
    if np.isfinite(lo) and np.isfinite(hi):
        return f"{_fmt(value)} <small>[{_fmt(lo)}, {_fmt(hi)}]</small>"
    return _fmt(value)


def _stage_table_html(velocities: pd.DataFrame) -> str:
    head = (
        "<tr><th>stage</th><th>tracks</th><th>points</th><th>steps</th>"
        "<th>median frame-to-frame speed (um/s) [95% CI]</th>"
        "<th>mean frame-to-frame speed (um/s) [95% CI]</th>"
        "<th>median net run speed (um/s) [95% CI] (runs)</th><th>noise floor (um/s)</th>"
        "<th>D (um&sup2;/s)</th><th>alpha</th><th>median dwell (s) (complete)</th>"
        "<th>speed reading</th></tr>"
    )
    rows = []
    for _, r in velocities.iterrows():
        noisy = bool(r["noise_dominated"])
        swatch = f'<span class="swatch" style="background:{STAGE_COLORS[r["stage"]]}"></span>'
        reading = "noise-dominated" if noisy else ("motion" if r["n_steps"] else "&ndash;")
        rows.append(
            f'<tr class="{"noise" if noisy else ""}"><td>{swatch}{r["stage"]}</td>'
            f"<td>{r['n_tracks']}</td><td>{r['n_points']}</td><td>{r['n_steps']}</td>"
            f"<td>{_with_ci(r['median_speed_um_s'], r['median_speed_ci_low_um_s'], r['median_speed_ci_high_um_s'])}</td>"  # noqa: E501
            f"<td>{_with_ci(r['mean_speed_um_s'], r['mean_speed_ci_low_um_s'], r['mean_speed_ci_high_um_s'])}</td>"  # noqa: E501
            f"<td>{_with_ci(r['median_run_speed_um_s'], r['run_speed_ci_low_um_s'], r['run_speed_ci_high_um_s'])}"  # noqa: E501
            f" ({r['n_runs']})</td>"
            f"<td>{_fmt(r['noise_floor_um_s'])}</td><td>{_fmt(r['D_um2_s'])}</td>"
            f"<td>{_fmt(r['alpha'], 2)}</td>"
            f"<td>{_fmt(r['median_dwell_s'])} ({_fmt(r['median_complete_dwell_s'])}, "
            f"n={r['n_complete_dwells']})</td><td>{reading}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _transition_table_html(transitions: pd.DataFrame) -> str:
    matrix = transitions.pivot(index="from_stage", columns="to_stage", values="n_transitions")
    matrix = matrix.reindex(index=list(STAGES), columns=list(STAGES)).fillna(0).astype(int)
    matrix.index.name, matrix.columns.name = "from \\ to", None
    return matrix.to_html(border=0)


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary>{body}</details>"


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}"
        f"<hr><p><small>spt {spt.__version__}</small></p></body></html>\n"
    )


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _tables_section(summary: StageSummary, velocities: pd.DataFrame) -> str:
    flagged = velocities.loc[velocities["noise_dominated"], "stage"].tolist()
    warn = (
        f'<p class="warn">Frame-to-frame speeds of <b>{", ".join(flagged)}</b> are dominated by '
        "localisation noise.</p>"
        if flagged
        else ""
    )
    return (
        "<h2>Per-stage velocities</h2>"
        + _HOW_TO_READ
        + warn
        + _stage_table_html(velocities)
        + _details(
            "All columns, units and meanings",
            column_descriptions().to_html(index=False, border=0)
            + velocities.to_html(index=False, border=0, float_format=lambda v: f"{v:.4g}"),
        )
        + "<h2>Stage transitions</h2><p>Moves between consecutive stays within a track. Delivery "
        "runs from top-left to bottom-right: counts above the diagonal follow the delivery "
        "order.</p>" + _transition_table_html(summary.transitions)
    )


# ----------------------------------------------------------------------------- per movie


def write_movie_report(
    result: MovieResult, folder: str | os.PathLike, *, config_toml: str = "", executor: Any = None
) -> list[Path]:
    """Write a movie's per-stage tables, figures and ``report.html`` into ``folder``.

    Files: ``stage_velocities.parquet``, ``stage_dwells.{csv,parquet}``,
    ``stage_transitions.{csv,parquet}``, ``stage_velocities_columns.csv`` (what each column
    means), the figures ``tracks_by_stage``, ``speed_by_stage``, ``msd_by_state``,
    ``stage_transitions`` (PNG and SVG) and the self-contained ``report.html``. Parquet files
    need pyarrow (the ``parquet`` extra) and are skipped without it.

    Parameters
    ----------
    result : spt.pipeline.MovieResult
        The analysed movie.
    folder : path-like
        Existing output folder of the movie.
    config_toml : str
        The run's configuration, shown in the report.
    executor : concurrent.futures.Executor or dask.distributed.Client, optional
        Draw the four figures on it, in parallel (its workers must see ``folder``).

    Returns
    -------
    list of Path
        The files written.
    """
    return start_movie_report(result, folder, config_toml=config_toml, executor=executor)()


def start_movie_report(
    result: MovieResult, folder: str | os.PathLike, *, config_toml: str = "", executor: Any = None
) -> _PendingReport:
    """Start :func:`write_movie_report`: write its tables and send its figures to ``executor``.

    Returns a callable that waits for the figures, writes ``report.html`` and returns the files
    written, so that other work (e.g. the movie's own tables) can be done in between; its
    ``cancel()`` stops or waits for the figures instead (before ``folder`` is deleted).
    """
    folder = Path(folder)
    a = result.analysis
    px, dt = result.pixel_size_um, result.frame_interval_s
    sigma = (
        estimate_localization_error_um(a.tracks, pixel_size_um=px)
        if len(a.tracks)
        else float("nan")
    )
    plane = result.masks[0] if result.masks is not None and result.masks.ndim == 3 else result.masks
    state_keys = [c for c in ("particle", "segment", "frame", "x", "y", "state") if c in a.tracks]
    # (figure function, arguments, keywords): only the columns each figure draws are sent; the
    # figures of the tracks go first, the others once the stage tables are made
    figures = {
        "tracks_by_stage": (
            "figure_tracks_by_stage",
            (result.projection, a.tracks[["particle", "frame", "x", "y", "stage"]]),
            {
                "pixel_size_um": px,
                "masks": plane,
                "title": f"{result.name}: tracks by delivery stage",
            },
        ),
        "msd_by_state": (
            "figure_msd_by_state",
            (a.tracks[state_keys],),
            {"pixel_size_um": px, "frame_interval_s": dt, "localization_error_um": sigma},
        ),
    }
    drawn = _start_drawing(figures, folder, executor)
    movie = MovieStages(a.tracks, a.segments, px, dt, name=result.name, localization_error_um=sigma)
    # The analysis already holds the stage velocity table: reuse it (no second bootstrap).
    known = a.stage_velocities if len(a.stage_velocities) else None
    summary = stage_summary([movie], velocities=known)
    velocities = summary.velocities
    drawn |= _start_drawing(
        {
            "speed_by_stage": (
                "figure_speed_distributions",
                (summary.steps[["stage", "speed_um_s"]], velocities),
                {},
            ),
            "stage_transitions": ("figure_stage_transitions", (summary.transitions,), {}),
        },
        folder,
        executor,
    )
    pending = _PendingReport(
        drawn,
        lambda: _finish_movie_report(
            result, folder, config_toml, summary, velocities, sigma, drawn, written
        ),
    )
    try:
        written = _write_tables(
            {"stage_dwells": summary.dwells, "stage_transitions": summary.transitions}, folder
        )
        written.append(write_table(column_descriptions(), folder / "stage_velocities_columns.csv"))
        if _parquet_available():
            written.append(write_table(velocities, folder / "stage_velocities.parquet"))
    except BaseException:
        pending.cancel()
        raise
    return pending


class _PendingReport:
    """A report whose figures are being drawn: call it to finish the report, or :meth:`cancel`
    it (e.g. before deleting the folder the figures are written to)."""

    def __init__(self, drawn: dict[str, Any], finish: Callable[[], list[Path]]):
        self._drawn, self._finish = drawn, finish

    def __call__(self) -> list[Path]:
        return self._finish()

    def cancel(self) -> None:
        """Cancel the figures not started and wait for the others (their errors ignored)."""
        for future in self._drawn.values():
            if isinstance(future, str) or future.cancel():
                continue
            with contextlib.suppress(Exception):
                future.result()


def _finish_movie_report(
    result: MovieResult,
    folder: Path,
    config_toml: str,
    summary: StageSummary,
    velocities: pd.DataFrame,
    sigma: float,
    drawn: dict[str, Any],
    written: list[Path],
) -> list[Path]:
    a = result.analysis
    px, dt = result.pixel_size_um, result.frame_interval_s
    captions = {
        "tracks_by_stage": "Tracks over the movie's maximum projection, coloured by stage "
        "(dotted outlines: vessel red, cells blue, nuclei lilac, when masks were given).",
        "speed_by_stage": "Frame-to-frame speeds per stage (log scale).",
        "msd_by_state": "Ensemble MSD per motion state: slope 1 free diffusion, towards 2 "
        "directed, flattening when confined; the dashed line is the localisation-noise offset.",
        "stage_transitions": "Stage transitions within tracks.",
    }
    embedded = {n: d if isinstance(d, str) else d.result() for n, d in drawn.items()}
    written += [folder / f"{n}.{fmt}" for n in embedded for fmt in ("png", "svg")]
    n_tracks = int(a.tracks["particle"].nunique()) if len(a.tracks) else 0
    overview = (
        "<table>"
        f"<tr><td>movie</td><td>{html.escape(str(result.source))}</td></tr>"
        f"<tr><td>frames</td><td>{result.n_frames}</td></tr>"
        f"<tr><td>pixel size</td><td>{_fmt(px, 4)} um</td></tr>"
        f"<tr><td>frame interval</td><td>{_fmt(dt, 4)} s</td></tr>"
        f"<tr><td>spots / tracks / segments</td><td>{len(result.spots)} / {n_tracks} / "
        f"{len(a.segments)}</td></tr>"
        f"<tr><td>stages from</td><td>{'masks and motion' if result.masks is not None else 'motion alone (no masks)'}</td></tr>"  # noqa: E501
        f"<tr><td>localisation error (measured)</td><td>{_fmt(sigma * 1000, 3)} nm</td></tr>"
        f"<tr><td>noise floor</td><td>{_fmt(np.sqrt(2) * sigma / dt)} um/s</td></tr>"
        "</table>"
    )
    figures_html = "".join(
        f"<figure>{embedded[n]}<figcaption>{captions[n]} Files: {n}.png, {n}.svg</figcaption>"
        "</figure>"
        for n in ("tracks_by_stage", "speed_by_stage", "msd_by_state", "stage_transitions")
    )
    body = (
        "<h2>Overview</h2>"
        + overview
        + _tables_section(summary, velocities)
        + "<h2>Figures</h2>"
        + figures_html
        + (
            _details("Run configuration", f"<pre>{html.escape(config_toml)}</pre>")
            if config_toml
            else ""
        )
    )
    written.append(_write_text(folder / "report.html", _page(f"spt report: {result.name}", body)))
    return written


# ----------------------------------------------------------------------------- per batch


def write_batch_report(
    results: Sequence[MovieResult],
    out_dir: str | os.PathLike,
    *,
    summary_table: pd.DataFrame | None = None,
    velocities: pd.DataFrame | None = None,
    summary: StageSummary | None = None,
    executor: Any = None,
) -> list[Path]:
    """Write the pooled per-stage tables, figures and ``batch_report.html`` into ``out_dir``.

    Tracks of all movies are pooled (told apart by movie); the bootstrap resamples tracks over
    the whole batch. Files: ``stage_velocities.parquet``, ``stage_dwells.{csv,parquet}``,
    ``stage_transitions.{csv,parquet}``, ``speed_by_stage`` and ``stage_transitions`` figures
    (PNG, SVG) and ``batch_report.html``, which links each movie's own report.

    Parameters
    ----------
    results : sequence of spt.pipeline.MovieResult
        The movies that were analysed.
    out_dir : path-like
        The batch output folder (movie folders inside).
    summary_table : DataFrame, optional
        Per-movie status table (``movie, status, error``...) listing failed movies too.
    velocities : DataFrame, optional
        The pooled stage velocity table of these movies, if already computed
        (:func:`spt.summary.pooled_stage_velocities`); computed otherwise.
    summary : StageSummary, optional
        All pooled tables of these movies, if already computed (:func:`spt.summary.stage_summary`
        of their :class:`~spt.summary.MovieStages` named as the results); ``velocities`` is then
        not used.
    executor : concurrent.futures.Executor or dask.distributed.Client, optional
        Draw the two figures on it, in parallel (its workers must see ``out_dir``).
    """
    if summary is None:
        summary = stage_summary([r.stages() for r in results], velocities=velocities)
    finish = start_batch_report(
        results, out_dir, summary_table=summary_table, summary=summary, executor=executor
    )
    return finish(summary)


def start_batch_report(
    results: Sequence[MovieResult],
    out_dir: str | os.PathLike,
    *,
    summary_table: pd.DataFrame | None,
    summary: StageSummary,
    executor: Any = None,
) -> Callable[[StageSummary], list[Path]]:
    """Start :func:`write_batch_report`: write the dwell and transition tables and send the
    figures to ``executor``.

    ``summary`` may lack the bootstrap intervals (``stage_summary(..., intervals=False)``: the
    figures and these tables do not use them). Returns a function that takes the complete
    summary (the same movies, with intervals), waits for the figures, writes the velocity table
    and ``batch_report.html`` and returns the files written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = _write_tables(
        {"stage_dwells": summary.dwells, "stage_transitions": summary.transitions}, out
    )
    figures = {
        "speed_by_stage": (
            "figure_speed_distributions",
            (summary.steps[["stage", "speed_um_s"]], summary.velocities),
            {},
        ),
        "stage_transitions": ("figure_stage_transitions", (summary.transitions,), {}),
    }
    drawn = _start_drawing(figures, out, executor)
    written += [
        out / f"{n}.{f}" for n in ("speed_by_stage", "stage_transitions") for f in ("png", "svg")
    ]
    return lambda complete: _finish_batch_report(
        results, out, summary_table, complete, drawn, written
    )


def _finish_batch_report(
    results: Sequence[MovieResult],
    out: Path,
    summary_table: pd.DataFrame | None,
    summary: StageSummary,
    drawn: dict[str, Any],
    written: list[Path],
) -> list[Path]:
    if _parquet_available():
        written.append(write_table(summary.velocities, out / "stage_velocities.parquet"))
    rows = []
    for r in results:
        t = r.analysis.tracks
        counts = t.groupby("stage")["particle"].nunique() if len(t) else pd.Series(dtype=int)
        cells = "".join(f"<td>{int(counts.get(s, 0))}</td>" for s in STAGES)
        link = f'<a href="{html.escape(r.name)}/report.html">{html.escape(r.name)}</a>'
        rows.append(
            f"<tr><td>{link}</td><td>{r.n_frames}</td><td>{t['particle'].nunique() if len(t) else 0}</td>"  # noqa: E501
            f"{cells}</tr>"
        )
    head = (
        "<tr><th>movie</th><th>frames</th><th>tracks</th>"
        + "".join(f"<th>{s}</th>" for s in STAGES)
        + "</tr>"
    )
    movies_html = (
        "<h2>Movies</h2><p>Tracks per stage in each movie; each name links to the movie's own "
        f"report.</p><table>{head}{''.join(rows)}</table>"
    )
    if summary_table is not None and len(summary_table) and "status" in summary_table:
        failed = summary_table[summary_table["status"] != "ok"]
        if len(failed):
            movies_html += '<p class="warn">Failed movies:</p>' + failed.to_html(
                index=False, border=0
            )
    speeds, transitions = (
        d if isinstance(d, str) else d.result()
        for d in (drawn["speed_by_stage"], drawn["stage_transitions"])
    )
    body = (
        f"<p>{len(results)} movie(s) pooled.</p>"
        + movies_html
        + _tables_section(summary, summary.velocities)
        + "<h2>Figures</h2>"
        + f"<figure>{speeds}<figcaption>Frame-to-frame speeds per stage, all movies.</figcaption></figure>"  # noqa: E501
        + f"<figure>{transitions}<figcaption>Stage transitions, all movies.</figcaption></figure>"
    )
    written.append(_write_text(out / "batch_report.html", _page("spt batch report", body)))
    return written
