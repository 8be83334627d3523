"""CSV records carry the line of the file where they start, quoted fields spanning lines included, and
quarantined CSV rows the same line (not DuckDB's row count); one row with an unbalanced quote is
quarantined without changing how the others are read. Runtime ~7 s."""

from __future__ import annotations

import gzip

import pytest

from gae.db import connect
from gae.ingest import IngestConfig, ingest
from gae.ingest.csv_reader import _csv_record_lines

# Lines of the file (CRLF ends; the quoted fields hold LF and CRLF newlines):
#  1 id,text                      header
#  2 1,"First row starts here,    a field over lines 2-4, with a doubled quote on line 3
#  3 it says ""hello""
#  4 and ends here."
#  5                              blank
#  6 2,"bad \xff row"               invalid UTF-8 (DuckDB's row 4: header, row 1, blank, this)
#  7 3,Second row is on one line.
#  8 4,x,y                         too many columns (DuckDB's row 6)
#  9                              blank
# 10                              blank
# 11 5,"Third row, two lines:
# 12 the end."
# 13 6,Fourth row closes the file.
CSV = (
    b'id,text\r\n1,"First row starts here,\nit says ""hello""\r\nand ends here."\r\n\r\n'
    b'2,"bad \xff row"\r\n3,Second row is on one line.\r\n4,x,y\r\n\r\n\r\n'
    b'5,"Third row, two lines:\nthe end."\r\n6,Fourth row closes the file.\r\n'
)


@pytest.mark.parametrize("name", ["m.csv", "m.csv.gz"])
def test_csv_rows_carry_their_line(tmp_path, name):
    f = tmp_path / name
    f.write_bytes(gzip.compress(CSV) if name.endswith(".gz") else CSV)
    s = ingest([f], data_dir=tmp_path / "d", options=IngestConfig(make_prompts=False))
    assert (s.records, s.inserted, s.quarantined_by_reason) == (6, 4, {"invalid_utf8": 1, "malformed_csv": 1})
    con = connect(tmp_path / "d", read_only=True)
    try:
        docs = con.execute("select line, record, text from documents order by line").fetchall()
        errs = con.execute("select line, reason from ingest_errors order by line").fetchall()
    finally:
        con.close()
    assert docs == [
        (2, 1, 'First row starts here,\nit says "hello"\r\nand ends here.'),
        (7, 2, "Second row is on one line."),
        (11, 3, "Third row, two lines:\nthe end."),
        (13, 4, "Fourth row closes the file."),
    ]
    assert errs == [(6, "invalid_utf8"), (8, "malformed_csv")]


def test_record_lines_by_hand(tmp_path):
    f = tmp_path / "a.csv"
    # records start on lines 1, 2 (over 2-3), 4 (blank), 5; BOM and no final newline
    f.write_bytes(b'\xef\xbb\xbfh\n"a\nb"\n\nc')
    lines, blank = _csv_record_lines(f)
    assert lines.tolist() == [1, 2, 4, 5] and blank.tolist() == [False, False, True, False]


def test_csv_dialect_not_modelled_leaves_lines_null(tmp_path):
    # single quotes as the quote character: the double-quote scan would count 3 records where DuckDB
    # reads 2 rows, so the lines stay null rather than wrong
    f = tmp_path / "q.csv"
    f.write_bytes(b"id;text\n1;'one\ntwo'\n2;'three four'\n")
    s = ingest([f], data_dir=tmp_path / "d", options=IngestConfig(make_prompts=False))
    con = connect(tmp_path / "d", read_only=True)
    try:
        rows = con.execute("select line, text from documents order by record").fetchall()
    finally:
        con.close()
    assert s.inserted == 2 and rows == [(None, "one\ntwo"), (None, "three four")]


@pytest.mark.parametrize("delim", [",", ";", "\t"])
@pytest.mark.parametrize("gz", [False, True])
def test_unbalanced_quote_does_not_unquote_the_whole_file(tmp_path, delim, gz):
    # One row opens a quote it never closes. DuckDB's sniffer, given free rein, then picks a dialect
    # without quotes, and every good quoted field holding the delimiter or a newline is cut into
    # pieces ('"First record' / ' spanning', 'two lines. Yes."'). With the double quote pinned the
    # good rows stay whole and the bad one is quarantined at its line; the quote it opens runs to the
    # end of the file, so the row after it goes with it into the quarantine.
    #  1 text,other
    #  2 "First record, spanning       one record over lines 2-3, holding the delimiter and a newline
    #  3 two lines. Yes.",a
    #  4 Second record here fine.,b
    #  5 "bad quote here,c,d,e         unterminated quote: lines 5-6 are one rejected record
    #  6 Third record is okay.,f
    d = delim
    csv = (
        f'text{d}other\n"First record{d} spanning\ntwo lines. Yes."{d}a\nSecond record here fine.{d}b\n'
        f'"bad quote here{d}c{d}d{d}e\nThird record is okay.{d}f\n'
    ).encode()
    f = tmp_path / ("t.csv.gz" if gz else "t.csv")
    f.write_bytes(gzip.compress(csv) if gz else csv)
    s = ingest([f], data_dir=tmp_path / "d", options=IngestConfig(make_prompts=False))
    con = connect(tmp_path / "d", read_only=True)
    try:
        docs = con.execute("select line, text from documents order by line").fetchall()
        errs = con.execute("select line, reason from ingest_errors order by line").fetchall()
    finally:
        con.close()
    assert docs == [(2, f"First record{d} spanning\ntwo lines. Yes."), (4, "Second record here fine.")]
    assert errs == [(5, "malformed_csv")]
    assert (s.records, s.inserted, s.quarantined) == (3, 2, 1)


def test_csv_without_double_quotes_keeps_a_sniffed_delimiter(tmp_path):
    # no double quote anywhere: the dialect is DuckDB's to sniff, pipe delimiter included
    f = tmp_path / "p.csv"
    f.write_bytes(b"id|text\n1|First row, with a comma.\n2|Second row.\n")
    s = ingest([f], data_dir=tmp_path / "d", options=IngestConfig(make_prompts=False))
    con = connect(tmp_path / "d", read_only=True)
    try:
        rows = con.execute("select line, text from documents order by line").fetchall()
    finally:
        con.close()
    assert s.quarantined == 0 and rows == [(2, "First row, with a comma."), (3, "Second row.")]


def test_csv_backslash_escaped_quotes_are_still_sniffed(tmp_path):
    # quotes escaped with a backslash, not doubled: the escape stays the sniffer's to find
    f = tmp_path / "b.csv"
    f.write_bytes(b'text,other\n"he said \\"hi\\", twice",a\n"plain, two",b\n')
    s = ingest([f], data_dir=tmp_path / "d", options=IngestConfig(make_prompts=False))
    con = connect(tmp_path / "d", read_only=True)
    try:
        rows = con.execute("select text from documents order by text").fetchall()
    finally:
        con.close()
    assert s.quarantined == 0 and rows == [('he said "hi", twice',), ("plain, two",)]
