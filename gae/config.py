"""The pipeline's configuration: one pydantic model, so the Prefect UI shows a form and
bad values are refused before a run starts.

Sources, later wins: a preset (`smoke`, `default`), a YAML file, `--set a.b=value`
overrides from the CLI. The resolved config is saved with every run (MLflow params and
artifact), checkpoint and Parquet file.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gae.distributed.config import ClusterConfig
from gae.estimators import Estimator
from gae.ingest import IngestConfig
from gae.models import ModelConfig
from gae.pretrain import PretrainConfig
from gae.rewards import RewardComponent, RewardConfig
from gae.rollout import RolloutConfig
from gae.shaping import ShapingConfig
from gae.train import PPOConfig


class AdvantageConfig(BaseModel):
    """How per-token advantages are estimated (advantages-spec.md)."""

    model_config = ConfigDict(extra="forbid")

    estimator: Estimator = Field(
        Estimator.GAE,
        description="Estimator by name: gae, uniform, power, grpo, dr_grpo, rloo, reinforce_plus_plus.",
    )
    gamma: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Discount. 1.0 is the LM-RLHF convention: the episode is one response.",
    )
    lam: float = Field(0.95, ge=0.0, le=1.0, description="GAE lambda (exponential weighting).")
    horizon: int | None = Field(None, ge=1, description="Horizon H for the uniform and power weightings.")
    p: float | None = Field(None, ge=0.0, description="Exponent of the power weighting, w_k ∝ k^-p.")
    bootstrap_truncated: bool = Field(
        False,
        description="Bootstrap rows cut at max_new_tokens from the critic's last value instead of treating them as terminal.",
    )
    lam_critic: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Lambda of the critic's targets (returns); None: lam. VC-PPO's decoupled GAE (arXiv "
        "2503.01491): 1.0, Monte-Carlo targets that do not bootstrap from the critic, with lam 0.95 for the policy.",
    )
    lam_schedule: Literal["fixed", "length_adaptive"] = Field(
        "fixed",
        description="The policy's lambda: fixed (lam) or length_adaptive, VAPO's 1 - 1/(length_alpha * l) "
        "per row, l its action tokens, clipped to [0, 1] (arXiv 2504.05118).",
    )
    length_alpha: float = Field(
        0.05, gt=0.0, description="alpha of the length-adaptive lambda (0.05 in VAPO)."
    )
    dynamic_sampling: Literal["off", "drop"] = Field(
        "off",
        description="DAPO's dynamic sampling for group estimators (arXiv 2503.14476): drop leaves groups whose "
        "scores are all equal (zero advantage) out of every loss, judged on the score before the overlong "
        "penalty (DAPO judges on accuracy); the dropped fraction is logged.",
    )

    @model_validator(mode="after")
    def _check_lambda_options(self) -> AdvantageConfig:
        gae_only = self.lam_critic is not None or self.lam_schedule != "fixed"
        if gae_only and self.estimator is not Estimator.GAE:
            raise ValueError(
                f"advantages.lam_critic and lam_schedule=length_adaptive are GAE's; estimator is {self.estimator.value!r}"
            )
        if self.dynamic_sampling != "off" and self.estimator.value not in ("grpo", "dr_grpo", "rloo"):
            raise ValueError(
                "advantages.dynamic_sampling filters groups of samples: use it with estimator grpo, dr_grpo or "
                f"rloo, not {self.estimator.value!r}"
            )
        return self


class RegistryConfig(BaseModel):
    """Where trained policies go in the MLflow model registry."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(
        "gae-policy",
        description="Registered model name; versions get alias `candidate`, the best `champion`.",
    )
    enabled: bool = Field(True, description="Register a version of the policy after the final iteration.")
    experiment: str = Field("gaeflow", description="MLflow experiment name.")


def _deep_update(base: dict, upd: dict) -> dict:
    out = dict(base)
    for k, v in upd.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_path(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
        if not isinstance(cur, dict):
            raise ValueError(f"--set {dotted}: {k!r} is not a section")
    cur[keys[-1]] = value


class EvalConfig(BaseModel):
    """Held-out evaluation after each iteration: the same prompts and seed every time."""

    model_config = ConfigDict(extra="forbid")

    n_prompts: int = Field(32, ge=1, description="Eval prompts (split 'eval'), a fixed seeded sample.")
    max_new_tokens: int = Field(32, ge=1, description="Generation length at evaluation.")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature at evaluation (0: greedy).")
    seed: int = Field(1234, description="Seed of the prompt sample and of sampling; fixed across iterations.")


def default_rewards() -> RewardConfig:
    """The embedded demo's reward, the seeds' two families: sentence structure (end at a
    sentence boundary, a length window) and similarity to the passage's continuation (chrF).
    Structure moves within a few PPO iterations of a small model; chrF keeps the text on topic."""
    return RewardConfig(
        components=[
            RewardComponent(name="ends_sentence", weight=0.5),
            RewardComponent(
                name="length_window", weight=0.3, options={"min_length": 6, "max_length": 24, "slack": 8}
            ),
            RewardComponent(name="chrf", weight=0.2, options={}),
        ]
    )


class PipelineConfig(BaseModel):
    """Everything `rl-pipeline` needs; each section is the config of one stage."""

    model_config = ConfigDict(extra="forbid")

    # Titles, and `position` (the order of Prefect's run form), are for the form of the
    # `rl-pipeline` deployment: the fields a run is usually changed by first, the sections
    # few runs touch last (issue 17).
    preset: str = Field(
        "default",
        title="Preset",
        description="The preset these values started from; recorded with the run. Another preset: "
        "`gae run --preset NAME`, or restart `gae serve --preset NAME` for the served deployment.",
        json_schema_extra={"position": 8},
    )
    data_dir: str | None = Field(
        None,
        title="Data directory",
        description="Where the database, Parquet store, models and MLflow store live; empty: the "
        "GAE_DATA_DIR environment variable of the process running the flow, else ./gae-data.",
        json_schema_extra={"position": 7},
    )
    run_name: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        title="Run name",
        description="Runs of one name resume each other.",
        json_schema_extra={"position": 0},
    )
    resume: bool = Field(
        True,
        title="Resume",
        description="Continue an unfinished run of the same name and config instead of starting anew.",
        json_schema_extra={"position": 6},
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", title="Device", description="auto picks CUDA when present.", json_schema_extra={"position": 4}
    )
    seed: int = Field(
        0,
        title="Seed",
        description="Seed of prompt sampling and rollouts.",
        json_schema_extra={"position": 5},
    )
    corpus: list[str] | None = Field(
        None,
        title="Corpus",
        description="Files, folders or globs to ingest; empty: the embedded default corpus.",
        json_schema_extra={"position": 1},
    )
    iterations: int = Field(
        4,
        ge=1,
        title="PPO iterations",
        description="PPO iterations.",
        json_schema_extra={"position": 2},
    )
    prompts_per_iteration: int = Field(
        32,
        ge=1,
        title="Prompts per iteration",
        description="Train prompts sampled per iteration (x rollout.n_samples rows).",
        json_schema_extra={"position": 3},
    )
    ingest: IngestConfig = Field(
        default_factory=IngestConfig,
        title="Advanced: ingest",
        description="How corpus files become documents and prompts.",
        json_schema_extra={"position": 18},
    )
    model: ModelConfig = Field(
        default_factory=lambda: ModelConfig.preset("small"),
        title="Advanced: model",
        description="Architecture of the policy and critic (saved with the weights).",
        json_schema_extra={"position": 16},
    )
    pretrain: PretrainConfig = Field(
        default_factory=lambda: PretrainConfig.preset("small"),
        title="Advanced: pretraining",
        description="Tokenizer and pretraining of the policy (cached: a run with the same corpus and "
        "values reuses it).",
        json_schema_extra={"position": 17},
    )
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig,
        title="Rollouts",
        description="Sampling of responses to the train prompts.",
        json_schema_extra={"position": 10},
    )
    rewards: RewardConfig = Field(
        default_factory=default_rewards,
        title="Rewards",
        description="The reward components and their weights.",
        json_schema_extra={"position": 9},
    )
    shaping: ShapingConfig = Field(
        default_factory=ShapingConfig,
        title="Reward shaping and KL",
        description="Where the score lands in the response, and the KL penalty to the reference policy.",
        json_schema_extra={"position": 12},
    )
    advantages: AdvantageConfig = Field(
        default_factory=AdvantageConfig,
        title="Advantages",
        description="How per-token advantages are estimated.",
        json_schema_extra={"position": 11},
    )
    ppo: PPOConfig = Field(
        default_factory=PPOConfig,
        title="PPO update",
        description="Epochs, batches, learning rates and clipping of the policy and critic update.",
        json_schema_extra={"position": 13},
    )
    eval: EvalConfig = Field(
        default_factory=EvalConfig,
        title="Evaluation",
        description="Held-out evaluation after each iteration.",
        json_schema_extra={"position": 14},
    )
    registry: RegistryConfig = Field(
        default_factory=RegistryConfig,
        title="Model registry",
        description="Where the trained policy is registered in MLflow.",
        json_schema_extra={"position": 15},
    )
    cluster: ClusterConfig = Field(
        default_factory=ClusterConfig,
        title="Advanced: cluster",
        description="Where the stages run: this process (local) or sharded over Ray workers (ray).",
        json_schema_extra={"position": 19},
    )

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        if self.advantages.estimator.needs_critic is False and self.rollout.n_samples < 2:
            raise ValueError(
                f"advantages.estimator={self.advantages.estimator.value} compares samples of one prompt: "
                "set rollout.n_samples >= 2"
            )
        if self.advantages.estimator.value in ("uniform", "power") and self.advantages.horizon is None:
            raise ValueError(
                f"advantages.estimator={self.advantages.estimator.value} needs advantages.horizon"
            )
        if self.advantages.estimator.value == "power" and self.advantages.p is None:
            raise ValueError("advantages.estimator=power needs advantages.p (the exponent of w_k ∝ k^-p)")
        if self.ppo.value_pretrain_iterations > 0 and not self.advantages.estimator.needs_critic:
            raise ValueError(
                f"ppo.value_pretrain_iterations={self.ppo.value_pretrain_iterations} fits the critic, and "
                f"advantages.estimator={self.advantages.estimator.value} uses none: set "
                "ppo.value_pretrain_iterations=0, or use estimator gae, uniform or power"
            )
        m = self.model
        if m.arch == "gpt":  # checked here, not ~10 s into a run (issue 12)
            if m.n_embd % m.n_head:
                raise ValueError(
                    f"model.n_embd={m.n_embd} is not divisible by model.n_head={m.n_head}: each attention "
                    "head gets n_embd / n_head dimensions"
                )
            for name, n in (("rollout.max_new_tokens", self.rollout.max_new_tokens),
                            ("eval.max_new_tokens", self.eval.max_new_tokens)):  # fmt: skip
                if n >= m.block_size:
                    raise ValueError(
                        f"{name}={n} leaves no room for a prompt in model.block_size={m.block_size} "
                        "(prompt + response must fit): lower it or raise model.block_size"
                    )
        return self


PRESETS: dict[str, dict] = {
    # Whole pipeline on CPU in under a minute: tests and first contact.
    "smoke": {
        "iterations": 2,
        "prompts_per_iteration": 8,
        "model": ModelConfig.preset("tiny").model_dump(),
        "pretrain": PretrainConfig.preset("tiny").model_dump(),
        "rollout": {"n_samples": 2, "max_new_tokens": 16, "batch_size": 64},
        "eval": {"n_prompts": 8, "max_new_tokens": 16},
        "ppo": {"epochs": 1, "minibatches": 1},
    },
    # The embedded demo of `make run`: under 5 minutes on a 2-core CPU, reward rising.
    "default": {},
    # VC-PPO (Yuan et al. 2025, arXiv 2503.01491) on the default pipeline: decoupled GAE (the
    # critic's targets with lambda 1, the policy's advantages with 0.95) and value pretraining
    # on the frozen initial policy (the paper pretrains for many steps at 32B; 2 iterations
    # here, 8 critic steps each: a measured vapo run took the fresh head's explained variance
    # from 0.00 to 0.04, bench/RESULTS.md); no KL term, as in the paper. Clip 0.2 and
    # token-mean, PPO's defaults, as there.
    "vc_ppo": {
        "advantages": {"estimator": "gae", "lam": 0.95, "lam_critic": 1.0},
        "ppo": {"value_pretrain_iterations": 2},
        "shaping": {"kl": {"placement": "none", "coef": 0.0}},
    },
    # VAPO (Yue et al. 2025, arXiv 2504.05118, section 4.1) on the default pipeline: VC-PPO's
    # decoupled GAE and value pretraining, plus length-adaptive lambda with alpha = 0.05 (scale
    # free: the policy's GAE horizon 1/(1 - lambda) = alpha * l is 5% of each response, at 30
    # tokens as at 3,000), clip-higher 0.2 / 0.28, token-level loss, and the positive-example
    # NLL with weight 0.1. The paper's positives are verified-correct answers; the default
    # reward here is graded, so a response counts as positive at score >= 0.8, the score of
    # ending on a sentence boundary inside the length window. No KL term, as in the paper.
    "vapo": {
        "advantages": {
            "estimator": "gae",
            "lam_critic": 1.0,
            "lam_schedule": "length_adaptive",
            "length_alpha": 0.05,
        },
        "ppo": {
            "value_pretrain_iterations": 2,
            "clip_low": 0.2,
            "clip_high": 0.28,
            "loss_agg": "token-mean",
            "positive_nll_coef": 0.1,
            "positive_score_threshold": 0.8,
        },
        "shaping": {"kl": {"placement": "none", "coef": 0.0}},
    },
}


def preset_dict(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    # A deep copy: `--set model.n_head=3` edits nested sections in place, which must not
    # change the preset for every later config built in the same process.
    return {**copy.deepcopy(PRESETS[name]), "preset": name}


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` with the value parsed as YAML (numbers, booleans, lists, null)."""
    if "=" not in item:
        raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. ppo.epochs=2")
    key, raw = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"--set {item!r}: the value is not valid YAML ({problem})") from None


def load_config(
    *,
    preset: str = "default",
    path: str | Path | None = None,
    overrides: dict | list[str] | None = None,
    values: dict | None = None,
) -> PipelineConfig:
    """Preset, then the YAML file at `path`, then overrides (a dict, or `a.b=value` strings whose
    values are parsed as YAML), then `values`: top-level fields taken as they are (the CLI's typed
    options: a run name "007" stays a string, a path with a quote stays that path)."""
    data = preset_dict(preset)
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"config file {p} does not exist")
        if p.is_dir():
            raise ValueError(
                f"config file {p} is a folder; pass a YAML file (`gae config > run.yaml` writes one)"
            )
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"config file {p} is not UTF-8 text (byte {exc.start}): pass a YAML file"
            ) from None
        except yaml.YAMLError as exc:
            raise ValueError(f"config file {p}: not valid YAML ({_yaml_problem(exc)})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{p}: a config file is a YAML mapping, got {type(loaded).__name__}")
        data = _deep_update(data, loaded)
    if isinstance(overrides, list):
        for item in overrides:
            k, v = parse_override(item)
            _set_path(data, k, v)
    elif overrides:
        data = _deep_update(data, {k: v for k, v in overrides.items() if v is not None})
    if values:
        data = _deep_update(data, {k: v for k, v in values.items() if v is not None})
    return PipelineConfig.model_validate(data)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """`line L column C: problem` of a YAML error (1-based), without its multi-line snippet."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1} column {mark.column + 1}: {problem}" if mark is not None else problem


def to_yaml(cfg: BaseModel) -> str:
    """The config as YAML with each field's description as a comment above it; `load_config(path=...)`
    reads it back to an equal config (what `gae config > run.yaml` then `gae run -c run.yaml` relies on)."""
    return "\n".join(_yaml_lines(cfg, cfg.model_dump(mode="json"), 0)) + "\n"


def _yaml_lines(model: BaseModel, values: dict, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    for name, info in type(model).model_fields.items():
        value, sub = values[name], getattr(model, name)
        if info.description:
            lines += [f"{pad}# {line}" for line in _wrap(info.description, 100 - indent)]
        if isinstance(sub, BaseModel):
            lines.append(f"{pad}{name}:")
            lines += _yaml_lines(sub, value, indent + 2)
            continue
        if _has_unprintable(value):
            # JSON is YAML (flow style): "\n", NEL and other control characters stay escaped
            import json

            lines.append(f"{pad}{name}: {json.dumps(value, ensure_ascii=True)}")
            continue
        text = yaml.safe_dump({name: value}, sort_keys=False, allow_unicode=True, width=1000).rstrip("\n")
        lines += [pad + line for line in text.split("\n")]
    return lines


def _has_unprintable(value) -> bool:
    if isinstance(value, str):
        return not value.isprintable()
    if isinstance(value, list | tuple):
        return any(_has_unprintable(v) for v in value)
    if isinstance(value, dict):
        return any(_has_unprintable(k) or _has_unprintable(v) for k, v in value.items())
    return False


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, max(40, width - 2)) or [""]
