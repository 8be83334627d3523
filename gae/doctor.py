"""`gae doctor`: check a data directory, and with `fix` move what is broken aside.

What is checked (issue 12):

- database: `gae.duckdb` opens, and its schema is at the version the code expects;
- store: every Parquet part of `tokens/` and `rollouts/` decodes (every page, not only the
  footer), and each (run, iteration) has both parts with the same rollout ids;
- orphans: `.tmp-*` and `.old-*` files and folders left by a writer that was killed
  (`gae.fsutil` builds under those names and renames into place);
- run states: every `runs/*.state.json` parses; a "running" state with no live writer is
  reported as interrupted (rerunning the same command resumes it);
- lock: a holder record in `.writer.lock` whose process no longer holds the lock.

`fix` never deletes: broken files move to `<data-dir>/quarantine/<UTC time>/` under their
relative path, with `NOTE.md` (and `note.json`) saying what each was and why it moved.
Pending migrations are applied and a stale lock record is cleared (its content goes into
the note). Afterwards the views read, and new runs start; a quarantined database is
rebuilt by the next `gae ingest` or `gae run` from the corpus.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gae.paths import DataDir

QUARANTINE = "quarantine"


@dataclass
class Finding:
    """One problem found in a data directory (or, with ok=True, one check that passed)."""

    check: str  # database, migrations, store, orphan, run_state, lock
    path: str
    problem: str
    remedy: str = ""  # what `fix` does about it ("" when it cannot)
    ok: bool = False
    severity: str = "error"  # error: something fails because of it; warning: worth knowing
    fixed: str = ""  # what `fix` did
    with_paths: list[str] = field(default_factory=list)  # moved together with `path`

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Report:
    data_dir: str
    findings: list[Finding] = field(default_factory=list)
    quarantine: str | None = None

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    @property
    def unresolved(self) -> list[Finding]:
        return [f for f in self.problems if f.severity == "error" and not f.fixed]

    def to_dict(self) -> dict:
        return {
            "data_dir": self.data_dir,
            "healthy": not self.unresolved,
            "quarantine": self.quarantine,
            "findings": [f.to_dict() for f in self.findings],
        }


def _dd(data_dir) -> DataDir:
    return data_dir if isinstance(data_dir, DataDir) else DataDir.resolve(data_dir)


# ---------------------------------------------------------------- checks


def check(data_dir=None) -> Report:
    """Every check on `data_dir`; nothing is changed."""
    from gae.lock import is_held, read_holder

    dd = _dd(data_dir)
    _require(dd)
    return _check(dd, live=is_held(dd.lock), holder=read_holder(dd.lock))


def _require(dd: DataDir) -> None:
    if not dd.root.is_dir():
        raise FileNotFoundError(f"no data directory at {dd.root} (pass --data-dir, or run `gae run` first)")


def _check(dd: DataDir, *, live: bool, holder: dict) -> Report:
    report = Report(str(dd.root))
    report.findings += _check_database(dd)
    report.findings += _check_store(dd)
    report.findings += _check_orphans(dd, live)
    report.findings += _check_run_states(dd, live, holder)
    report.findings += _check_lock(dd, live, holder)
    return report


def _check_database(dd: DataDir) -> list[Finding]:
    from gae.db import UnreadableDatabase, connect, schema_files, schema_version

    if not dd.db.exists():
        return [
            Finding("database", str(dd.db), "no database yet (`gae ingest` or `gae run` creates it)", ok=True)
        ]
    try:
        con = connect(dd, read_only=True, views=False, upgrade=False)
    except UnreadableDatabase as exc:
        return [
            Finding("database", str(dd.db), exc.detail, "move it to quarantine/; `gae ingest` rebuilds it")
        ]
    except RuntimeError as exc:  # held by a running writer: it opens, for that process
        return [Finding("database", str(dd.db), str(exc), severity="warning")]
    try:
        try:
            have = schema_version(con)
        except Exception as exc:  # noqa: BLE001 - a database without our bookkeeping table
            return [Finding("migrations", str(dd.db), f"no schema_migrations table ({exc})", "")]
    finally:
        con.close()
    want = max(v for v, _, _ in schema_files())
    out = [Finding("database", str(dd.db), "opens", ok=True)]
    if have < want:
        out.append(
            Finding(
                "migrations", str(dd.db), f"schema at version {have}, this code expects {want}", "apply them"
            )
        )
    elif have > want:
        out.append(
            Finding(
                "migrations",
                str(dd.db),
                f"schema at version {have}, newer than this code's {want}: written by a newer gaeflow",
                "",
            )
        )
    else:
        out.append(Finding("migrations", str(dd.db), f"schema at version {have}", ok=True))
    return out


def _check_store(dd: DataDir) -> list[Finding]:
    """One finding per (run, iteration) partition that has a problem. An iteration is written
    as a pair (tokens, then its rollouts: gae.store.write_iteration), so a broken part takes
    its partner to quarantine with it: the store then holds whole iterations only."""
    from gae.store import TABLES
    from gae.store_views import check_part, parts

    found: dict[Path, dict[str, Path]] = {}  # partition (run_id=R/iteration=I) -> {table: part}
    broken: dict[Path, list[str]] = {}
    n = 0
    for table in TABLES:
        root = getattr(dd, table)
        for p in parts(dd, table):
            n += 1
            rel = p.parent.relative_to(root)
            found.setdefault(rel, {})[table] = p
            reason = check_part(p, full=True)
            if reason is not None:
                broken.setdefault(rel, []).append(f"{p}: {reason}")
    out: list[Finding] = []
    for rel in sorted(found):
        pair = found[rel]
        paths = sorted(
            (str(p) for p in pair.values()),
            key=lambda p: not any(b.startswith(p) for b in broken.get(rel, [])),
        )
        first, *others = paths  # the broken part first
        if rel in broken:
            problem = f"unreadable Parquet part ({'; '.join(broken[rel])})"
            remedy = "move the iteration's parts to quarantine/"
        elif len(pair) == 1:
            (have,) = pair
            lack = "rollouts" if have == "tokens" else "tokens"
            problem, remedy = f"{have} part without its {lack} part", "move it to quarantine/"
        else:
            problem, remedy = (
                _pair_problem(pair["tokens"], pair["rollouts"]),
                "move both parts to quarantine/",
            )
            if problem is None:
                continue
        out.append(Finding("store", first, problem, remedy, with_paths=others))
    if not out:
        out.append(
            Finding("store", f"{dd.tokens}, {dd.rollouts}", f"{n} parts read in full, paired", ok=True)
        )
    return out


def _pair_problem(tokens: Path, rollouts: Path) -> str | None:
    """Why a tokens part and its rollouts part disagree, or None: the same set of rollout ids."""
    import pyarrow.parquet as pq

    t_ids = set(pq.read_table(tokens, columns=["rollout_id"]).column(0).to_pylist())
    r_ids = set(pq.read_table(rollouts, columns=["rollout_id"]).column(0).to_pylist())
    if t_ids == r_ids:
        return None
    only_t, only_r = sorted(t_ids - r_ids), sorted(r_ids - t_ids)
    return (
        f"tokens and rollouts parts disagree: {len(only_t)} rollout ids only in tokens "
        f"{only_t[:3]}, {len(only_r)} only in rollouts {only_r[:3]}"
    )


def orphans(dd: DataDir) -> list[Path]:
    """`.tmp-*` / `.old-*` files and folders under the data directory (outside quarantine/),
    outermost only: what a writer killed between creating and renaming leaves."""
    out: list[Path] = []
    for root, dirs, files in os.walk(dd.root):
        here = Path(root)
        if here == dd.root and QUARANTINE in dirs:
            dirs.remove(QUARANTINE)
        for name in list(dirs):
            if name.startswith((".tmp-", ".old-")):
                out.append(here / name)
                dirs.remove(name)  # its contents go with it
        out += [here / f for f in files if f.startswith((".tmp-", ".old-"))]
    return sorted(out)


def _check_orphans(dd: DataDir, live: bool) -> list[Finding]:
    if live:  # a running writer's temporaries are work in progress, not orphans
        return [
            Finding("orphan", str(dd.root), "not checked: a run holds the data directory", severity="warning")
        ]
    found = [
        Finding("orphan", str(p), "left by a writer that was killed before renaming it", "move it to quarantine/",
                severity="warning")
        for p in orphans(dd)
    ]  # fmt: skip
    return found or [Finding("orphan", str(dd.root), "no .tmp-* or .old-* leftovers", ok=True)]


def _check_run_states(dd: DataDir, live: bool, holder: dict) -> list[Finding]:
    from gae.runstate import RunState

    out: list[Finding] = []
    for p in sorted(dd.runs.glob("*.state.json")) if dd.runs.is_dir() else []:
        try:
            st = RunState.read(p)
        except ValueError as exc:
            out.append(
                Finding("run_state", str(p), str(exc).split("; `gae doctor")[0], "move it to quarantine/")
            )
            continue
        if st.status == "running" and not live:
            pid = f" (pid {holder['pid']} not running)" if holder.get("pid") else ""
            out.append(
                Finding(
                    "run_state",
                    str(p),
                    f"run {st.run_id} was interrupted{pid} after iteration {st.last_completed_iteration}; "
                    "rerun the same command to resume it",
                    severity="warning",
                )
            )
    return out or [Finding("run_state", str(dd.runs), "every run state parses", ok=True)]


def _check_lock(dd: DataDir, live: bool, holder: dict) -> list[Finding]:
    from gae.lock import describe_holder

    if live:
        return [Finding("lock", str(dd.lock), f"held by {describe_holder(holder)}", ok=True)]
    if holder:
        return [
            Finding(
                "lock",
                str(dd.lock),
                f"records {describe_holder(holder)}, which no longer holds it (killed)",
                "clear the record",
                severity="warning",
            )
        ]
    return [Finding("lock", str(dd.lock), "free", ok=True)]


# ---------------------------------------------------------------- fix


def fix(data_dir=None) -> Report:
    """Check, then act on every finding with a remedy, under the writer lock (so no run writes
    meanwhile; a running one makes this fail at once, naming it). Moved files keep their path
    relative to the data directory under `quarantine/<time>/`; NOTE.md and note.json there list
    each one and why."""
    from gae.lock import read_holder, writer_lock

    dd = _dd(data_dir)
    _require(dd)
    holder = read_holder(dd.lock)  # the record before ours replaces it
    with writer_lock(dd.lock, what="gae doctor --fix"):
        report = _check(dd, live=False, holder=holder)
        qdir = dd.root / QUARANTINE / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        moved: list[dict] = []
        for f in report.problems:
            if not f.remedy:
                continue
            if f.check == "migrations":
                from gae.db import connect

                connect(dd, views=False).close()  # a read-write connection applies them
                f.fixed = "migrations applied"
            elif f.check == "lock":
                # writer_lock truncates the record when this block ends: that clears it.
                moved.append({"path": f.path, "reason": f.problem, "record": json.dumps(holder)})
                f.fixed = "record cleared (the lock itself was free)"
            else:
                paths = [Path(f.path), *map(Path, f.with_paths)]
                if f.check == "database":
                    paths.append(Path(str(dd.db) + ".wal"))
                for p in paths:
                    if p.exists():
                        _move(dd, p, qdir)
                        moved.append(
                            {"path": str(p), "reason": f.problem, "now": str(qdir / p.relative_to(dd.root))}
                        )
                f.fixed = f"moved to {qdir}"
        if moved:
            _write_note(qdir, moved)
            report.quarantine = str(qdir)
    return report


def _move(dd: DataDir, path: Path, qdir: Path) -> None:
    dest = qdir / path.relative_to(dd.root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(dest))


def _write_note(qdir: Path, moved: list[dict]) -> None:
    from gae.fsutil import atomic_write_bytes, atomic_write_json

    qdir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(qdir / "note.json", {"moved_by": "gae doctor --fix", "items": moved})
    lines = [
        "# Moved here by `gae doctor --fix`",
        "",
        "Nothing was deleted. Each item, where it was, and why:",
        "",
    ]
    for m in moved:
        lines.append(f"- `{m['path']}`: {m['reason']}")
    lines += ["", "Move an item back to its path to restore it as it was.", ""]
    atomic_write_bytes(qdir / "NOTE.md", "\n".join(lines).encode())


# ---------------------------------------------------------------- before a run


def preflight(data_dir, run_name: str) -> None:
    """What `gae run` checks before starting Prefect: the database opens (and is migrated) and
    the run state of `run_name` parses. Each failure is one error naming the file and the fix."""
    from gae.db import connect
    from gae.runstate import RunState

    dd = _dd(data_dir)
    connect(dd, views=False).close()
    RunState.load(dd.runs, run_name)


def summary_lines(report: Report) -> list[str]:
    """One line per finding for the terminal: `ok`, `warning` or `error`, check, path, problem,
    and what --fix does or did."""
    out = []
    for f in report.findings:
        tag = "ok" if f.ok else f.severity
        tail = f" -> {f.fixed}" if f.fixed else (f" (--fix: {f.remedy})" if f.remedy and not f.ok else "")
        out.append(f"{tag:<7} {f.check:<10} {f.path}: {f.problem}{tail}")
    return out


def note_path(report: Report) -> Path | None:
    return Path(report.quarantine) / "NOTE.md" if report.quarantine else None


def as_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2)
