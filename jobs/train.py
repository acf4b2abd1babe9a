"""One continual run (no sweep) on Ray Train, with the config's fixed hyperparameters.

Usage::

    python jobs/train.py                            # jobs/configs/default.yaml
    python jobs/train.py --smoke --set strategy.name=finetune
    ray job submit -- python jobs/train.py --set train.num_workers=4
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

try:
    import forgesweep  # noqa: F401
except ImportError:  # running from a checkout that was not pip-installed
    sys.path.insert(0, str(HERE.parent / "platform"))

from forgesweep.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]], configs_dir=HERE / "configs"))
