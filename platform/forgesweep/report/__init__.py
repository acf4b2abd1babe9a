"""``forgesweep report``: a static HTML page of a sweep or comparison matrix from the MLflow store.

* :mod:`forgesweep.report.collect` -- reads the parent run, trial runs, stage metrics and the
  registered stage models back from MLflow;
* :mod:`forgesweep.report.importance` -- Optuna parameter importances (fANOVA) over an
  in-memory study rebuilt from the finished trials;
* :mod:`forgesweep.report.figures` -- heat maps, per-stage curves and importance bars as PNG;
* :mod:`forgesweep.report.html` -- the self-contained page;
* :mod:`forgesweep.report.cli` -- the command (``add_parser`` / ``run``) and :func:`build_report`.
"""
