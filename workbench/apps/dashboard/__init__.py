"""The interactive dashboard (`workbench dashboard RUN_DIR`); needs the `dashboard` extra (dash).

app.py      the Dash app: header, tabs, cache warm-up, serve()
views.py    one layout + callbacks per view: episode player, activations, probes, patching and steering,
            behaviour

What the views compute (`workbench.apps.data`), the plotly figures (`workbench.apps.figures`) and the path checks
(`workbench.apps.paths`) live one level up, shared with `workbench report`, which does not need dash.
"""

from workbench.apps.dashboard.app import create_app, serve

__all__ = ["create_app", "serve"]
