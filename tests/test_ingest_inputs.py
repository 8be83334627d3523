"""Inputs as users name them: paths whose name holds glob characters. Runtime ~1 s."""

from __future__ import annotations

from gae.ingest import resolve_inputs


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
