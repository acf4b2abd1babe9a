"""Serve the best models of a sweep: every ``stage-k`` alias of a registered model over HTTP.

Deploys the forgesweep Ray Serve application (FastAPI ingress + one multiplexed deployment
holding the stage models) on the Ray cluster named by ``RAY_ADDRESS``, or on a local Ray.

Usage::

    python jobs/serve_best.py                                   # jobs/configs/serve.yaml; Ctrl-C stops
    python jobs/serve_best.py --set registered_model=cffd-synthetic-smoke --set http.port=8001
    ray job submit -- python jobs/serve_best.py --detach        # deploy, exit; the app stays up
    serve run forgesweep.serve.app:app_builder config=jobs/configs/serve.yaml
    serve run jobs/configs/serve_deploy.yaml                    # Serve's own config-file format
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
    sys.exit(main(["serve", *sys.argv[1:]], configs_dir=HERE / "configs"))
