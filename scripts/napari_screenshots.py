"""Take the screenshots of docs/napari.md from a real napari viewer running the spt plugin.

Opens the bundled sample through the plugin's sample-data contribution, runs "Track particles" on
the whole movie, selects a track in "Results" and saves the window, the canvas and the widgets.

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/napari_screenshots.py

(with a display, plain ``python scripts/napari_screenshots.py``). Writes docs/images/napari_*.png.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wait_for(widget, app, timeout_s: float = 600) -> None:
    """Process Qt events until the widget's worker has finished."""
    t0 = time.perf_counter()
    while widget.worker is not None:
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError("tracking did not finish")
        app.processEvents()
        time.sleep(0.02)
    if widget.last_error:
        raise RuntimeError(widget.last_error)


def settle(app, seconds: float = 0.5) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        app.processEvents()
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--frame", type=int, default=160, help="frame shown in the screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    warnings.filterwarnings("ignore", message=".*PyQt5 backend is deprecated.*")
    warnings.filterwarnings("ignore", message=".*System theme detection.*")
    import napari
    from napari.settings import get_settings
    from npe2 import PluginManager, PluginManifest
    from qtpy.QtWidgets import QApplication

    get_settings().application.gui_notification_level = "none"
    try:
        PluginManager.instance().get_manifest("spt")
    except KeyError:  # a checkout not pip-installed with the entry point
        PluginManager.instance().register(
            PluginManifest.from_file(ROOT / "spt" / "napari" / "napari.yaml")
        )

    viewer = napari.Viewer(title="spt in napari")
    viewer.window.resize(1800, 1100)
    app = QApplication.instance()
    viewer.open_sample("spt", "sample")
    _, track = viewer.window.add_plugin_dock_widget("spt", "Track particles")
    t0 = time.perf_counter()
    track.run()
    wait_for(track, app)
    print(
        f"tracked {viewer.layers['sample'].data.shape[0]} frames in "
        f"{time.perf_counter() - t0:.1f} s: {track.status.text()}"
    )
    viewer.layers["sample masks"].opacity = 0.25
    viewer.scale_bar.visible = True
    viewer.dims.set_current_step(0, args.frame)
    viewer.reset_view()
    for widget in QApplication.allWidgets():  # start-up notifications would hide the canvas
        if type(widget).__name__ == "NapariQtNotification":
            widget.close()
    settle(app)
    viewer.screenshot(str(args.out / "napari_track_particles.png"), canvas_only=False)

    _, results = viewer.window.add_plugin_dock_widget("spt", "Results", tabify=True)
    result = viewer.layers["sample tracks"].metadata["spt"].result
    segments = result.analysis.segments
    # a stop-and-go track: the particle with the most segments (ties: the longest)
    counts = segments.groupby("particle").size()
    lengths = result.analysis.tracks.groupby("particle").size()
    particle = int(
        counts.to_frame("n").join(lengths.rename("len")).sort_values(["n", "len"]).index[-1]
    )
    results.select_particle(particle)
    results.tabs.setCurrentIndex(0)
    settle(app)
    results.grab().save(str(args.out / "napari_results_stages.png"))
    results.tabs.setCurrentIndex(1)
    settle(app)
    results.grab().save(str(args.out / "napari_results_track.png"))

    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari 0.9
    camera.zoom *= 1.3
    for color_by, name in (("stage", "stage"), ("state", "state")):
        track.color_by.setCurrentText(color_by)
        settle(app)
        viewer.screenshot(
            str(args.out / f"napari_canvas_by_{name}.png"), canvas_only=True, scale=1.5
        )
    print(f"selected particle {particle}; wrote screenshots to {args.out}")
    viewer.close()


if __name__ == "__main__":
    main()
