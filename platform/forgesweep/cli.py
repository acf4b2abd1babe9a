"""The ``forgesweep`` command: ``synth``, ``train``, ``sweep``, ``matrix``, ``config``, ``serve``,
``import``, ``preprocess``, ``synth-tree``, ``report`` and ``local-servers``.

Every sub-command takes ``--config PATH`` (default: ``jobs/configs/default.yaml`` of the
checkout when there is one, else the built-in defaults), ``--set key=value`` overrides
(repeatable) and ``--smoke`` (overlay ``jobs/configs/smoke.yaml``: a tiny, fast run).

Bad input (config, data, names) prints one line ``error: ...`` and exits with status 2.

Examples::

    forgesweep sweep                                   # the embedded default sweep
    forgesweep sweep --smoke --set sweep.num_samples=2
    forgesweep train --set strategy.name=finetune      # one continual run, no sweep (FT baseline)
    forgesweep matrix --config jobs/configs/matrix.yaml  # strategies x seeds comparison table
    forgesweep synth --out data/synthetic --set data.synthetic.seed=3
    forgesweep config --set strategy.kd_temperature=4  # print the resolved config
    forgesweep serve --set registered_model=cffd-synthetic  # HTTP API over the stage models
    forgesweep import ffpp /data/FaceForensics++ --out ffpp.jsonl   # dataset -> video manifest
    forgesweep preprocess ffpp.jsonl --out s3://bucket/ffpp-frames   # decode, crop faces, write frames
    forgesweep report cffd-synthetic-20261123-101500   # one static HTML page of a sweep from MLflow

``serve`` reads its own config (``jobs/configs/serve.yaml``, see ``forgesweep.serve.config``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import yaml

from forgesweep.config import (
    ExperimentConfig,
    check_search_space,
    deep_merge,
    load_config_dict,
    parse_override,
    set_dotted,
    validate_config,
)
from forgesweep.errors import SweepFailed, UserError

EXIT_USAGE = 2


def repo_configs_dir() -> Optional[Path]:
    """``jobs/configs`` of the checkout this package runs from, if there is one."""
    candidate = Path(__file__).resolve().parents[2] / "jobs" / "configs"
    return candidate if candidate.is_dir() else None


def resolve_config(path: Optional[str], overrides: Sequence[str], smoke: bool,
                   configs_dir: Optional[Path] = None) -> ExperimentConfig:
    """The experiment config the command line asks for (see the module docstring)."""
    configs_dir = configs_dir or repo_configs_dir()
    if path is None and configs_dir is not None and (configs_dir / "default.yaml").is_file():
        path = str(configs_dir / "default.yaml")
    data = load_config_dict(path)
    if smoke:
        if configs_dir is None or not (configs_dir / "smoke.yaml").is_file():
            raise UserError("--smoke needs jobs/configs/smoke.yaml, which this installation lacks")
        overlay = yaml.safe_load((configs_dir / "smoke.yaml").read_text()) or {}
        overlay.pop("extends", None)
        data = deep_merge(data, overlay)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(data, key, value)
    return validate_config(data).with_absolute_paths()


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="experiment YAML (default: jobs/configs/default.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set strategy.kd_temperature=2.0 (repeatable)")
    parser.add_argument("--smoke", action="store_true", help="tiny data and few trials: a run of about a minute")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``forgesweep`` command."""
    parser = argparse.ArgumentParser(prog="forgesweep", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sweep", help="Ray Tune + Optuna sweep of continual runs, tracked in MLflow")
    _common(p)
    p = sub.add_parser("matrix", help="comparison matrix: every model x sequence x strategy x seed on Ray")
    _common(p)
    p = sub.add_parser("train", help="one continual run on Ray Train (no sweep)")
    _common(p)
    p.add_argument("--name", help="run name under train.storage_path (default: <name>-<timestamp>)")
    p = sub.add_parser("synth", help="generate the synthetic face-forgery benchmark")
    _common(p)
    p.add_argument("--out", required=True, help="output folder (manifest.jsonl, frames/, masks/, videos/)")
    p = sub.add_parser("config", help="print the resolved config as YAML")
    _common(p)
    p = sub.add_parser("serve", help="Ray Serve HTTP API over the registered stage models")
    p.add_argument("--config", help="serving YAML (default: jobs/configs/serve.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a serving key, e.g. --set batching.max_batch_size=8 (repeatable)")
    p.add_argument("--detach", action="store_true",
                   help="deploy and exit, leaving the app on the cluster (needs RAY_ADDRESS)")
    for module in _command_modules():
        module.add_parser(sub)
    return parser


def _command_modules() -> list:
    """Sub-command modules with their own arguments (no experiment config): ``COMMANDS``,
    ``add_parser(subparsers)`` and ``run(args) -> int``."""
    from forgesweep.data import cli as data_cli
    from forgesweep.report import cli as report_cli
    from forgesweep.tracking import local_servers

    return [data_cli, report_cli, local_servers]


def _cmd_sweep(cfg: ExperimentConfig) -> int:
    from forgesweep.sweep.runner import format_summary, run_sweep

    outcome = run_sweep(cfg)
    print(format_summary(outcome, [t.name for t in cfg.data.sequence]), flush=True)
    return 0


def _cmd_matrix(cfg: ExperimentConfig) -> int:
    from forgesweep.sweep.matrix import format_matrix_summary, run_matrix

    print(format_matrix_summary(run_matrix(cfg)), flush=True)
    return 0


def _cmd_train(cfg: ExperimentConfig, name: Optional[str]) -> int:
    import time

    from forgesweep.data.prepare import prepare_data
    from forgesweep.sweep.runner import preflight
    from forgesweep.train.ray_session import connect_ray
    from forgesweep.train.trainer import build_trainer

    preflight(cfg, search_space=False)
    prepare_data(cfg)
    print(f"[ray] {connect_ray()}", flush=True)
    name = name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    result = build_trainer(cfg, name).fit()
    if result.error is not None:
        raise result.error
    m = result.metrics or {}
    print(f"run {name}: avg_acc={m.get('avg_acc', float('nan')):.3f} forgetting={m.get('forgetting', float('nan')):.3f}")
    print(f"checkpoint: {result.checkpoint.path if result.checkpoint else '-'}")
    return 0


def _cmd_synth(cfg: ExperimentConfig, out: str) -> int:
    from forgesweep.data.manifest import read_manifest
    from forgesweep.data.synthetic.generate import generate_synthetic

    path = generate_synthetic(Path(out), cfg.data.synthetic)
    manifest = read_manifest(path)
    print(f"wrote {len(manifest)} frames to {path}")
    return 0


def _cmd_serve(path: Optional[str], overrides: Sequence[str], detach: bool, configs_dir: Optional[Path]) -> int:
    import os
    import time

    import ray

    from forgesweep.serve.serving_mode import describe_serving_mode, serving_mode_env

    # A Ray instance started here serves in Ray Serve's high-throughput mode (HAProxy ingress,
    # gRPC between replicas) unless the user chose otherwise. Set before Serve is imported and
    # before Ray starts: Serve reads these once per process, and the replicas inherit them.
    local = not os.environ.get("RAY_ADDRESS") and not ray.is_initialized()
    if local:
        os.environ.update(serving_mode_env(os.environ))

    from ray import serve

    from forgesweep.serve.app import deploy, preflight
    from forgesweep.serve.config import load_serve_config
    from forgesweep.train.ray_session import connect_ray

    configs_dir = configs_dir or repo_configs_dir()
    if path is None and configs_dir is not None and (configs_dir / "serve.yaml").is_file():
        path = str(configs_dir / "serve.yaml")
    cfg = load_serve_config(path, overrides)
    if detach and not os.environ.get("RAY_ADDRESS"):
        raise UserError("--detach leaves the app on a running cluster; set RAY_ADDRESS (ray job submit does)")
    stages = preflight(cfg)
    print(f"[serve] {cfg.registered_model} @ {cfg.tracking_uri}: "
          + ", ".join(f"stage-{e.stage}=v{e.version} ({e.task})" for e in stages), flush=True)
    print(f"[ray] {connect_ray()}", flush=True)
    mode = describe_serving_mode(os.environ) if local else (
        "proxy as the cluster's nodes were started (RAY_SERVE_ENABLE_HA_PROXY, RAY_SERVE_THROUGHPUT_OPTIMIZED)")
    print(f"[serve] {mode}", flush=True)
    url = deploy(cfg)
    print(f"[serve] {url}/v1/detect  {url}/v1/detect/video  {url}/v1/stages  {url}/healthz  {url}/docs", flush=True)
    if detach:
        return 0
    print("[serve] Ctrl-C stops the app", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.delete(cfg.app_name)
        print(f"[serve] deleted app {cfg.app_name}", flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None, configs_dir: Optional[Path] = None) -> int:
    """Entry point; returns the exit status (2 for bad input)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _cmd_serve(args.config, args.overrides, args.detach, configs_dir)
        for module in _command_modules():
            if args.command in module.COMMANDS:
                return module.run(args)
        cfg = resolve_config(args.config, args.overrides, args.smoke, configs_dir)
        if args.command == "config":
            check_search_space(cfg)
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        if args.command == "synth":
            return _cmd_synth(cfg, args.out)
        if args.command == "train":
            return _cmd_train(cfg, args.name)
        if args.command == "matrix":
            return _cmd_matrix(cfg)
        return _cmd_sweep(cfg)
    except UserError as exc:
        message = str(exc)
        print(f"error: {message}" if not message.startswith("error") else message, file=sys.stderr)
        return EXIT_USAGE
    except SweepFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
