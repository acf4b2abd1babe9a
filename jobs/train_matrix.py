"""The comparison matrix: every architecture x task sequence x strategy x seed, on Ray.

Each cell of the config's ``matrix`` section is one Ray Tune trial that fits a Ray Train
``TorchTrainer`` over the cell's whole task sequence; every cell is a nested MLflow run tagged
``forgesweep.matrix.{model,sequence,strategy,seed}``. At the end the job prints the seed-paper
style table (per-task ACC after the last task, average ACC and AUC, forgetting, BWT; mean ± std
over seeds) and saves it on the parent run as comparison.csv / comparison.md /
avg_acc_per_stage.png.

Usage::

    python jobs/train_matrix.py                                   # jobs/configs/matrix.yaml
    python jobs/train_matrix.py --smoke                           # tiny data, seconds per cell
    python jobs/train_matrix.py --config jobs/configs/matrix_ablation.yaml
    python jobs/train_matrix.py --set 'matrix.seeds=[0,1,2,3,4]'
    ray job submit -- python jobs/train_matrix.py                 # on a cluster
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
    args = sys.argv[1:]
    if "--config" not in args and not any(a.startswith("--config=") for a in args):
        args = ["--config", str(HERE / "configs" / "matrix.yaml"), *args]
    sys.exit(main(["matrix", *args], configs_dir=HERE / "configs"))
