"""The main job: a Ray Tune + Optuna sweep of CFFD continual face-forgery detection.

Each trial trains the detector on the whole task sequence (Deepfakes -> Face2Face -> FaceSwap
-> NeuralTextures on the built-in synthetic benchmark by default) through a Ray Train
``TorchTrainer``, reporting after every stage; ASHA stops weak trials after early stages;
MLflow records one run per trial and registers the best trial's stage models with aliases
``stage-1`` ... ``stage-N``.

Usage::

    python jobs/sweep_cffd.py                       # embedded default (jobs/configs/default.yaml)
    python jobs/sweep_cffd.py --smoke               # about a minute
    python jobs/sweep_cffd.py --config my.yaml --set strategy.kd_temperature=4.0
    ray job submit -- python jobs/sweep_cffd.py     # on a cluster (RAY_ADDRESS is set for you)
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
    sys.exit(main(["sweep", *sys.argv[1:]], configs_dir=HERE / "configs"))
