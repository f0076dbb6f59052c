"""Simulated SPT movies of the six-stage delivery of a targeted quantum dot, with ground truth.

The simulator is the project's source of truth for tests, benchmarks and demos: tissue geometry
(vessel, cells, nuclei) as a label mask, stage-dependent motion, QD blinking, a pixel-integrated
Gaussian PSF with motion blur, and EM-CCD noise.

Model
-----
Geometry: a horizontal vessel (label 1) near the top of the field; cells (label 2) with nuclei
(label 3) placed at random, without overlap, in the interstitium below (label 0).

Stages follow the delivery order of Tada et al., Cancer Res. 67:1138 (2007), each with its own
motion (all parameters in :class:`StageMotion`, documented defaults, not the paper's values):

1. ``circulation``: plug flow along the vessel at 20-60 um/s plus lateral diffusion (``directed``).
2. ``extravasation``: slow directed crossing of the lower vessel wall (``directed``).
3. ``extracellular``: free diffusion in the interstitium (``free``); on reaching a cell it binds.
4. ``membrane_binding``: confined diffusion around the binding site (``confined``).
5. ``internalization``: stop-and-go toward the nucleus, directed runs (``directed``) alternating
   with stops (``immobile``).
6. ``perinuclear``: confined diffusion next to the nucleus (``confined``).

Blinking: on and off times drawn from truncated power laws P(t) ~ t^-m (Kuno et al. 2000).
Camera: Poisson photon noise, gamma-distributed EM gain (Hirsch et al. 2013), Gaussian read noise,
conversion to ADU with an offset; ``photons = (ADU - offset) * e_per_adu / em_gain``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.special import erf

from spt import _toml
from spt.schema import MASK_LABELS, STAGES

_VESSEL, _CELL, _NUCLEUS = MASK_LABELS["vessel"], MASK_LABELS["cell"], MASK_LABELS["nucleus"]


@dataclass(frozen=True)
class StageMotion:
    """Motion parameters of each delivery stage (documented defaults, not measured values).

    Attributes
    ----------
    flow_speed_um_s : tuple of float
        Range of plug-flow speeds in the vessel, um/s (uniform per particle).
    flow_lateral_D_um2_s : float
        Diffusion coefficient across the flow, um^2/s.
    extravasation_speed_um_s : tuple of float
        Range of wall-crossing speeds, um/s.
    extravasation_depth_um : float
        Distance outside the vessel at which extravasation ends, um.
    extracellular_D_um2_s : float
        Free diffusion coefficient in the interstitium, um^2/s.
    membrane_D_um2_s, membrane_radius_um : float
        Confined diffusion while bound to the membrane: D (um^2/s) and confinement radius (um).
    membrane_dwell_frames : float
        Mean time bound to the membrane before internalisation, frames (exponential).
    run_speed_um_s : tuple of float
        Range of run speeds of internalisation, um/s (uniform per run).
    run_frames, stop_frames : float
        Mean duration of runs and stops, frames (exponential, at least ``min_phase_frames``).
    min_phase_frames : int
        Shortest run or stop, frames.
    stop_D_um2_s : float
        Residual diffusion during stops, um^2/s (immobile within localisation error).
    perinuclear_distance_um : float
        Distance to the nucleus at which internalisation ends, um.
    perinuclear_D_um2_s, perinuclear_radius_um : float
        Confined diffusion in the perinuclear region: D (um^2/s) and radius (um).
    """

    flow_speed_um_s: tuple[float, float] = (20.0, 60.0)
    flow_lateral_D_um2_s: float = 0.5
    extravasation_speed_um_s: tuple[float, float] = (0.3, 1.0)
    extravasation_depth_um: float = 1.0
    extracellular_D_um2_s: float = 0.25
    membrane_D_um2_s: float = 0.05
    membrane_radius_um: float = 0.15
    membrane_dwell_frames: float = 90.0
    run_speed_um_s: tuple[float, float] = (0.2, 1.0)
    run_frames: float = 25.0
    stop_frames: float = 35.0
    min_phase_frames: int = 8
    stop_D_um2_s: float = 0.0002
    perinuclear_distance_um: float = 1.0
    perinuclear_D_um2_s: float = 0.02
    perinuclear_radius_um: float = 0.4


@dataclass(frozen=True)
class CameraModel:
    """EM-CCD camera: ``ADU = (gain register output + read noise) / e_per_adu + offset``.

    Attributes
    ----------
    em_gain : float
        Electron-multiplying gain (1 for an sCMOS or conventional CCD).
    e_per_adu : float
        Electrons per ADU after the gain register.
    offset_adu : float
        Constant offset added by the camera, ADU.
    read_noise_e : float
        Read noise standard deviation, electrons (after the gain register).
    """

    em_gain: float = 100.0
    e_per_adu: float = 20.0
    offset_adu: float = 100.0
    read_noise_e: float = 40.0

    def photons(self, adu: np.ndarray) -> np.ndarray:
        """Convert ADU to photoelectrons (mean-preserving)."""
        return (np.asarray(adu, dtype=np.float64) - self.offset_adu) * self.e_per_adu / self.em_gain


@dataclass(frozen=True)
class SimulationConfig:
    """Parameters of a simulated movie.

    Attributes
    ----------
    shape : tuple of int
        Frame size (Y, X) in pixels.
    n_frames : int
        Number of frames.
    n_particles : int
        Particles present at the first frame; flowing particles that leave the field are
        replaced by new ones entering the vessel.
    stage_weights : tuple of float
        Relative probability of each starting stage, in :data:`spt.schema.STAGES` order.
    extravasation_fraction : float
        Fraction of flowing particles that leave the vessel during the movie.
    pixel_size_um : float
        Pixel size in the sample, um.
    frame_interval_s : float
        Time between frames, s.
    exposure_fraction : float
        Fraction of the frame interval the sensor integrates (motion blur), 0-1.
    psf_sigma_um : float
        Standard deviation of the Gaussian PSF, um.
    photons : float
        Mean detected photons per spot per frame while on.
    photons_spread : float
        Log-normal spread of particle brightness (s.d. of log brightness).
    background : float
        Background photons per pixel per frame.
    blinking : bool
        Whether QDs blink.
    on_exponent, off_exponent : float
        Power-law exponents m of the on- and off-time distributions P(t) ~ t^-m.
    on_min_frames, on_max_frames, off_min_frames, off_max_frames : int
        Truncation of the on- and off-time distributions, frames.
    n_cells : int
        Cells to place below the vessel.
    vessel_width_um : float
        Vessel lumen width, um.
    camera : CameraModel
        Camera noise model.
    motion : StageMotion
        Per-stage motion parameters.
    substeps : int
        Sub-steps per frame used for motion and motion blur.
    seed : int
        Seed of the random generator: the same config gives the same movie.
    """

    shape: tuple[int, int] = (128, 128)
    n_frames: int = 250
    n_particles: int = 20
    stage_weights: tuple[float, ...] = (0.25, 0.1, 0.15, 0.15, 0.2, 0.15)
    extravasation_fraction: float = 0.15
    pixel_size_um: float = 0.2
    frame_interval_s: float = 1.0 / 30.0
    exposure_fraction: float = 0.5
    psf_sigma_um: float = 0.25
    photons: float = 400.0
    photons_spread: float = 0.15
    background: float = 20.0
    blinking: bool = True
    on_exponent: float = 1.5
    off_exponent: float = 2.0
    on_min_frames: int = 20
    on_max_frames: int = 1000
    off_min_frames: int = 1
    off_max_frames: int = 12
    n_cells: int = 2
    vessel_width_um: float = 6.0
    camera: CameraModel = field(default_factory=CameraModel)
    motion: StageMotion = field(default_factory=StageMotion)
    substeps: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or min(self.shape) < 16:
            raise ValueError(f"shape must be (Y, X) with both >= 16 pixels, got {self.shape}")
        if self.n_frames < 2:
            raise ValueError(f"n_frames must be >= 2, got {self.n_frames}")
        if len(self.stage_weights) != len(STAGES) or min(self.stage_weights) < 0:
            raise ValueError(f"stage_weights needs {len(STAGES)} non-negative values")
        if not 0 < self.exposure_fraction <= 1:
            raise ValueError("exposure_fraction must be in (0, 1]")
        for name in ("pixel_size_um", "frame_interval_s", "psf_sigma_um", "photons"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.background < 0 or self.n_particles < 0 or self.substeps < 1:
            raise ValueError("background and n_particles must be >= 0, substeps >= 1")

    @property
    def psf_sigma_px(self) -> float:
        """PSF standard deviation in pixels."""
        return self.psf_sigma_um / self.pixel_size_um


@dataclass
class Simulation:
    """A simulated movie with its ground truth.

    Attributes
    ----------
    movie : ndarray of uint16, shape (T, Y, X)
        Camera frames in ADU.
    masks : ndarray of uint8, shape (Y, X)
        Labels: 0 interstitium, 1 vessel, 2 cell, 3 nucleus.
    truth : DataFrame
        One row per particle per frame while it is inside the field: ``frame, particle, x, y``
        (px, position averaged over the exposure), ``stage, state, visible`` (False while the QD is
        off), ``photons`` (expected photons this frame), ``background`` (photons/px),
        ``psf_sigma_px``.
    config : SimulationConfig
        The parameters that made it.
    """

    movie: np.ndarray
    masks: np.ndarray
    truth: pd.DataFrame
    config: SimulationConfig

    @property
    def pixel_size_um(self) -> float:
        return self.config.pixel_size_um

    @property
    def frame_interval_s(self) -> float:
        return self.config.frame_interval_s

    @property
    def camera(self) -> CameraModel:
        return self.config.camera


# ----------------------------------------------------------------------------------- geometry


@dataclass
class _Tissue:
    masks: np.ndarray
    vessel_rows: tuple[float, float]  # lumen top and bottom edge, px
    dist_to_cell_px: np.ndarray  # distance of each pixel to the nearest cell pixel
    nucleus_nearest: np.ndarray  # (2, Y, X) row/col of the nearest nucleus pixel
    dist_to_nucleus_px: np.ndarray

    def label(self, x: float, y: float) -> int:
        r, c = int(round(y)), int(round(x))
        h, w = self.masks.shape
        if 0 <= r < h and 0 <= c < w:
            return int(self.masks[r, c])
        if self.vessel_rows[0] <= y <= self.vessel_rows[1]:
            return _VESSEL
        return 0

    def _lookup(self, image: np.ndarray, x: float, y: float) -> float:
        h, w = image.shape[-2:]
        return image[..., min(max(int(round(y)), 0), h - 1), min(max(int(round(x)), 0), w - 1)]

    def towards_nucleus(self, x: float, y: float) -> tuple[np.ndarray, float]:
        """Unit vector (dx, dy) toward the nearest nucleus pixel and the distance (px) to the
        nucleus edge: to that pixel's centre less half a pixel, the convention of
        :func:`spt.stages.mask_distances` (distances to pixel edges)."""
        r, c = self._lookup(self.nucleus_nearest, x, y)
        d = np.array([c - x, r - y], dtype=float)
        n = float(np.hypot(*d))
        return (d / n if n > 0 else np.zeros(2)), max(n - 0.5, 0.0)


def _make_tissue(cfg: SimulationConfig, rng: np.random.Generator) -> _Tissue:
    h, w = cfg.shape
    px = cfg.pixel_size_um
    masks = np.zeros((h, w), np.uint8)
    top = 0.08 * h
    bottom = min(top + cfg.vessel_width_um / px, 0.45 * h)
    rows = np.arange(h)[:, None]
    cols = np.arange(w)[None, :]
    masks[(rows >= top) & (rows <= bottom) & (cols >= 0)] = _VESSEL
    # Cells: discs with elliptical nuclei, below the vessel with a gap for the interstitium.
    gap = 2.0 / px
    area_top = bottom + gap
    avail = h - area_top
    radius = max(min(avail / 2.2, w / (2.4 * max(cfg.n_cells, 1)), 6.0 / px), 4.0)
    centres: list[tuple[float, float, float]] = []
    for _ in range(200 * max(cfg.n_cells, 1)):
        if len(centres) >= cfg.n_cells:
            break
        r = radius * rng.uniform(0.8, 1.0)
        cy = rng.uniform(area_top + r, max(area_top + r, h - 0.3 * r))
        cx = rng.uniform(0.6 * r, w - 0.6 * r)
        if all(np.hypot(cx - x0, cy - y0) > r + r0 + 1.0 / px for x0, y0, r0 in centres):
            centres.append((cx, cy, r))
    for cx, cy, r in centres:
        theta = rng.uniform(0, np.pi)
        a, b = 0.42 * r * rng.uniform(0.9, 1.1), 0.34 * r * rng.uniform(0.9, 1.1)
        ncx = cx + 0.15 * r * rng.uniform(-1, 1)
        ncy = cy + 0.15 * r * rng.uniform(-1, 1)
        cell = (cols - cx) ** 2 + (rows - cy) ** 2 <= r**2
        u = (cols - ncx) * np.cos(theta) + (rows - ncy) * np.sin(theta)
        v = -(cols - ncx) * np.sin(theta) + (rows - ncy) * np.cos(theta)
        masks[cell & (masks == 0)] = _CELL
        masks[(u / a) ** 2 + (v / b) ** 2 <= 1] = _NUCLEUS
    not_cell = ~np.isin(masks, (_CELL, _NUCLEUS))
    dist_to_cell = (
        ndimage.distance_transform_edt(not_cell)
        if not not_cell.all()
        else np.full(masks.shape, np.inf)
    )
    not_nucleus = masks != _NUCLEUS
    if not_nucleus.all():
        nearest = np.stack(np.indices(masks.shape)).astype(float)
        dist_nuc = np.full(masks.shape, np.inf)
    else:
        dist_nuc, nearest = ndimage.distance_transform_edt(not_nucleus, return_indices=True)
    return _Tissue(masks, (float(top), float(bottom)), dist_to_cell, nearest, dist_nuc)


# ----------------------------------------------------------------------------------- motion


@dataclass
class _Particle:
    pid: int
    stage: int
    x: float
    y: float
    brightness: float
    flow_speed: float = 0.0
    extravasate_at: float = np.inf  # frame at which a flowing particle starts to cross the wall
    anchor: tuple[float, float] = (0.0, 0.0)
    phase_left: float = 0.0  # frames left in the current membrane dwell, run or stop
    running: bool = False
    run_dir: np.ndarray = field(default_factory=lambda: np.zeros(2))
    run_speed: float = 0.0
    cross_speed: float = 0.0
    state: str = "free"


def _power_law(rng: np.random.Generator, m: float, t_min: int, t_max: int) -> int:
    """Draw a duration from P(t) ~ t^-m truncated to [t_min, t_max] (inverse transform)."""
    u = rng.uniform()
    a, b = float(t_min) ** (1 - m), float(t_max + 1) ** (1 - m)
    return int(min(max((a + u * (b - a)) ** (1 / (1 - m)), t_min), t_max))


class _Mover:
    """Advances particles through the delivery stages, one sub-step at a time."""

    def __init__(self, cfg: SimulationConfig, tissue: _Tissue, rng: np.random.Generator):
        self.cfg, self.tissue, self.rng = cfg, tissue, rng
        self.m = cfg.motion
        self.px = cfg.pixel_size_um
        self.dt = cfg.frame_interval_s / cfg.substeps  # s per sub-step
        self.sub = 1.0 / cfg.substeps  # frames per sub-step

    # -- creation
    def new_particle(
        self, pid: int, stage: int, entering: bool = False, frame: int = 0
    ) -> _Particle | None:
        rng, t = self.rng, self.tissue
        h, w = self.cfg.shape
        top, bottom = t.vessel_rows
        brightness = self.cfg.photons * float(
            np.exp(rng.normal(0, self.cfg.photons_spread) - self.cfg.photons_spread**2 / 2)
        )
        p = _Particle(pid, stage, 0.0, 0.0, brightness)
        name = STAGES[stage]
        if name == "circulation":
            p.flow_speed = rng.uniform(*self.m.flow_speed_um_s)
            p.x = -3.0 if entering else rng.uniform(0, w - 1)
            p.y = rng.uniform(top + 1, bottom - 1)
            if rng.uniform() < self.cfg.extravasation_fraction:
                # Marginating particles travel near the lower wall before crossing it.
                p.y = rng.uniform(bottom - 1.0 / self.px, bottom - 0.3 / self.px)
                # Cross somewhere along the visible stretch of the vessel.
                frames_to_exit = (w - p.x) / (p.flow_speed * self.cfg.frame_interval_s / self.px)
                p.extravasate_at = frame + rng.uniform(0.2, 0.9) * frames_to_exit
            p.state = "directed"
            return p
        if name == "extravasation":
            p.x = rng.uniform(0.1 * w, 0.9 * w)
            p.y = bottom - rng.uniform(0.2, 0.8) / self.px
            self._start_crossing(p)
            return p
        candidates = {
            "extracellular": (t.masks == 0) & (t.dist_to_cell_px > 2) & (t.dist_to_cell_px < 12),
            "membrane_binding": (t.masks == _CELL)
            & (ndimage.distance_transform_edt(t.masks != 0) <= 2),
            "internalization": (t.masks == _CELL)
            & (t.dist_to_nucleus_px > (self.m.perinuclear_distance_um + 1.0) / self.px),
            "perinuclear": (t.masks == _CELL)
            & (t.dist_to_nucleus_px <= 0.7 * self.m.perinuclear_distance_um / self.px),
        }[name]
        rows, cols = np.nonzero(candidates)
        if rows.size == 0:
            return None
        i = rng.integers(rows.size)
        p.x, p.y = float(cols[i]) + rng.uniform(-0.4, 0.4), float(rows[i]) + rng.uniform(-0.4, 0.4)
        self._enter_stage(p, stage)
        return p

    def _start_crossing(self, p: _Particle) -> None:
        p.stage = STAGES.index("extravasation")
        p.cross_speed = self.rng.uniform(*self.m.extravasation_speed_um_s)
        p.state = "directed"

    def _enter_stage(self, p: _Particle, stage: int) -> None:
        p.stage = stage
        name = STAGES[stage]
        if name == "extracellular":
            p.state = "free"
        elif name == "membrane_binding":
            p.anchor = (p.x, p.y)
            p.phase_left = max(self.rng.exponential(self.m.membrane_dwell_frames), 10)
            p.state = "confined"
        elif name == "internalization":
            p.running = self.rng.uniform() < 0.5
            self._new_phase(p)
        elif name == "perinuclear":
            p.anchor = (p.x, p.y)
            p.state = "confined"

    def _new_phase(self, p: _Particle) -> None:
        mean = self.m.run_frames if p.running else self.m.stop_frames
        p.phase_left = max(self.rng.exponential(mean), self.m.min_phase_frames)
        if p.running:
            p.run_speed = self.rng.uniform(*self.m.run_speed_um_s)
            p.state = "directed"
        else:
            p.state = "immobile"

    # -- motion
    def _diffuse(self, D: float) -> np.ndarray:
        return self.rng.normal(0.0, np.sqrt(2 * D * self.dt), 2) / self.px

    def _confine(self, p: _Particle, D: float, radius_um: float) -> None:
        r = radius_um / self.px
        for _ in range(10):  # reject steps that leave the disc (reflecting boundary)
            nx, ny = np.array([p.x, p.y]) + self._diffuse(D)
            if np.hypot(nx - p.anchor[0], ny - p.anchor[1]) <= r:
                p.x, p.y = nx, ny
                return

    def step(self, p: _Particle, frame: float) -> None:
        """Advance ``p`` by one sub-step; ``frame`` is the (fractional) time in frames."""
        m, t, name = self.m, self.tissue, STAGES[p.stage]
        top, bottom = t.vessel_rows
        if name == "circulation":
            if frame >= p.extravasate_at:
                self._start_crossing(p)
                return
            d = self._diffuse(m.flow_lateral_D_um2_s)
            p.x += p.flow_speed * self.dt / self.px + d[0]
            p.y = float(np.clip(p.y + d[1], top + 0.5, bottom - 0.5))
        elif name == "extravasation":
            p.y += p.cross_speed * self.dt / self.px
            p.x += self._diffuse(0.002)[0]
            # depth below the lumen's edge (the lower edge of its last row of pixels)
            if p.y > np.floor(bottom) + 0.5 + m.extravasation_depth_um / self.px:
                self._enter_stage(p, STAGES.index("extracellular"))
        elif name == "extracellular":
            nx, ny = np.array([p.x, p.y]) + self._diffuse(m.extracellular_D_um2_s)
            label = t.label(nx, ny)
            if label == _VESSEL or ny <= bottom:
                return  # the vessel wall reflects
            p.x, p.y = nx, ny
            if label in (_CELL, _NUCLEUS):
                self._enter_stage(p, STAGES.index("membrane_binding"))
        elif name == "membrane_binding":
            self._confine(p, m.membrane_D_um2_s, m.membrane_radius_um)
            p.phase_left -= self.sub
            if p.phase_left <= 0:
                self._enter_stage(p, STAGES.index("internalization"))
        elif name == "internalization":
            direction, dist = t.towards_nucleus(p.x, p.y)
            if dist * self.px <= m.perinuclear_distance_um:
                self._enter_stage(p, STAGES.index("perinuclear"))
                return
            if p.running:
                if not p.run_dir.any():
                    p.run_dir = direction
                p.x += p.run_dir[0] * p.run_speed * self.dt / self.px
                p.y += p.run_dir[1] * p.run_speed * self.dt / self.px
            else:
                p.x, p.y = np.array([p.x, p.y]) + self._diffuse(m.stop_D_um2_s)
            p.phase_left -= self.sub
            if p.phase_left <= 0:
                p.running = not p.running
                p.run_dir = np.zeros(2)
                self._new_phase(p)
        elif name == "perinuclear":
            self._confine(p, m.perinuclear_D_um2_s, m.perinuclear_radius_um)


# ----------------------------------------------------------------------------------- simulate


def simulate_tracks(
    config: SimulationConfig = SimulationConfig(),
) -> tuple[pd.DataFrame, np.ndarray]:
    """Simulate trajectories only (no movie): fast ground truth for motion analysis.

    Parameters
    ----------
    config : SimulationConfig
        Simulation parameters.

    Returns
    -------
    truth : DataFrame
        See :class:`Simulation` (``truth``); also carries the sub-step positions used for rendering
        in the private columns ``_xs, _ys`` (object arrays, px).
    masks : ndarray of uint8, shape (Y, X)
        Tissue labels.
    """
    truth, masks = _simulate_paths(config)
    return truth.drop(columns=["_xs", "_ys"]), masks


def _simulate_paths(cfg: SimulationConfig) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(cfg.seed)
    tissue = _make_tissue(cfg, rng)
    mover = _Mover(cfg, tissue, rng)
    h, w = cfg.shape
    weights = np.asarray(cfg.stage_weights, float) / sum(cfg.stage_weights)
    particles: list[_Particle] = []
    next_id = 0
    for _ in range(cfg.n_particles):
        p = None
        while p is None:
            p = mover.new_particle(next_id, int(rng.choice(len(STAGES), p=weights)))
        particles.append(p)
        next_id += 1
    n_flow = sum(p.stage == 0 for p in particles)
    blink: dict[int, tuple[bool, int]] = {}
    n_exposed = max(1, int(round(cfg.exposure_fraction * cfg.substeps)))
    rows: list[tuple] = []
    for frame in range(cfg.n_frames):
        # Keep the vessel supplied: new particles enter upstream as flowing ones leave.
        while sum(p.stage == 0 for p in particles) < n_flow:
            p = mover.new_particle(next_id, 0, entering=True, frame=frame)
            particles.append(p)
            next_id += 1
        alive: list[_Particle] = []
        for p in particles:
            xs, ys, stages, states = [], [], [], []
            for k in range(cfg.substeps):
                mover.step(p, frame + k / cfg.substeps)
                xs.append(p.x)
                ys.append(p.y)
                stages.append(p.stage)
                states.append(p.state)
            inside = -0.5 <= xs[-1] <= w - 0.5 and -0.5 <= ys[-1] <= h - 0.5
            if not inside:
                if p.x > w:  # left downstream: gone for good
                    continue
                alive.append(p)
                continue
            alive.append(p)
            on, left = blink.get(p.pid, (True, 0))
            if left <= 0:
                if p.pid in blink:
                    on = not on
                if on:
                    left = _power_law(rng, cfg.on_exponent, cfg.on_min_frames, cfg.on_max_frames)
                else:
                    left = _power_law(rng, cfg.off_exponent, cfg.off_min_frames, cfg.off_max_frames)
            blink[p.pid] = (on, left - 1)
            visible = on or not cfg.blinking
            ex, ey = xs[:n_exposed], ys[:n_exposed]
            # Label a frame by its state at the middle of the exposure.
            mid = (n_exposed - 1) // 2
            rows.append(
                (
                    frame,
                    p.pid,
                    float(np.mean(ex)),
                    float(np.mean(ey)),
                    STAGES[stages[mid]],
                    states[mid],
                    visible,
                    p.brightness if visible else 0.0,
                    np.asarray(ex),
                    np.asarray(ey),
                )
            )
        particles = alive
    columns = ["frame", "particle", "x", "y", "stage", "state", "visible", "photons", "_xs", "_ys"]
    truth = pd.DataFrame(rows, columns=columns)
    truth = truth.astype({"frame": "int64", "particle": "int64", "visible": bool})
    # Renumber particles 0..n-1 in order of appearance; drop particles never in the field.
    truth["particle"] = pd.factorize(truth["particle"])[0]
    truth["background"] = float(cfg.background)
    truth["psf_sigma_px"] = cfg.psf_sigma_px
    return truth.sort_values(["particle", "frame"], ignore_index=True), tissue.masks


def render(truth: pd.DataFrame, cfg: SimulationConfig, rng: np.random.Generator) -> np.ndarray:
    """Render frames in ADU from sub-step positions (pixel-integrated Gaussian PSF, EM-CCD noise).

    The expected photon count of pixel k is ``b + sum_i N_i / S * sum_s dEx_s dEy_s`` over the
    ``S`` exposed sub-steps of each visible particle (Smith et al. 2010, Eq. for mu_k), followed by
    Poisson noise, a gamma-distributed EM gain register, Gaussian read noise and ADU conversion.
    """
    h, w = cfg.shape
    sigma = cfg.psf_sigma_px
    half = int(np.ceil(4 * sigma))
    box = np.arange(-half, half + 1)
    cam = cfg.camera
    movie = np.empty((cfg.n_frames, h, w), np.uint16)
    s2 = np.sqrt(2) * sigma
    visible = truth[truth["visible"]]
    by_frame = {f: g for f, g in visible.groupby("frame")}
    for frame in range(cfg.n_frames):
        expected = np.full((h, w), float(cfg.background))
        group = by_frame.get(frame)
        if group is not None:
            xs = np.concatenate(group["_xs"].to_list())
            ys = np.concatenate(group["_ys"].to_list())
            n_sub = np.array([len(a) for a in group["_xs"]])
            photons = np.repeat(group["photons"].to_numpy() / n_sub, n_sub)
            cx, cy = np.round(xs).astype(int), np.round(ys).astype(int)
            px = cx[:, None] + box[None, :]  # (n, B)
            py = cy[:, None] + box[None, :]
            ex = 0.5 * (erf((px - xs[:, None] + 0.5) / s2) - erf((px - xs[:, None] - 0.5) / s2))
            ey = 0.5 * (erf((py - ys[:, None] + 0.5) / s2) - erf((py - ys[:, None] - 0.5) / s2))
            values = photons[:, None, None] * ey[:, :, None] * ex[:, None, :]
            rr = np.broadcast_to(py[:, :, None], values.shape)
            cc = np.broadcast_to(px[:, None, :], values.shape)
            keep = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            np.add.at(expected, (rr[keep], cc[keep]), values[keep])
        electrons = rng.poisson(expected).astype(np.float64)
        if cam.em_gain > 1:
            electrons = rng.gamma(np.maximum(electrons, 1e-12), cam.em_gain) * (electrons > 0)
        electrons += rng.normal(0.0, cam.read_noise_e, electrons.shape)
        adu = np.round(electrons / cam.e_per_adu + cam.offset_adu)
        movie[frame] = np.clip(adu, 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return movie


def simulate(config: SimulationConfig = SimulationConfig()) -> Simulation:
    """Simulate a movie of the six-stage delivery with its ground truth.

    Parameters
    ----------
    config : SimulationConfig
        Simulation parameters; the seed makes the result reproducible.

    Returns
    -------
    Simulation
        Movie (uint16 ADU), tissue masks and ground-truth table.

    Examples
    --------
    >>> sim = simulate(SimulationConfig(n_frames=20, n_particles=5, seed=1))
    >>> sim.movie.shape
    (20, 128, 128)
    """
    truth, masks = _simulate_paths(config)
    # A separate stream for noise, so the trajectories do not depend on the camera settings.
    movie = render(truth, config, np.random.default_rng([config.seed, 1]))
    return Simulation(movie, masks, truth.drop(columns=["_xs", "_ys"]), config)


def write_simulation(
    sim: Simulation, out_dir: str | os.PathLike, name: str = "sim"
) -> dict[str, Path]:
    """Write a simulation: OME-TIFF movie, mask TIFF, ground-truth CSV and the parameters (TOML).

    Returns
    -------
    dict
        Paths of the written files, keys ``movie``, ``masks``, ``truth``, ``config``.
    """
    from spt.io import write_movie, write_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "movie": out / f"{name}.ome.tif",
        "masks": out / f"{name}_masks.tif",
        "truth": out / f"{name}_truth.csv",
        "config": out / f"{name}_simulation.toml",
    }
    write_movie(
        paths["movie"],
        sim.movie,
        pixel_size_um=sim.pixel_size_um,
        frame_interval_s=sim.frame_interval_s,
    )
    _write_masks(paths["masks"], sim.masks)
    truth = sim.truth.copy()
    truth[["x", "y"]] = truth[["x", "y"]].round(4)
    write_table(truth, paths["truth"])
    _atomic_text(paths["config"], _config_toml(sim.config))
    return paths


def _write_masks(path: Path, masks: np.ndarray) -> None:
    import tifffile

    tmp = path.with_name(f".{path.name}.tmp")
    tifffile.imwrite(tmp, masks.astype(np.uint8), metadata={"axes": "YX"})
    os.replace(tmp, path)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _config_toml(cfg: SimulationConfig) -> str:
    return _toml.dumps({"simulation": asdict(cfg)})


PRESETS: dict[str, dict] = {
    "sample": dict(shape=(128, 128), n_frames=250, n_particles=18),
    "default": {},
    "benchmark": dict(shape=(256, 256), n_frames=600, n_particles=40, n_cells=4),
    "large": dict(shape=(512, 512), n_frames=600, n_particles=160, n_cells=12),
}
