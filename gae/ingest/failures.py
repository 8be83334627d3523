"""What stops a file and what stops an ingest (issue 12, items 4 and 5).

A file that cannot be read (a truncated or corrupt gzip stream, a permission error, a file gone since
it was listed) is quarantined whole, one `unreadable` row with no line, and the rest of the input is
still read. A failure to write (a full disk, a database error) aborts the ingest: the file being
written is rolled back, the ingest is recorded as failed, and the error is one line naming the
database and what to do. A cleanup that fails after it (DuckDB refuses a rollback once a failed
commit has ended the transaction) never replaces the error that caused it.
"""

from __future__ import annotations

import os
import zlib

from gae import errors


class IngestAborted(RuntimeError):
    """The ingest stopped: the file it was writing kept none of its rows, files committed before it stay.
    Rerunning the same command is safe (an ingest is idempotent)."""


class DiskFull(errors.DiskFull, IngestAborted):
    """The disk (or quota) holding the database is full: gae.errors.DiskFull (an OSError with errno ENOSPC
    naming the database, which the CLI prints as it is) with what the ingest had stored, and an
    IngestAborted like any other abort."""

    def __init__(self, path: str | os.PathLike, detail: str = "", message: str | None = None):
        super().__init__(path, detail)
        if message:
            self.strerror = message

    def __reduce__(self):  # pickled by Prefect with a failed task's state
        return (type(self), (self.filename, self.detail, self.strerror))


class ReadFailed(Exception):
    """A reader could not read its file (`cause`): the file is quarantined whole."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


def is_disk_full(exc: BaseException) -> bool:
    """A full disk or exhausted quota, whichever library reported it (`gae.errors.as_disk_full`)."""
    return errors.as_disk_full(exc) is not None


def is_read_failure(exc: BaseException) -> bool:
    """An exception reading an input file that makes that file unreadable, not the ingest: a truncated or
    corrupt gzip stream (pyarrow's OSError, zlib.error, EOFError), a permission error, a file that went
    away since it was listed. A full disk is never one: writing is what failed."""
    return isinstance(exc, (OSError, EOFError, zlib.error)) and not is_disk_full(exc)


def describe(exc: BaseException) -> str:
    """An exception as one line (DuckDB's messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def abort_error(
    exc: Exception, *, database: str, source: str | None, stored: int, total: int
) -> IngestAborted:
    """The one-line error for an ingest stopped by `exc` while writing `source` (None: before the first
    file or after the last), after `stored` of `total` files were committed."""
    kept = f"{stored} of {total} files were stored before it"
    lost = f", none of {source}'s rows were kept" if source else ""
    if is_disk_full(exc):
        return DiskFull(
            database,
            describe(exc),
            f"no space left on the disk of {database} ({describe(exc)}); {kept}{lost}. Free space there "
            "and rerun the same command: files already stored add nothing",
        )
    if source:
        return IngestAborted(
            f"{source}: ingest failed and none of its rows were kept ({kept}; rerun the same command once "
            f"fixed: files already stored add nothing): {describe(exc)}"
        )
    return IngestAborted(
        f"{database}: ingest failed ({kept}; rerun the same command once fixed): {describe(exc)}"
    )
