"""The data directory: one place per project for the DuckDB file, Parquet, models,
checkpoints and the MLflow store.

Resolution order: an explicit argument (`--data-dir`), then `GAE_DATA_DIR`, then
`./gae-data`. Nothing is created on import; `DataDir.ensure()` makes the folders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = "gae-data"
ENV_VAR = "GAE_DATA_DIR"


def resolve_data_dir(path: str | os.PathLike | None = None) -> Path:
    raw = path if path not in (None, "") else os.environ.get(ENV_VAR) or DEFAULT_DATA_DIR
    return Path(raw).expanduser().resolve()


@dataclass(frozen=True)
class DataDir:
    """Where everything of a project lives. Layout:

    gae.duckdb                      documents, prompts, ingest_errors; views over Parquet
    tokens/run_id=R/iteration=I/    one row per token (Parquet, zstd)
    rollouts/run_id=R/iteration=I/  one row per sequence (Parquet, zstd)
    models/<key>/                   tokenizer.json, base policy (safetensors + config.json)
    runs/<run_id>/                  checkpoints and per-iteration staging files
    mlflow.db, mlartifacts/         MLflow tracking and registry (embedded default)
    """

    root: Path

    @classmethod
    def resolve(cls, path: str | os.PathLike | None = None) -> DataDir:
        return cls(resolve_data_dir(path))

    @property
    def db(self) -> Path:
        return self.root / "gae.duckdb"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def rollouts(self) -> Path:
        return self.root / "rollouts"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

    def iteration_dir(self, run_id: str, iteration: int) -> Path:
        """Staging files of one iteration (rollout batch, rewards, advantages)."""
        return self.run_dir(run_id) / f"iter-{iteration:05d}"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def lock(self) -> Path:
        return self.root / ".writer.lock"

    def ensure(self) -> DataDir:
        for p in (self.root, self.tokens, self.rollouts, self.models, self.runs, self.mlflow_artifacts):
            p.mkdir(parents=True, exist_ok=True)
        return self
