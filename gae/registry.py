"""Trained policies in the MLflow model registry, as a pyfunc anyone can load and call.

    import mlflow
    policy = mlflow.pyfunc.load_model("models:/gae-policy@champion")
    policy.predict(["The river"], params={"max_new_tokens": 32, "temperature": 0.8, "seed": 0})

A version bundles the weights (safetensors + config.json), the tokenizer and the run's
config; `predict` takes a list of prompt strings or a DataFrame with a `prompt` column
and returns the generated continuations (gae.rollout.generate_text). Loading needs the
`gaeflow` package importable (the model's code) and the pinned `pip_requirements`; it runs
on CUDA when available, or on the device named by `GAE_DEVICE` (auto, cpu, cuda).

Aliases: every new version gets `candidate`; `champion` moves to a version only when its
eval score (mean reward on the held-out eval prompts) beats the current champion's, and is
not below the baseline it is given: the eval score of the pretrained policy its run started
from (a run that made its policy worse registers it, but does not crown it). With no champion
yet, a version that passes the baseline becomes champion. The scores are tags on the new
version (`eval_score`, `champion_eval_score` when there was a champion, `baseline_eval_score`
when there was a baseline; `promoted` and, when false, `not_promoted_reason`), so the decision
can be audited later.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

with warnings.catch_warnings():  # MLflow's own import warns about type hints of its agent classes
    warnings.simplefilter("ignore", UserWarning)
    import mlflow.pyfunc
import pandas as pd  # imported by mlflow.pyfunc already; `predict`'s type hint names it

from gae.errors import writing
from gae.paths import DataDir
from gae.tracking import DEFAULT_EXPERIMENT, ensure_experiment, get_client, tracking_uri, use_tracking_uri

DEFAULT_NAME = "gae-policy"
CANDIDATE = "candidate"
CHAMPION = "champion"
ARTIFACT_NAME = "policy"
SCORE_TAG = "eval_score"
CHAMPION_SCORE_TAG = "champion_eval_score"
BASELINE_SCORE_TAG = "baseline_eval_score"
SOURCE_TAG = "gae.source"  # "<run_id>:<iteration>": a retried registration finds its version

DEFAULT_PARAMS: dict[str, Any] = {"max_new_tokens": 64, "temperature": 1.0, "top_p": 1.0, "seed": -1}

# What the model needs at load time. Explicit on purpose: MLflow's inference of
# requirements imports and traces the model (about 4 s a call; stack-notes.md).
_RUNTIME_PACKAGES = ("torch", "tokenizers", "safetensors", "pydantic", "numpy", "pandas", "mlflow")


def pip_requirements() -> list[str]:
    """`pkg==version` of the installed runtime packages (local version tags like +cpu dropped)."""
    reqs = []
    for pkg in _RUNTIME_PACKAGES:
        try:
            v = metadata.version(pkg).split("+")[0]
            reqs.append(f"{pkg}=={v}")
        except metadata.PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def signature():
    """Input: one string column (a list of prompts, or a DataFrame whose `prompt` column is
    its only column; a *named* column spec would make MLflow refuse plain lists);
    output: generated strings; params with their defaults."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema(
            [
                ParamSpec("max_new_tokens", "long", DEFAULT_PARAMS["max_new_tokens"]),
                ParamSpec("temperature", "double", DEFAULT_PARAMS["temperature"]),
                ParamSpec("top_p", "double", DEFAULT_PARAMS["top_p"]),
                ParamSpec("seed", "long", DEFAULT_PARAMS["seed"]),
            ]
        ),
    )


def _prompts_of(model_input: Any) -> list[str]:
    import pandas as pd

    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.DataFrame):
        if "prompt" in model_input.columns:
            return [str(x) for x in model_input["prompt"].tolist()]
        if model_input.shape[1] == 1:
            return [str(x) for x in model_input.iloc[:, 0].tolist()]
        raise ValueError(
            f"predict: a DataFrame needs a `prompt` column, got columns {list(model_input.columns)}"
        )
    if isinstance(model_input, pd.Series):
        return [str(x) for x in model_input.tolist()]
    if isinstance(model_input, dict):
        p = model_input.get("prompt")
        return [p] if isinstance(p, str) else [str(x) for x in p]
    if isinstance(model_input, list | tuple):
        return [x["prompt"] if isinstance(x, dict) else str(x) for x in model_input]
    raise TypeError(
        f"predict: prompts must be a list of strings or a DataFrame, got {type(model_input).__name__}"
    )


# `predict` is annotated with pd.DataFrame, the type a loaded pyfunc model passes it (the
# signature's string column turns a list of prompts into a one-column frame). MLflow infers
# no schema from that hint and validates nothing with it (the explicit signature does), and
# without any hint it warns "Add type hints to the `predict` method" each time a process
# defines this class, i.e. at every model load (issue 17).
class GaePolicyModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: artifacts `policy` (model dir), `tokenizer` (tokenizer.json), `config`."""

    def load_context(self, context) -> None:
        from gae.device import resolve_device
        from gae.models import load_model
        from gae.tokenizer import load_tokenizer

        self.device = resolve_device(os.environ.get("GAE_DEVICE", "auto"))
        self.model = load_model(context.artifacts["policy"], device=self.device)
        self.tok = load_tokenizer(context.artifacts["tokenizer"])
        cfg = context.artifacts.get("config")
        self.config = json.loads(Path(cfg).read_text()) if cfg else {}

    def predict(self, context, model_input: pd.DataFrame, params=None):
        from gae.rollout import generate_text

        p = {**DEFAULT_PARAMS, **{k: v for k, v in (params or {}).items() if v is not None}}
        seed = int(p["seed"])
        return generate_text(
            self.model,
            self.tok,
            _prompts_of(model_input),
            max_new_tokens=int(p["max_new_tokens"]),
            temperature=float(p["temperature"]),
            top_p=float(p["top_p"]),
            seed=None if seed < 0 else seed,
            device=self.device,
        )


@dataclass
class Registration:
    name: str
    version: int
    model_uri: str
    eval_score: float
    champion_version: int | None  # the champion now (None: no version has passed the gate yet)
    champion_score: float | None  # the champion's score before this version (None: there was none)
    promoted: bool
    aliases: list[str]  # the aliases this version holds now

    def to_dict(self) -> dict:
        return asdict(self)


def _score(tags: dict, key: str = SCORE_TAG) -> float | None:
    try:
        v = float(tags[key])
    except (KeyError, TypeError, ValueError):  # absent, or "None" (there was no champion)
        return None
    return v if math.isfinite(v) else None


def update_aliases(
    client, name: str, version: int, eval_score: float, baseline_score: float | None = None
) -> tuple[bool, int | None, float | None]:
    """`candidate` -> version; `champion` -> version iff it beats the champion (or there is
    none) and its score is not below `baseline_score` (the pretrained policy's, when given).
    Returns (promoted, champion version or None, previous champion score).

    Idempotent: a retry for a version that is already champion (the first attempt promoted
    it) changes nothing and answers as the first attempt did. Its `champion_eval_score` tag,
    the audit record of the score it beat, is not rewritten: the champion is now the version
    itself, and its own score there would read as a promotion on a tie, which `>` forbids."""
    client.set_registered_model_alias(name, CANDIDATE, str(version))
    client.set_model_version_tag(name, str(version), SCORE_TAG, repr(float(eval_score)))
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # no champion yet (RESOURCE_DOES_NOT_EXIST)
        champ = None
    if champ is not None and int(champ.version) == int(version):
        # The tag was written before the alias moved (below), so a champion always has it.
        client.set_model_version_tag(name, str(version), "promoted", "true")
        return True, int(version), _score(champ.tags, CHAMPION_SCORE_TAG)
    champ_score = _score(champ.tags) if champ is not None else None
    if champ_score is not None:  # no tag at all when there was no champion to compare with
        client.set_model_version_tag(name, str(version), CHAMPION_SCORE_TAG, repr(champ_score))
    beats = champ is None or champ_score is None or (math.isfinite(eval_score) and eval_score > champ_score)
    below = baseline_score is not None and not (math.isfinite(eval_score) and eval_score >= baseline_score)
    if baseline_score is not None:
        client.set_model_version_tag(name, str(version), BASELINE_SCORE_TAG, repr(float(baseline_score)))
    if beats and not below:
        client.set_registered_model_alias(name, CHAMPION, str(version))
        client.set_model_version_tag(name, str(version), "promoted", "true")
        return True, int(version), champ_score
    client.set_model_version_tag(name, str(version), "promoted", "false")
    reason = (
        f"eval score {eval_score:.4g} is below the pretrained policy's {baseline_score:.4g}"
        if below
        else f"eval score {eval_score:.4g} does not beat the champion's {champ_score:.4g}"
    )
    client.set_model_version_tag(name, str(version), "not_promoted_reason", reason)
    return False, (int(champ.version) if champ is not None else None), champ_score


def _find_version(client, name: str, source: str):
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except Exception:
        return None
    for mv in versions:
        if mv.tags.get(SOURCE_TAG) == source:
            return mv
    return None


def log_and_register(
    model_dir: str | os.PathLike,
    name: str = DEFAULT_NAME,
    eval_score: float = float("nan"),
    *,
    tokenizer_path: str | os.PathLike | None = None,
    data_dir: DataDir | str | os.PathLike | None = None,
    mlflow_run_id: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    config: dict | None = None,
    source: str | None = None,
    tags: dict[str, str] | None = None,
    baseline_score: float | None = None,
) -> Registration:
    """Log the policy at `model_dir` as a pyfunc model, register a new version of `name`,
    and move the aliases (see the module docstring).

    Args:
        model_dir: a gae.models.save_model directory (model.safetensors + config.json).
        tokenizer_path: tokenizer.json or its directory (default: `model_dir/tokenizer.json`).
        mlflow_run_id: the pipeline's MLflow run, which the model is logged under (its
            status is kept); None logs under a new run of `experiment`.
        source: "<run_id>:<iteration>"; a second call with the same source returns the
            version the first registered (a retried task registers once).
        baseline_score: the eval score of the policy the run started from; a version below
            it does not become champion.
    """
    import mlflow

    dd = data_dir if isinstance(data_dir, DataDir) else DataDir.resolve(data_dir)
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"no model at {model_dir} (config.json missing)")
    tok = Path(tokenizer_path) if tokenizer_path is not None else model_dir / "tokenizer.json"
    if tok.is_dir():
        tok = tok / "tokenizer.json"
    if not tok.exists():
        raise FileNotFoundError(f"no tokenizer at {tok}")
    client = get_client(dd)
    uri = tracking_uri(dd)

    existing = _find_version(client, name, source) if source else None
    if existing is not None:
        mv = existing
        model_uri = f"models:/{name}/{mv.version}"
    else:
        # A full disk names the store it filled (gae.errors.writing), whichever library noticed.
        with writing(dd.mlflow_artifacts), tempfile.TemporaryDirectory(prefix="gae-register-") as tmp:
            cfg_path = Path(tmp) / "gae_config.json"
            cfg_path.write_text(json.dumps(config or {}, indent=2, default=str))
            artifacts = {"policy": str(model_dir), "tokenizer": str(tok), "config": str(cfg_path)}
            with use_tracking_uri(uri):
                # An attempt interrupted after logging the model left it in the run: finish
                # that one instead of logging another beside it (issue 12).
                logged = _reuse_logged_model(client, mlflow_run_id, source)
                if logged is not None:
                    logged_uri = logged.model_uri
                elif mlflow_run_id is not None:
                    status = client.get_run(mlflow_run_id).info.status
                    with mlflow.start_run(run_id=mlflow_run_id):
                        logged_uri = _log_model(artifacts, source).model_uri
                    if status == "RUNNING":  # leaving the `with` marked it FINISHED
                        client.update_run(mlflow_run_id, status="RUNNING")
                else:
                    exp_id = ensure_experiment(client, experiment, dd)
                    with mlflow.start_run(experiment_id=exp_id, run_name=f"register-{name}") as run:
                        mlflow_run_id = run.info.run_id
                        logged_uri = _log_model(artifacts, source).model_uri
                vtags = {SOURCE_TAG: source or "", "gae.mlflow_run_id": mlflow_run_id, **(tags or {})}
                with writing(dd.mlflow_db):
                    mv = mlflow.register_model(logged_uri, name, tags=vtags)
        model_uri = f"models:/{name}/{mv.version}"
    with writing(dd.mlflow_db):
        promoted, champ_version, champ_score = update_aliases(
            client, name, int(mv.version), float(eval_score), baseline_score
        )
    return Registration(
        name=name,
        version=int(mv.version),
        model_uri=model_uri,
        eval_score=float(eval_score),
        champion_version=champ_version,
        champion_score=champ_score,
        promoted=promoted,
        aliases=[CANDIDATE, CHAMPION] if champ_version == int(mv.version) else [CANDIDATE],
    )


def _reuse_logged_model(client, mlflow_run_id: str | None, source: str | None):
    """The model an earlier attempt of this registration logged in the run (tagged with its
    source) when it completed (READY), else None; attempts that failed or were killed mid-upload
    (FAILED, PENDING) are deleted, so a retry leaves no orphan beside the model it logs."""
    if mlflow_run_id is None or not source:
        return None
    from mlflow.entities import LoggedModelStatus

    try:
        exp_id = client.get_run(mlflow_run_id).info.experiment_id
        found = client.search_logged_models(
            experiment_ids=[exp_id],
            filter_string=f"tags.`{SOURCE_TAG}` = '{_quote(source)}' AND source_run_id = '{_quote(mlflow_run_id)}'",
            order_by=[{"field_name": "creation_time", "ascending": False}],
        )
    except Exception:  # a tracking server without logged-model search: log anew, as before
        return None
    keep = next((m for m in found if m.status == LoggedModelStatus.READY), None)
    for m in found:
        if m is not keep:
            client.delete_logged_model(m.model_id)
    return keep


def _quote(s: str) -> str:
    return str(s).replace("\\", "\\\\").replace("'", "\\'")


def _log_model(artifacts: dict[str, str], source: str | None = None):
    with warnings.catch_warnings():
        # The signature is explicit, so MLflow's hints about type hints and input examples
        # (which would trigger inference we avoid on purpose) are noise here.
        warnings.simplefilter("ignore", UserWarning)
        return _log_model_quiet(artifacts, source)


def _log_model_quiet(artifacts: dict[str, str], source: str | None = None):
    return mlflow.pyfunc.log_model(
        name=ARTIFACT_NAME,
        python_model=GaePolicyModel(),
        artifacts=artifacts,
        signature=signature(),
        pip_requirements=pip_requirements(),
        metadata={"framework": "gaeflow", "needs": "the gaeflow package importable (gae.registry)"},
        tags={SOURCE_TAG: source} if source else None,
    )


def list_versions(name: str | None = None, *, data_dir: DataDir | str | None = None) -> list[dict]:
    """Every version of `name` (or of every registered model): version, aliases, scores, run."""
    client = get_client(data_dir)
    names = [name] if name else [m.name for m in client.search_registered_models()]
    rows = []
    for n in names:
        try:
            aliases = client.get_registered_model(n).aliases  # {alias: version}
        except Exception:
            continue
        by_version: dict[str, list[str]] = {}
        for alias, v in aliases.items():
            by_version.setdefault(str(v), []).append(alias)
        for mv in client.search_model_versions(f"name = '{n}'"):
            rows.append(
                {
                    "name": n,
                    "version": int(mv.version),
                    "aliases": sorted(by_version.get(str(mv.version), [])),
                    "eval_score": _score(mv.tags),
                    "champion_eval_score": _score(mv.tags, CHAMPION_SCORE_TAG),
                    "baseline_eval_score": _score(mv.tags, BASELINE_SCORE_TAG),
                    "source": mv.tags.get(SOURCE_TAG) or "",
                    "run_id": mv.run_id,
                    "created": mv.creation_timestamp,
                }
            )
    return sorted(rows, key=lambda r: (r["name"], -r["version"]))


def load_policy(model: str = f"{DEFAULT_NAME}@{CHAMPION}", *, data_dir: DataDir | str | None = None):
    """`mlflow.pyfunc.load_model("models:/<model>")` on the data directory's store.
    `model` is `name@alias`, `name/version`, or a full `models:/...` / `runs:/...` URI."""
    import mlflow

    uri = model if ":/" in model else f"models:/{model}"
    dd = data_dir if isinstance(data_dir, DataDir) else DataDir.resolve(data_dir)
    with use_tracking_uri(tracking_uri(dd)):
        return mlflow.pyfunc.load_model(uri)
