"""Preprocess imported videos on Ray: sampled frames, face crops, a frame-level manifest.

Usage::

    python jobs/preprocess.py data/ffpp_c23/videos.jsonl --out data/ffpp_c23/frames
    ray job submit -- python jobs/preprocess.py s3://bucket/ffpp/videos.jsonl --out s3://bucket/ffpp/frames \
        --num-frames 32 --size 256 --detector haar --skip-bad

Each video is one Ray task (``RAY_ADDRESS``, which ``ray job submit`` sets, joins the cluster;
otherwise a local Ray starts). Re-running the same command resumes: finished videos are skipped.
Bad input exits with status 2 and lists every bad video with its path and reason.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

try:
    import forgesweep  # noqa: F401
except ImportError:  # running from a checkout that was not pip-installed
    sys.path.insert(0, str(HERE.parent / "platform"))

from forgesweep.data.cli import build_preprocess_parser, run  # noqa: E402


def main(argv=None) -> int:
    return run(build_preprocess_parser(prog="jobs/preprocess.py").parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
