"""Ray Serve application for the registered stage models (see :mod:`forgesweep.serve.app`).

Sub-modules import Ray Serve and FastAPI, so nothing is imported here: ``forgesweep`` stays
importable (and fast) where only training is used.
"""
