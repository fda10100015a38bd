"""The interactive flame graph: plotly's icicle chart (click a box to zoom, hover for
allocations, bytes and share, search for a function) in JupyterLab and in the HTML report.

- :mod:`slabkit.ui.flame.figure`: the plotly figures of a capture and of two captures'
  difference (built from :mod:`slabkit.analysis.flame`, labelled by
  :mod:`slabkit.analysis.present`);
- ``flame.js``: the one front end (a search box, "Reset zoom", the figure, the search
  highlight), run by the JupyterLab widget and by the report alike;
- :mod:`slabkit.ui.flame.widget`: :class:`FlameGraph`, an anywidget for JupyterLab;
- :mod:`slabkit.ui.flame.embed`: the same in a standalone HTML page (plotly.js embedded, no
  network), with a static image where scripts cannot run.

plotly.js comes from the plotly Python package (MIT licence), which ships it as package data.
"""
