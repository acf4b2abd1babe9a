"""Preprocessing real videos on Ray: sampled frames, face crops, a frame-level manifest.

``jobs/preprocess.py`` (and ``forgesweep preprocess``) call :func:`run_preprocess`; each video is
one Ray task running :func:`~forgesweep.preprocessing.video_task.process_video`, which is plain
Python. See :mod:`forgesweep.preprocessing.runner` for resuming and bad input, and
:mod:`forgesweep.preprocessing.store` for the output layout.
"""

from forgesweep.preprocessing.runner import PreprocessSummary, run_preprocess, video_tasks
from forgesweep.preprocessing.spec import PreprocessSpec

__all__ = ["PreprocessSpec", "PreprocessSummary", "run_preprocess", "video_tasks"]
