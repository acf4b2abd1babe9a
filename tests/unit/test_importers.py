"""Dataset importers over synthetic FF++/DFD, Celeb-DF v2, DFDC-preview and folder trees.

Every bad-input case (missing split file, split id naming no video, corrupt and empty videos,
label contradictions, missing metadata) is checked both ways: without ``skip_bad`` the import
stops with each item's path and reason and writes nothing; with it the items are skipped and
counted in the report.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from forgesweep.data.importers import IMPORTERS, BadInput, build_importer, run_import
from forgesweep.data.manifest import read_manifest
from forgesweep.data.synthetic.dataset_trees import TreeSpec, write_dataset_tree
from forgesweep.errors import DataError, UserError

METHODS = ["Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"]
SPEC = TreeSpec(seed=1, frames_per_video=2, frame_size=48, face_size=32, ffpp_pairs=3, dfd_actors=3,
                celebdf_identities=3, youtube_reals=2, dfdc_identities=3)


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("trees")
    return {kind: write_dataset_tree(kind, base / kind, SPEC) for kind in ("ffpp", "celebdf", "dfdc")}


@pytest.fixture()
def copy(trees, tmp_path):
    """A private copy of a tree that a test may damage."""

    def make(kind: str) -> Path:
        return Path(shutil.copytree(trees[kind], tmp_path / kind))

    return make


def _problems(exc: BadInput) -> list[tuple[str, str]]:
    return [(p.path, p.reason) for p in exc.problems]


# ----------------------------------------------------------------------------- FaceForensics++


def test_ffpp_pairs_share_a_split_and_fakes_carry_masks(trees, tmp_path):
    out = tmp_path / "ffpp" / "videos.jsonl"
    result = run_import("ffpp", trees["ffpp"], out)
    manifest = read_manifest(out)  # checks every video and mask exists
    rows = manifest.rows
    assert len(rows) == 6 + 6 * len(METHODS) and result.report.total == len(rows)
    assert {r.dataset for r in rows} == {"FF++"}
    split_of = {r.video_id.rsplit("/", 1)[1]: r.split for r in rows if r.method == "real"}
    pairs = {s: json.loads((trees["ffpp"] / f"splits/{s}.json").read_text()) for s in ("train", "val", "test")}
    for split, members in pairs.items():
        for a, b in members:
            assert split_of[a] == split_of[b] == split
    for r in rows:
        if r.label == 1:
            target, source = r.video_id.rsplit("/", 1)[1].split("_")
            assert r.split == split_of[target] == split_of[source]
            assert r.mask is not None and r.mask.endswith(f"masks/videos/{target}_{source}.mp4")
            assert r.video_id == f"FF++/{r.method}/{target}_{source}"
        else:
            assert r.mask is None and r.video_id.startswith("FF++/original/")
    counts = result.report.counts
    assert counts[("real", "train")] == 2 and counts[("Deepfakes", "val")] == 2 and counts[("FaceSwap", "test")] == 2
    table = result.report.format()
    assert "NeuralTextures" in table and "train" in table and f"{6 * len(METHODS)} with masks" in table
    report = json.loads((tmp_path / "ffpp" / "videos.import.json").read_text())
    assert report["videos"] == len(rows) and report["counts"]["real"] == {"train": 2, "val": 2, "test": 2}


def test_ffpp_method_subset_and_unknown_compression(trees):
    result = run_import("ffpp", trees["ffpp"], options={"methods": ["Face2Face"]})
    assert {r.method for r in result.rows} == {"real", "Face2Face"}
    with pytest.raises(DataError, match=r"compression c40: original_sequences/youtube/c40/videos/ is missing "
                                        r"\(compressions present: c23\)"):
        run_import("ffpp", trees["ffpp"], options={"compression": "c40"})
    with pytest.raises(DataError, match="method 'FaceShifter' has no manipulated_sequences/FaceShifter/c23/videos"):
        run_import("ffpp", trees["ffpp"], options={"methods": ["FaceShifter"]})


def test_ffpp_missing_split_file(copy, tmp_path):
    root = copy("ffpp")
    (root / "splits" / "val.json").unlink()
    out = tmp_path / "out.jsonl"
    with pytest.raises(BadInput) as info:
        run_import("ffpp", root, out)
    problems = _problems(info.value)
    assert (str(root / "splits" / "val.json"), problems[0][1]) == problems[0] and "missing split file" in problems[0][1]
    # The val pair's 2 reals and 2 fakes per method have no split now.
    no_split = [p for p in problems if "in no split file (val.json missing)" in p[1]]
    assert len(no_split) == 2 + 2 * len(METHODS)
    assert "pass --skip-bad" in str(info.value) and not out.exists()
    result = run_import("ffpp", root, out, skip_bad=True)
    assert not any(r.split == "val" for r in result.rows) and len(result.rows) == 4 + 4 * len(METHODS)
    assert len(result.report.skipped) == 1 + len(no_split) and out.is_file()


def test_ffpp_split_ids_naming_no_video(copy):
    root = copy("ffpp")
    test = json.loads((root / "splits" / "test.json").read_text())
    (root / "splits" / "test.json").write_text(json.dumps(test + [["098", "099"]]))
    with pytest.raises(BadInput) as info:
        run_import("ffpp", root)
    named = [p for p in _problems(info.value) if "pair ['098', '099']" in p[1]]
    assert len(named) == 2 + 2 * len(METHODS)
    assert named[0][0] == str(root / "splits" / "test.json") and "original_sequences/youtube/c23/videos/098.mp4" in named[0][1]
    result = run_import("ffpp", root, skip_bad=True)
    assert len(result.rows) == 6 + 6 * len(METHODS) and len(result.report.skipped) == len(named)


def test_ffpp_malformed_split_file_is_fatal(copy):
    root = copy("ffpp")
    (root / "splits" / "train.json").write_text('[["000"]]')
    with pytest.raises(DataError, match=r"train.json: expected a JSON list of \[\"A\", \"B\"\] id pairs"):
        run_import("ffpp", root, skip_bad=True)
    (root / "splits" / "train.json").write_text("[not json")
    with pytest.raises(DataError, match="train.json: not valid JSON"):
        run_import("ffpp", root)


def test_corrupt_and_empty_videos(copy, tmp_path):
    root = copy("ffpp")
    garbage = root / "original_sequences/youtube/c23/videos/000.mp4"
    empty = root / "manipulated_sequences/Face2Face/c23/videos/002_003.mp4"
    garbage.write_bytes(b"this is not an mp4 container" * 10)
    empty.write_bytes(b"")
    out = tmp_path / "m.jsonl"
    out.write_text("previous manifest\n")
    with pytest.raises(BadInput) as info:
        run_import("ffpp", root, out)
    problems = dict(_problems(info.value))
    assert problems[str(empty)] == "empty file (0 bytes)"
    assert problems[str(garbage)].startswith("decord cannot open it")
    assert out.read_text() == "previous manifest\n"  # nothing already written is touched
    result = run_import("ffpp", root, out, skip_bad=True)
    paths = {r.path for r in result.rows}
    assert str(garbage) not in paths and str(empty) not in paths and len(result.report.skipped) == 2
    assert len(read_manifest(out)) == 6 + 6 * len(METHODS) - 2
    # Without the decord probe only the empty file is caught (preprocessing catches the rest).
    unchecked = run_import("ffpp", root, skip_bad=True, check_videos=False)
    assert str(garbage) in {r.path for r in unchecked.rows}


# ----------------------------------------------------------------------------- DFD


def test_dfd_splits_by_actor(trees):
    result = run_import("dfd", trees["ffpp"])
    rows = result.rows
    assert {r.dataset for r in rows} == {"DFD"} and {r.method for r in rows} == {"real", "DeepFakeDetection"}
    actor_split = {}
    for r in rows:
        actor = r.video_id.rsplit("/", 1)[1][:2]
        assert actor_split.setdefault(actor, r.split) == r.split  # an actor's videos share a split
    assert actor_split == {"01": "train", "02": "val", "03": "test"}
    assert all(r.mask for r in rows if r.label == 1)


# ----------------------------------------------------------------------------- Celeb-DF v2


def test_celebdf_test_list(trees):
    result = run_import("celebdf", trees["celebdf"])
    by_id = {r.video_id: r for r in result.rows}
    assert len(by_id) == 3 + 3 + 2 and {r.dataset for r in result.rows} == {"CDF2"}
    assert by_id["CDF2/Celeb-real/id2_0000"].split == "test"
    assert by_id["CDF2/Celeb-synthesis/id2_id0_0000"].split == "test"
    assert by_id["CDF2/Celeb-synthesis/id2_id0_0000"].method == "Celeb-synthesis"
    assert by_id["CDF2/YouTube-real/00001"].split == "test" and by_id["CDF2/YouTube-real/00000"].split == "train"
    assert {r.split for r in result.rows} == {"train", "test"}
    with_val = run_import("celebdf", trees["celebdf"], options={"val_fraction": 0.5})
    assert "val" in {r.split for r in with_val.rows}


def test_celebdf_missing_list_and_bad_entries(copy):
    root = copy("celebdf")
    listing = (root / "List_of_testing_videos.txt").read_text()
    (root / "List_of_testing_videos.txt").unlink()
    with pytest.raises(BadInput) as info:
        run_import("celebdf", root)
    assert _problems(info.value)[0][1].startswith("missing split file")
    with pytest.raises(DataError, match="no videos to import"):
        run_import("celebdf", root, skip_bad=True)  # every video's split is unknown
    # A wrong label and an entry naming no video.
    lines = listing.replace("1 Celeb-real/id2_0000.mp4", "0 Celeb-real/id2_0000.mp4") + "1 Celeb-real/id9_0000.mp4\n"
    (root / "List_of_testing_videos.txt").write_text(lines)
    with pytest.raises(BadInput) as info:
        run_import("celebdf", root)
    reasons = [r for _, r in _problems(info.value)]
    assert any("labels 'Celeb-real/id2_0000.mp4' fake, but it is in Celeb-real/" in r for r in reasons)
    assert any("names 'Celeb-real/id9_0000.mp4'" in r and "does not exist" in r for r in reasons)
    result = run_import("celebdf", root, skip_bad=True)
    assert len(result.report.skipped) == 2 and "CDF2/Celeb-real/id2_0000" not in {r.video_id for r in result.rows}
    (root / "List_of_testing_videos.txt").write_text("real Celeb-real/id0_0000.mp4\n")
    with pytest.raises(DataError, match=r"List_of_testing_videos.txt:1: expected '<1 real \| 0 fake>"):
        run_import("celebdf", root, skip_bad=True)


# ----------------------------------------------------------------------------- DFDC preview


def test_dfdc_preview_metadata(trees):
    result = run_import("dfdc", trees["dfdc"])
    rows = result.rows
    assert {r.dataset for r in rows} == {"DFDC-P"} and {r.method for r in rows} == {"real", "method_A", "method_B"}
    assert len(rows) == 9 and {r.split for r in rows} == {"train", "test"}
    index = json.loads((trees["dfdc"] / "dataset.json").read_text())
    for r in rows:
        rel = r.path[len(str(trees["dfdc"])) + 1:]
        assert index[rel]["set"] == r.split and r.video_id == "DFDC-P/" + rel[:-4]


def test_dfdc_missing_metadata_unknown_entries_and_undescribed_videos(copy):
    root = copy("dfdc")
    index = json.loads((root / "dataset.json").read_text())
    first = sorted(index)[0]
    index["method_A/0000/ghost.mp4"] = {"label": "fake", "set": "train"}
    index[first]["label"] = "maybe"
    (root / "dataset.json").write_text(json.dumps(index))
    stray = root / "method_B" / "stray.mp4"
    shutil.copy(root / first, stray)
    with pytest.raises(BadInput) as info:
        run_import("dfdc", root)
    problems = _problems(info.value)
    assert any("'method_A/0000/ghost.mp4' names no video" in r for _, r in problems)
    assert any(f"entry {first!r}: label 'maybe'" in r for _, r in problems)
    assert (str(stray), "no metadata entry describes this video (dataset.json)") in problems
    assert len(run_import("dfdc", root, skip_bad=True).rows) == 8
    (root / "dataset.json").unlink()
    with pytest.raises(BadInput, match="missing split file"):
        run_import("dfdc", root)


# ----------------------------------------------------------------------------- folder layout


def test_folder_layout(trees, tmp_path):
    root = tmp_path / "my-data"
    videos = sorted((trees["ffpp"] / "original_sequences/youtube/c23/videos").glob("*.mp4"))
    fakes = sorted((trees["ffpp"] / "manipulated_sequences/Deepfakes/c23/videos").glob("*.mp4"))
    for i, v in enumerate(videos):
        dest = root / "GAN" / "real" / ("test" if i < 2 else "") / v.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(v, dest)
    for f in fakes:
        dest = root / "GAN" / "fake" / "clips" / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    (root / "GAN" / "fake" / "notes.txt").write_text("x")
    (root / "README.md").write_text("x")
    result = run_import("folder", root, options={"val_fraction": 0.0, "test_fraction": 0.5})
    rows = result.rows
    assert {r.dataset for r in rows} == {"my-data"} and {r.method for r in rows} == {"real", "GAN"}
    assert len(rows) == len(videos) + len(fakes)
    tested = {r.video_id for r in rows if r.split == "test"}
    assert {f"my-data/GAN/real/test/{v.stem}" for v in videos[:2]} <= tested
    assert {r.split for r in rows if r.label == 1} <= {"train", "test"}
    assert {p.path for p in result.report.ignored} == {str(root / "GAN/fake/notes.txt"), str(root / "README.md")}
    again = run_import("folder", root, options={"val_fraction": 0.0, "test_fraction": 0.5})
    assert [r.split for r in again.rows] == [r.split for r in rows]  # hash splits are stable
    named = run_import("folder", root, options={"dataset_name": "custom"})
    assert {r.dataset for r in named.rows} == {"custom"}


def test_registry_and_options_are_checked(trees):
    assert IMPORTERS.names() == ["celebdf", "dfd", "dfdc", "ffpp", "folder"]
    with pytest.raises(UserError, match="unknown dataset importer 'ff'; known: celebdf, dfd, dfdc, ffpp, folder"):
        build_importer("ff")
    with pytest.raises(DataError, match="importer 'celebdf': option compression: unknown key"):
        run_import("celebdf", trees["celebdf"], options={"compression": "c23"})
    with pytest.raises(DataError, match="not a Celeb-DF v2 root"):
        run_import("celebdf", trees["dfdc"])
    with pytest.raises(DataError, match="dataset root not found"):
        run_import("ffpp", "/no/such/root")


def test_import_from_s3(trees, s3_env, tmp_path):
    """An s3:// root: listed with list_objects_v2, rows point at s3:// URIs; the manifest goes to S3 too."""
    s3 = s3_env.client()
    s3.create_bucket(Bucket="datasets")
    root = trees["celebdf"]
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        s3.upload_file(str(path), "datasets", f"Celeb-DF-v2/{path.relative_to(root).as_posix()}")
    result = run_import("celebdf", "s3://datasets/Celeb-DF-v2", "s3://datasets/manifests/cdf2.jsonl")
    assert len(result.rows) == 8 and all(r.path.startswith("s3://datasets/Celeb-DF-v2/") for r in result.rows)
    local = run_import("celebdf", root)
    assert [r.split for r in result.rows] == [r.split for r in local.rows]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="datasets", Prefix="manifests/")["Contents"]}
    assert keys == {"manifests/cdf2.jsonl", "manifests/cdf2.import.json"}
    s3.delete_object(Bucket="datasets", Key="Celeb-DF-v2/List_of_testing_videos.txt")
    with pytest.raises(BadInput, match="s3://datasets/Celeb-DF-v2/List_of_testing_videos.txt: missing split file"):
        run_import("celebdf", "s3://datasets/Celeb-DF-v2")


# ----------------------------------------------------------------------------- command line


def _cli(argv: list[str]) -> int:
    import argparse

    from forgesweep.data import cli

    parser = argparse.ArgumentParser(prog="forgesweep")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    assert args.command in cli.COMMANDS
    return cli.run(args)


def test_cli_import_preprocess_flags_and_synth_tree(trees, tmp_path, capsys):
    out = tmp_path / "cdf2.jsonl"
    assert _cli(["import", "celebdf", str(trees["celebdf"]), "--out", str(out), "--val-fraction", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "CDF2 (celebdf)" in printed and f"wrote 8 videos to {out}" in printed and len(read_manifest(out)) == 8
    assert _cli(["import", "celebdf", str(trees["celebdf"]), "--out", str(out), "--compression", "c23"]) == 2
    assert "error: importer 'celebdf': option compression: unknown key" in capsys.readouterr().err
    assert _cli(["import", "ffpp", str(trees["celebdf"]), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "not a FaceForensics++ root" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()
    assert _cli(["preprocess", str(out), "--out", str(tmp_path / "f"), "--num-frames", "0"]) == 2
    assert "error: preprocess: num_frames: Input should be greater than or equal to 1" in capsys.readouterr().err
    assert _cli(["synth-tree", "celebdf", "--out", str(tmp_path / "tree"), "--frames", "1", "--frame-size", "32",
                 "--face-size", "16"]) == 0
    assert (tmp_path / "tree" / "List_of_testing_videos.txt").is_file()
