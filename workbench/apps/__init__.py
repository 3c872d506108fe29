"""What researchers look at: the report and the dashboard.

report      `workbench report`: one self-contained HTML file (plotly inlined, opens offline); no dash needed
dashboard   `workbench dashboard`: the Dash app (needs the `dashboard` extra)
data        what both compute from a run directory, cached by path, mtime and size
figures     the plotly figures both draw
paths       which files may be read: only under the run directory
"""
