"""The interactive dashboard (`workbench dashboard RUN_DIR`) and the figures it shares with `workbench report`.

app.py      the Dash app: header, tabs, cache warm-up, serve()
views.py    one layout + callbacks per view: episode player, activations, probes, patching and steering,
            behaviour
figures.py  plotly figures from plain data, shared with the static report
data.py     what the views compute from a run directory, cached by path and mtime
paths.py    which files may be read: only under the run directory, never `..` or absolute paths
"""

from workbench.dashboard.app import create_app, serve

__all__ = ["create_app", "serve"]
