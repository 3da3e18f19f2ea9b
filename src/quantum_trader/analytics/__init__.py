"""Run analytics: performance report (``performance``), charts (``charts``), rich tables
(``tables``). Import the submodules directly; matplotlib is only loaded when a chart is drawn."""
