"""``forgesweep import``, ``forgesweep preprocess`` and ``forgesweep synth-tree``.

Wired into the ``forgesweep`` command by :func:`add_parser` (sub-commands) and :func:`run`
(dispatch); ``jobs/preprocess.py`` uses :func:`build_preprocess_parser` on its own.

Examples::

    forgesweep import ffpp /data/FaceForensics --out data/ffpp_c23/videos.jsonl --compression c23
    forgesweep import celebdf s3://datasets/Celeb-DF-v2 --out data/cdf2/videos.jsonl --skip-bad
    forgesweep preprocess data/ffpp_c23/videos.jsonl --out data/ffpp_c23/frames --num-frames 32
    forgesweep preprocess data/ffpp_c23/videos.jsonl data/dfdcp/videos.jsonl data/cdf2/videos.jsonl \\
        --out s3://bucket/frames/dataset-incremental --detector haar --size 256
    forgesweep synth-tree ffpp --out /tmp/ffpp-like                 # a fake FF++ download to try it on

Bad input prints ``error: ...`` (every bad item with its path and reason) and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from forgesweep.errors import UserError

COMMANDS = ("import", "preprocess", "synth-tree")
EXIT_USAGE = 2


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    """Add ``import``, ``preprocess`` and ``synth-tree`` to the ``forgesweep`` sub-commands."""
    from forgesweep.data.importers import IMPORTERS

    p = subparsers.add_parser("import", help="scan a dataset root (local or s3://) and write a video-level manifest",
                              description="Importers: " + "; ".join(
                                  f"{n}: {IMPORTERS.get(n).description}" for n in IMPORTERS.names()))
    p.add_argument("dataset", choices=IMPORTERS.names(), help="which layout the root has")
    p.add_argument("root", help="dataset root folder or s3://bucket/prefix")
    p.add_argument("--out", required=True, help="manifest to write (.jsonl, local or s3://); a report "
                                                "<out>.import.json is written beside it")
    p.add_argument("--skip-bad", action="store_true", help="skip bad items (listed and counted) instead of stopping")
    p.add_argument("--no-check-videos", dest="check_videos", action="store_false",
                   help="do not open every local video with decord (faster; preprocessing still catches them)")
    p.add_argument("--compression", help="ffpp, dfd: raw | c23 | c40 (default c23)")
    p.add_argument("--methods", nargs="+", help="ffpp: manipulation folders to import (default: all present)")
    p.add_argument("--splits", help="ffpp: folder of train/val/test.json (default <root>/splits)")
    p.add_argument("--test-list", help="celebdf: the test list (default List_of_testing_videos.txt)")
    p.add_argument("--val-fraction", type=float, help="celebdf, dfd, folder: share put in val")
    p.add_argument("--test-fraction", type=float, help="dfd, folder: share put in test")
    p.add_argument("--dataset-name", help="manifest dataset name (default: FF++, CDF2, DFDC-P, DFD, the folder's name)")
    p.set_defaults(_data_run=_cmd_import)

    p = subparsers.add_parser("preprocess", help="decode, face-crop and write frames + a frame manifest on Ray")
    add_preprocess_arguments(p)
    p.set_defaults(_data_run=_cmd_preprocess)

    p = subparsers.add_parser("synth-tree", help="write a synthetic FF++/Celeb-DF/DFDC-shaped tree of tiny videos")
    p.add_argument("kind", choices=("ffpp", "celebdf", "dfdc"))
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=8, help="frames per video")
    p.add_argument("--frame-size", type=int, default=128, help="video frame side in pixels")
    p.add_argument("--face-size", type=int, default=80, help="face side in pixels")
    p.add_argument("--pairs", type=int, default=5, help="ffpp: pairs of originals")
    p.add_argument("--dfd-actors", type=int, default=0, help="ffpp: also DFD actors")
    p.set_defaults(_data_run=_cmd_synth_tree)


def add_preprocess_arguments(p: argparse.ArgumentParser) -> None:
    """The ``preprocess`` flags (shared by ``forgesweep preprocess`` and ``jobs/preprocess.py``)."""
    from forgesweep.data.face_crop import DETECTORS, FALLBACKS

    p.add_argument("inputs", nargs="+", help="video-level manifests (forgesweep import writes them); several merge")
    p.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    p.add_argument("--num-frames", type=int, default=32, help="evenly spaced frames per video (default 32)")
    p.add_argument("--size", dest="image_size", type=int, default=256, help="face crop side in pixels (default 256)")
    p.add_argument("--detector", default="haar", choices=DETECTORS.names(),
                   help="haar: OpenCV cascade (pip install 'forgesweep[faces]'); none: faces already cropped")
    p.add_argument("--scale", type=float, default=1.3, help="face box enlargement (default 1.3)")
    p.add_argument("--fallback", default="nearest", choices=FALLBACKS, help="frame without a face (default nearest)")
    p.add_argument("--format", dest="image_format", default="png", choices=("png", "jpeg"))
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--skip-bad", action="store_true", help="skip bad videos (listed and counted) instead of stopping")
    p.add_argument("--max-in-flight", type=int, help="Ray tasks at once (default: the cluster's CPUs)")
    p.add_argument("--cpus-per-task", type=float, default=1.0)
    p.add_argument("--progress-every", dest="progress_every_s", type=float, default=5.0,
                   help="seconds between progress lines")


def build_preprocess_parser(prog: str = "preprocess") -> argparse.ArgumentParser:
    """A stand-alone parser of the ``preprocess`` flags (``jobs/preprocess.py``)."""
    parser = argparse.ArgumentParser(prog=prog, description="Decode, face-crop and resize videos on Ray; write "
                                                            "frames and a frame-level manifest (local or s3://).")
    add_preprocess_arguments(parser)
    parser.set_defaults(_data_run=_cmd_preprocess)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the parsed sub-command; bad input prints ``error: ...`` and returns 2."""
    try:
        return args._data_run(args)
    except UserError as exc:
        message = str(exc)
        print(message if message.startswith("error") else f"error: {message}", file=sys.stderr)
        return EXIT_USAGE


def _importer_options(args: argparse.Namespace) -> dict[str, Any]:
    names = ("compression", "methods", "splits", "test_list", "val_fraction", "test_fraction", "dataset_name")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _cmd_import(args: argparse.Namespace) -> int:
    from forgesweep.data.importers import run_import

    result = run_import(args.dataset, args.root, args.out, skip_bad=args.skip_bad, check_videos=args.check_videos,
                        options=_importer_options(args))
    print(result.report.format())
    print(f"wrote {len(result.rows)} videos to {result.manifest}")
    return 0


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from forgesweep.errors import describe_validation_error
    from forgesweep.preprocessing import PreprocessSpec, run_preprocess

    fields = ("num_frames", "image_size", "detector", "scale", "fallback", "image_format", "jpeg_quality",
              "skip_bad", "max_in_flight", "cpus_per_task", "progress_every_s")
    try:
        spec = PreprocessSpec(**{f: getattr(args, f) for f in fields})
    except ValidationError as exc:
        raise UserError(f"preprocess: {describe_validation_error(exc)}") from None
    run_preprocess(args.inputs, args.out, spec, echo=lambda line: print(line, flush=True))
    return 0


def _cmd_synth_tree(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from forgesweep.data.synthetic.dataset_trees import TreeSpec, write_dataset_tree
    from forgesweep.errors import describe_validation_error

    try:
        spec = TreeSpec(seed=args.seed, frames_per_video=args.frames, frame_size=args.frame_size,
                        face_size=args.face_size, ffpp_pairs=args.pairs, dfd_actors=args.dfd_actors)
    except ValidationError as exc:
        raise UserError(f"synth-tree: {describe_validation_error(exc)}") from None
    print(f"wrote a synthetic {args.kind} tree to {write_dataset_tree(args.kind, args.out, spec)}")
    return 0
