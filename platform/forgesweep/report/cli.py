"""``forgesweep report <sweep, matrix or experiment>``: a static HTML page from the MLflow store.

The target is a sweep or matrix name (the parent run's ``forgesweep.sweep`` tag, as printed by
the job), a parent run id, or an experiment name (every sweep and matrix in it, newest first).
The store is the one the sweep wrote: ``--tracking-uri``, else the config's
``tracking.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else ``./mlruns/mlflow.db`` -- the same
resolution as ``forgesweep sweep``. The page is one file with its plots embedded; it needs no
network and no server to open.

Examples::

    forgesweep report cffd-synthetic-20261123-101500             # -> report-cffd-synthetic-20261123-101500.html
    forgesweep report forgesweep-cffd --out sweeps.html          # every sweep of the experiment
    forgesweep report my-matrix --tracking-uri sqlite:///runs/mlflow.db --mlflow-ui http://127.0.0.1:5000
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from forgesweep.errors import UserError

EXIT_USAGE = 2
COMMANDS = ("report",)  # the sub-commands this module adds to `forgesweep`


@dataclass(frozen=True)
class ReportOutcome:
    """What :func:`build_report` wrote."""

    path: Path
    studies: list[str]  # "<kind> <name>" of every section
    bytes: int


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``report`` on the ``forgesweep`` command's sub-parsers."""
    p = subparsers.add_parser("report", help="static HTML report of a sweep or matrix from the MLflow store",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("target", help="sweep or matrix name, parent run id, or experiment name")
    p.add_argument("--out", help="HTML file to write (default: report-<target>.html in the current directory)")
    p.add_argument("--tracking-uri", help="MLflow store (default: as forgesweep sweep resolves it)")
    p.add_argument("--mlflow-ui", metavar="URL",
                   help="base URL of an MLflow UI to link runs to (default: the tracking URI when it is http(s), "
                        "else http://127.0.0.1:5000)")
    p.add_argument("--config", help="experiment YAML whose tracking section names the store")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set tracking.tracking_uri=sqlite:///x.db (repeatable)")
    p.add_argument("--smoke", action="store_true", help="resolve the config as forgesweep sweep --smoke does")
    return p


def resolve_tracking_uri(explicit: Optional[str], config: Optional[str], overrides: list[str], smoke: bool) -> str:
    """``explicit``, else the config's tracking URI (config value, ``$MLFLOW_TRACKING_URI``, ./mlruns)."""
    if explicit:
        return explicit
    from forgesweep.cli import resolve_config

    return resolve_config(config, overrides, smoke).tracking.resolved_tracking_uri()


def default_output(target: str) -> Path:
    """``report-<target>.html`` with the target made safe for a file name."""
    return Path(f"report-{re.sub(r'[^A-Za-z0-9._-]+', '_', target)}.html")


def build_report(target: str, tracking_uri: str, out: Path, mlflow_ui: Optional[str] = None) -> ReportOutcome:
    """Read the target's runs and write the page to ``out`` atomically.

    Raises:
        UserError: no store at the URI, or nothing named ``target`` in it.
    """
    from forgesweep.report.collect import find_parent_runs, load_study, open_store
    from forgesweep.report.html import render_page

    client = open_store(tracking_uri)
    studies = [load_study(client, run) for run in find_parent_runs(client, target)]
    ui = mlflow_ui or (tracking_uri if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000")
    page = render_page(target, studies, tracking_uri, ui)
    out = Path(out)
    if out.parent and not out.parent.is_dir():
        raise UserError(f"--out: folder {out.parent} does not exist")
    # Written next to the target and renamed: an interrupted run never leaves half a page.
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        # mkstemp makes the file private (0600); a report is meant to be shared like any file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ReportOutcome(out, [f"{s.kind} {s.name}" for s in studies], len(page.encode("utf-8")))


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``report`` command; returns the exit status (2 for bad input)."""
    try:
        uri = resolve_tracking_uri(args.tracking_uri, args.config, args.overrides, args.smoke)
        out = Path(args.out) if args.out else default_output(args.target)
        outcome = build_report(args.target, uri, out, args.mlflow_ui)
    except UserError as exc:
        message = str(exc)
        print(message if message.startswith("error") else f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {outcome.path} ({outcome.bytes / 1024:.0f} KiB): {', '.join(outcome.studies)}", flush=True)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m forgesweep.report.cli TARGET ...`` (the same as ``forgesweep report``)."""
    parser = argparse.ArgumentParser(prog="forgesweep")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["report", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
