"""Atomic writes: whole-file replacement, and the permissions a plain `open()` would give."""

from __future__ import annotations

import os
import stat

import pytest

from gae import fsutil
from gae.fsutil import atomic_dir, atomic_path, atomic_write_bytes, atomic_write_json, current_umask


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    """Run under an explicit umask, restored afterwards (the umask is process-wide)."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_umask_is_read_and_left_unchanged(umask, monkeypatch, tmp_path):
    assert current_umask() == umask and current_umask() == umask
    # Without /proc (not Linux): the set-and-restore fallback gives the same answer and
    # puts the umask back.
    monkeypatch.setattr(fsutil, "_PROC_STATUS", str(tmp_path / "no-such-file"))
    assert current_umask() == umask
    assert os.umask(umask) == umask  # still in force


def test_files_get_the_mode_a_plain_open_gives(tmp_path, umask):
    # mkstemp makes 0600 files and the rename keeps the mode: state.json, Parquet and
    # checkpoints would be owner-only. Expected: 0666 & ~umask, e.g. 0644 under 022,
    # 0640 under 027, 0664 under 002.
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    expected = 0o666 & ~umask
    assert _mode(plain) == expected  # the reference: what open() does here
    a = atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    j = atomic_write_json(tmp_path / "sub" / "s.json", {"k": 1})
    assert (_mode(a), _mode(j)) == (expected, expected)
    assert a.read_bytes() == b"\x00\x01" and j.read_text() == '{\n  "k": 1\n}\n'
    # Replacing an existing file also yields the default mode (an owner-only file left by
    # an earlier write is repaired, not kept).
    os.chmod(a, 0o600)
    atomic_write_bytes(a, b"new")
    assert _mode(a) == expected and a.read_bytes() == b"new"


def test_directories_get_the_mode_a_plain_mkdir_gives(tmp_path, umask):
    # mkdtemp makes 0700 directories; expected 0777 & ~umask (0755 under 022).
    plain = tmp_path / "plain"
    plain.mkdir()
    expected = 0o777 & ~umask
    assert _mode(plain) == expected
    with atomic_dir(tmp_path / "model") as d:
        (d / "w.bin").write_bytes(b"1")
    assert _mode(tmp_path / "model") == expected
    assert _mode(tmp_path / "model" / "w.bin") == 0o666 & ~umask
    with atomic_dir(tmp_path / "model") as d:  # a swap over an existing directory too
        (d / "w.bin").write_bytes(b"2")
    assert _mode(tmp_path / "model") == expected and (tmp_path / "model" / "w.bin").read_bytes() == b"2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "plain"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    p = atomic_write_bytes(tmp_path / "f.json", b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(p) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert p.read_bytes() == b"old" and [x.name for x in tmp_path.iterdir()] == ["f.json"]
