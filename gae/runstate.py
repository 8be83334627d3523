"""Where a pipeline run stands, so a rerun of the same command resumes it.

`<data-dir>/runs/<run_name>.state.json` names the current run of a run name: its run id,
MLflow run id, the config hash, the last iteration whose checkpoint and store partitions
are complete, and whether it finished. An iteration counts as done only when its
checkpoint is written *and* its Parquet partitions are published; the state file is
updated last, atomically, so a crash at any point leaves the previous iteration as the
resume point.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from gae.fsutil import atomic_write_json


def config_hash(config: dict) -> str:
    """Hash of the settings that make two runs the same run (a resume must not mix them)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class RunState:
    run_name: str
    run_id: str
    config_hash: str
    mlflow_run_id: str | None = None
    last_completed_iteration: int = -1
    status: str = "running"  # running | finished | failed
    started_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    updated_at: str = ""
    history: list[dict] = field(default_factory=list)  # one summary per completed iteration

    @staticmethod
    def path(runs_dir: Path, run_name: str) -> Path:
        return Path(runs_dir) / f"{run_name}.state.json"

    @classmethod
    def load(cls, runs_dir: Path, run_name: str) -> RunState | None:
        p = cls.path(runs_dir, run_name)
        if not p.exists():
            return None
        return cls.read(p)

    @classmethod
    def read(cls, path: Path) -> RunState:
        """The state in `path`; a file that is not one raises a ValueError naming it."""
        fix = "`gae doctor --fix` moves it to quarantine/ (the run then starts anew)"
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"run state {path} is not UTF-8 text (byte {e.start}); {fix}") from None
        except json.JSONDecodeError as e:
            raise ValueError(
                f"run state {path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); {fix}"
            ) from None
        if not isinstance(data, dict):
            raise ValueError(f"run state {path} holds a JSON {type(data).__name__}, not an object; {fix}")
        names = {f.name for f in fields(cls)}
        missing = sorted(n for n in ("run_name", "run_id", "config_hash") if n not in data)
        unknown = sorted(set(data) - names)
        problems = ([f"lacks {', '.join(missing)}"] if missing else []) + (
            [f"has unknown fields {', '.join(unknown)}"] if unknown else []
        )
        if problems:
            raise ValueError(f"run state {path} {' and '.join(problems)}; {fix}")
        return cls(**data)

    def save(self, runs_dir: Path) -> None:
        self.updated_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        atomic_write_json(self.path(runs_dir, self.run_name), asdict(self))


def start_or_resume(
    runs_dir: Path, run_name: str, cfg_hash: str, *, resume: bool = True
) -> tuple[RunState, bool]:
    """The run to work on: the unfinished run of this name with the same config (resumed),
    or a new one. Returns (state, resumed)."""
    prev = RunState.load(runs_dir, run_name)
    if resume and prev is not None and prev.status != "finished" and prev.config_hash == cfg_hash:
        prev.status = "running"
        return prev, True
    run_id = f"{run_name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    return RunState(run_name=run_name, run_id=run_id, config_hash=cfg_hash), False
