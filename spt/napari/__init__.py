"""spt's napari plugin: readers, writers, sample data and the Track particles / Results widgets.

All Qt and napari code of spt lives in this package; ``import spt`` never imports it. napari finds
the plugin through the ``napari.manifest`` entry point (``napari.yaml`` here).
"""

__all__: list[str] = []
