"""Inputs as users name them: JSON lines saved as .json with a long first record, folders whose name
holds a space, CJK or glob characters, and hidden folders inside a folder. Runtime ~3 s."""

from __future__ import annotations

import json

import pytest

from gae.ingest import IngestConfig, ingest, resolve_inputs
from gae.ingest.readers import _json_kind


def test_json_lines_with_a_long_first_record_are_lines(tmp_path):
    # Three records of ~99 KB each: the first line is longer than any fixed peek (64 KiB), so a kind
    # decided on a truncated first line would read the file as one document and quarantine it whole.
    recs = [{"text": f"Record {i}. " + "word " * 19_800} for i in range(3)]
    body = "".join(json.dumps(r) + "\n" for r in recs)
    assert len(body.split("\n", 1)[0]) > 1 << 16
    (tmp_path / "big.json").write_text(body)
    assert _json_kind(tmp_path / "big.json") == "lines"
    s = ingest([tmp_path / "big.json"], data_dir=tmp_path / "d", options=IngestConfig(make_prompts=False))
    assert (s.records, s.inserted, s.quarantined) == (3, 3, 0)


def test_json_kind_of_a_pretty_object_and_one_line_files(tmp_path):
    pretty = tmp_path / "p.json"
    pretty.write_text(json.dumps({"text": "One pretty-printed object. " * 4000}, indent=2))
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"text": "One object on one line, no newline at the end."}))
    arr = tmp_path / "a.json"
    arr.write_text("\n  [" + json.dumps({"text": "x"}) + "]")
    assert [_json_kind(p) for p in (pretty, one, arr)] == ["object", "lines", "array"]
    s = ingest([pretty, one, arr], data_dir=tmp_path / "d", options=IngestConfig(make_prompts=False))
    assert (s.records, s.inserted, s.quarantined) == (3, 3, 0)


@pytest.mark.parametrize("folder", ["my docs", "中文", "100% sure"])
def test_small_text_files_in_a_folder_whose_name_needs_quoting(tmp_path, folder):
    # Small text files share one transaction; their sizes were read back from percent-encoded URIs
    # (file:///.../my%20docs/a.txt), which name no file, after the commit.
    d = tmp_path / folder
    d.mkdir()
    (d / "a.txt").write_text("The first small document. It has two sentences.\n")
    (d / "b.txt").write_text("The second small document, a little longer. Two sentences here too.\n")
    s = ingest([d], data_dir=tmp_path / "data", options=IngestConfig(make_prompts=False))
    assert (s.files, s.inserted) == (2, 2)
    # sizes by hand: 48 and 68 bytes (ASCII, one newline each)
    assert sorted(fs.bytes for fs in s.sources) == [48, 68]
    assert all(fs.source.startswith("file://") for fs in s.sources)


def test_existing_path_with_glob_characters_is_taken_literally(tmp_path):
    d = tmp_path / "data [2024]"
    d.mkdir()
    (d / "a.txt").write_text("x")
    (tmp_path / "what?.txt").write_text("y")
    (tmp_path / "star*.txt").write_text("z")
    files, _ = resolve_inputs([d])
    assert files == [(d / "a.txt").resolve()]
    files, _ = resolve_inputs([str(tmp_path / "what?.txt"), str(tmp_path / "star*.txt")])
    assert files == [(tmp_path / "what?.txt").resolve(), (tmp_path / "star*.txt").resolve()]
    # a pattern naming no existing path is still a glob: [2] matches the one-character name "2"
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "2.txt").write_text("w")
    files, _ = resolve_inputs([str(tmp_path / "g" / "[0-9].txt")])
    assert files == [(tmp_path / "g" / "2.txt").resolve()]


def test_files_in_hidden_folders_are_skipped_unless_named(tmp_path):
    root = tmp_path / "repo"
    for rel in ["a.txt", ".venv/lib/b.txt", ".pytest_cache/v/c.md", "sub/.git/d.txt", "sub/e.txt", ".f.txt"]:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("text")
    files, skipped = resolve_inputs([root])
    assert files == [(root / "a.txt").resolve(), (root / "sub" / "e.txt").resolve()] and skipped == []
    # a hidden folder named by the user is read (its own hidden parts still are not)
    files, _ = resolve_inputs([root / ".venv"])
    assert files == [(root / ".venv" / "lib" / "b.txt").resolve()]
    # the folder given may itself sit under a hidden folder: only the parts below it count
    files, _ = resolve_inputs([root / ".venv" / "lib"])
    assert files == [(root / ".venv" / "lib" / "b.txt").resolve()]
    # a glob: hidden parts below the fixed part of the pattern are skipped like a folder's
    files, _ = resolve_inputs([str(root / "**" / "*.txt")])
    assert files == [(root / "a.txt").resolve(), (root / "sub" / "e.txt").resolve()]
