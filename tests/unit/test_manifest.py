"""The manifest contract: JSONL rows validated on load, errors naming line and field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from forgesweep.data.manifest import Manifest, ManifestRow, read_manifest, write_manifest
from forgesweep.errors import DataError, UserError


def _png(path: Path, value: int = 128, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, value, value)).save(path, format="PNG")


def _row(**over) -> dict:
    row = {"path": "frames/real_0/000.png", "label": 0, "method": "real", "dataset": "synthetic",
           "split": "train", "video_id": "real_0", "frame": 0}
    row.update(over)
    return {k: v for k, v in row.items() if v is not None}


def _good_rows() -> list[dict]:
    return [
        _row(),
        _row(path="frames/real_1/000.png", video_id="real_1", split="test"),
        _row(path="frames/df/000.png", label=1, method="Deepfakes", video_id="df", mask="masks/df/000.png"),
        _row(path="frames/df2/000.png", label=1, method="Deepfakes", video_id="df2", split="test"),
    ]


def _write_jsonl(root: Path, rows: list, files: bool = True) -> Path:
    """Write raw rows (dicts, or strings written verbatim) and, when ``files``, their frames."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in rows:
        if isinstance(row, str):
            lines.append(row)
            continue
        lines.append(json.dumps(row))
        if files:
            for field in ("path", "mask"):
                if isinstance(row.get(field), str) and not row[field].startswith("s3://"):
                    target = root / row[field]
                    if not target.exists():
                        _png(target)
    path = root / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _names(message: str, word: str) -> bool:
    """``word`` appears in ``message`` as a whole word (quoted or not)."""
    return re.search(rf"(?<![\w.]){re.escape(word)}(?![\w])", message) is not None


def _data_error(path: Path, check_files: bool = True) -> str:
    with pytest.raises(DataError) as info:
        read_manifest(path, check_files=check_files)
    message = str(info.value)
    assert "\n" not in message, f"not one line: {message!r}"
    return message


# --------------------------------------------------------------------------- round trip


def test_write_then_read_round_trip(tmp_path):
    rows = [ManifestRow.model_validate(r) for r in _good_rows()]
    for r in rows:
        _png(tmp_path / r.path)
        if r.mask:
            _png(tmp_path / r.mask, value=255)
    path = write_manifest(rows, tmp_path / "manifest.jsonl")
    assert path == tmp_path / "manifest.jsonl"

    manifest = read_manifest(path)
    assert isinstance(manifest, Manifest)
    assert manifest.rows == rows
    assert len(manifest) == 4
    assert manifest.root == tmp_path.resolve()
    assert manifest.resolve(rows[2]) == str(tmp_path.resolve() / "frames/df/000.png")
    assert manifest.resolve_mask(rows[2]) == str(tmp_path.resolve() / "masks/df/000.png")
    assert manifest.resolve_mask(rows[0]) is None
    assert manifest.methods() == ["real", "Deepfakes"]
    assert [r.path for r in manifest.select("test", ["real", "Deepfakes"])] == [
        "frames/real_1/000.png", "frames/df2/000.png"]
    assert manifest.select("train", ["Deepfakes"]) == [rows[2]]
    assert manifest.by_key("frames/df/000.png") is manifest.rows[2]
    with pytest.raises(DataError, match="nope.png"):
        manifest.by_key("nope.png")


def test_written_lines_are_json_objects_without_absent_optionals(tmp_path):
    rows = [ManifestRow.model_validate(_row(frame=None))]
    path = write_manifest(rows, tmp_path / "sub" / "m.jsonl")  # parent folders are created
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    obj = json.loads(lines[0])
    assert obj == {"path": "frames/real_0/000.png", "label": 0, "method": "real", "dataset": "synthetic",
                   "split": "train", "video_id": "real_0"}


def test_remote_and_absolute_paths_are_not_rewritten(tmp_path):
    absolute = tmp_path / "elsewhere" / "x.png"
    _png(absolute)
    path = _write_jsonl(tmp_path / "m", [
        _row(path="s3://bucket/frames/a.png", video_id="a"),
        _row(path=str(absolute), video_id="b", label=1, method="FaceSwap"),
    ], files=False)
    manifest = read_manifest(path)  # s3 paths are not checked for existence
    assert manifest.resolve(manifest.rows[0]) == "s3://bucket/frames/a.png"
    assert manifest.resolve(manifest.rows[1]) == str(absolute)


def test_blank_lines_are_skipped_but_counted(tmp_path):
    rows = _good_rows()
    path = _write_jsonl(tmp_path, [rows[0], "", "   ", _row(path="frames/x.png", video_id="x", label=2)])
    message = _data_error(path)
    assert ":4:" in message and "label" in message


# --------------------------------------------------------------------------- bad rows


def test_bad_label_names_line_and_field(tmp_path):
    rows = _good_rows()
    rows[2]["label"] = 2
    message = _data_error(_write_jsonl(tmp_path, rows))
    assert "manifest.jsonl:3:" in message
    assert _names(message, "label")


def test_missing_field_names_line_and_field(tmp_path):
    rows = _good_rows()
    del rows[1]["video_id"]
    message = _data_error(_write_jsonl(tmp_path, rows))
    assert "manifest.jsonl:2:" in message
    assert _names(message, "video_id")


def test_unknown_field_names_it(tmp_path):
    rows = _good_rows()
    rows[0]["lable"] = 1
    message = _data_error(_write_jsonl(tmp_path, rows))
    assert "manifest.jsonl:1:" in message and _names(message, "lable")


def test_bad_split_names_it(tmp_path):
    rows = _good_rows()
    rows[3]["split"] = "training"
    message = _data_error(_write_jsonl(tmp_path, rows))
    assert "manifest.jsonl:4:" in message and _names(message, "split")


def test_missing_frame_file_names_line_field_and_file(tmp_path):
    rows = _good_rows()
    path = _write_jsonl(tmp_path, rows)
    (tmp_path / "frames/real_1/000.png").unlink()
    message = _data_error(path)
    assert "manifest.jsonl:2:" in message
    assert _names(message, "path")
    assert "frames/real_1/000.png" in message
    # Without the file check the same manifest reads fine.
    assert len(read_manifest(path, check_files=False)) == 4


def test_missing_mask_file_names_the_mask_field(tmp_path):
    path = _write_jsonl(tmp_path, _good_rows())
    (tmp_path / "masks/df/000.png").unlink()
    message = _data_error(path)
    assert "manifest.jsonl:3:" in message and _names(message, "mask") and "masks/df/000.png" in message


def test_invalid_json_names_the_line(tmp_path):
    rows = _good_rows()
    path = _write_jsonl(tmp_path, [rows[0], '{"path": "frames/a.png", "label": 0,', rows[1]])
    message = _data_error(path)
    assert "manifest.jsonl:2:" in message and "JSON" in message


def test_json_that_is_not_an_object_names_the_line(tmp_path):
    rows = _good_rows()
    message = _data_error(_write_jsonl(tmp_path, [rows[0], rows[1], "[1, 2]"]))
    assert "manifest.jsonl:3:" in message


@pytest.mark.parametrize("label, method", [(1, "real"), (0, "Deepfakes")])
def test_label_contradicting_method_names_line_and_both_fields(tmp_path, label, method):
    rows = _good_rows()
    rows[1].update(label=label, method=method)
    message = _data_error(_write_jsonl(tmp_path, rows))
    assert "manifest.jsonl:2:" in message
    assert _names(message, "label") and _names(message, "method") and method in message


def test_video_in_two_splits_names_the_video_and_splits(tmp_path):
    rows = _good_rows()
    rows.append(_row(path="frames/real_0/001.png", video_id="real_0", split="test", frame=1))
    message = _data_error(_write_jsonl(tmp_path, rows))
    assert _names(message, "video_id") and "real_0" in message
    assert "train" in message and "test" in message


def test_duplicate_path_names_it(tmp_path):
    rows = _good_rows()
    rows.append(dict(rows[0]))
    message = _data_error(_write_jsonl(tmp_path, rows))
    assert _names(message, "path") and "frames/real_0/000.png" in message


def test_manifest_object_rejects_duplicates_itself():
    row = ManifestRow.model_validate(_row())
    with pytest.raises(DataError, match="more than once"):
        Manifest([row, row], Path("/tmp"))


def test_missing_and_empty_manifests(tmp_path):
    message = _data_error(tmp_path / "absent.jsonl")
    assert "absent.jsonl" in message
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert "no rows" in _data_error(empty)


def test_data_error_is_a_user_error():
    assert issubclass(DataError, UserError)


# --------------------------------------------------------------------------- atomic writes


def _rows(n: int, prefix: str = "v") -> list[ManifestRow]:
    return [ManifestRow.model_validate(_row(path=f"frames/{prefix}{i}.png", video_id=f"{prefix}{i}"))
            for i in range(n)]


def test_write_leaves_no_temporary_file(tmp_path):
    write_manifest(_rows(3), tmp_path / "manifest.jsonl")
    write_manifest(_rows(2, "w"), tmp_path / "manifest.jsonl")  # replacing an existing one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.jsonl"]
    assert [json.loads(line)["path"] for line in (tmp_path / "manifest.jsonl").read_text().splitlines()] == [
        "frames/w0.png", "frames/w1.png"]


def test_existing_manifest_is_untouched_until_the_new_one_is_complete(tmp_path):
    path = tmp_path / "manifest.jsonl"
    write_manifest(_rows(3), path)
    before = path.read_bytes()
    seen_during_write = []

    def rows():
        for i, row in enumerate(_rows(5, "new")):
            # While the new rows are produced the old manifest is still whole.
            seen_during_write.append(path.read_bytes())
            if i == 3:
                raise RuntimeError("disk full")
            yield row

    with pytest.raises(RuntimeError, match="disk full"):
        write_manifest(rows(), path)
    assert seen_during_write == [before] * 4
    assert path.read_bytes() == before


def test_failed_write_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "manifest.jsonl"
    write_manifest(_rows(3), path)

    def rows():
        yield from _rows(2, "new")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_manifest(rows(), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.jsonl"]
