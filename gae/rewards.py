"""Sequence rewards: a registry of components selected by name, combined by weights.

Each component maps a batch of rollouts to one float per sequence. Every component is kept
as its own column (`ScoreTable.components`), so the store can show which part of a reward
moved; `ScoreTable.total` is their weighted sum. Shaping into per-token rewards (where the
score lands, KL) is `gae.shaping`'s job, not this module's.

    cfg = RewardConfig(components=[
        {"name": "chrf", "weight": 0.7},
        {"name": "ends_sentence", "weight": 0.3},
        {"name": "sql", "column": "polite", "options": {"expression": "response ilike '%please%'"}},
    ])
    table = score_batch(batch, cfg)          # table.total (B,), table.components["chrf"] (B,)

Components (options in brackets, defaults in the function signatures below):
- reference similarity, in [0, 1]: `bleu` and `chrf` through sacrebleu [tokenize, ...];
  `rouge_l` (LCS F-measure) and `unigram_f1` (SQuAD-style multiset overlap) over lower-cased
  words with Chinese/Japanese characters split one per character. A missing reference
  scores 0.
- structure: `ends_sentence` (1 if the response ends with . ! ? or 。！？, closing quotes and
  brackets allowed after it); `length_window` [min_length, max_length, unit, slack];
  `distinct_n` [n]: distinct n-grams / n-grams, 1.0 = no repetition (Li et al. 2016).
- verifiable: `exact_match` [lowercase]; `regex` [pattern, extract]; `python`
  [function="module:function"] (a name containing ":" works too).
- `sql` [expression]: a DuckDB expression evaluated over an in-memory table `rollouts`
  with columns rollout_id, prompt_id, prompt, response, reference, response_length and
  finish_reason; booleans become 1.0/0.0 and NULL becomes 0.0.
"""

from __future__ import annotations

import importlib
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

# ---------------------------------------------------------------------------------------
# config


class RewardComponent(BaseModel):
    """One term of the reward: `weight * component(rollouts, **options)`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="A built-in component (bleu, chrf, rouge_l, unigram_f1, ends_sentence, length_window, "
        "distinct_n, exact_match, regex, python, sql) or a callable 'module:function'."
    )
    weight: float = Field(default=1.0, description="Multiplier of this column in the total score.")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword options of the component.")
    column: str | None = Field(
        default=None,
        description="Column name in the score table and the store (default: the name); needed "
        "when one component is used twice.",
    )

    @property
    def column_name(self) -> str:
        return self.column or self.name.replace(":", "_").replace(".", "_")


class RewardConfig(BaseModel):
    """The reward of a run: a weighted sum of named components."""

    model_config = ConfigDict(extra="forbid")

    components: list[RewardComponent] = Field(
        default_factory=lambda: [RewardComponent(name="chrf")],
        description="Components summed with their weights; each is also kept as its own column.",
    )
    overlong_buffer: int | None = Field(
        None,
        ge=1,
        description="DAPO's soft overlong punishment: the last this many tokens before rollout.max_new_tokens "
        "lose reward linearly (gae.shaping.overlong_penalty), kept as the component `overlong`. None: off.",
    )
    overlong_penalty: float = Field(
        1.0, ge=0, description="Reward lost at the length limit under overlong_buffer (1 in DAPO)."
    )

    @model_validator(mode="after")
    def _check(self) -> RewardConfig:
        if not self.components:
            raise ValueError("RewardConfig.components is empty: a reward needs at least one component")
        seen: set[str] = set()
        for i, c in enumerate(self.components):
            if c.name not in REWARDS and ":" not in c.name:
                raise ValueError(
                    f"RewardConfig.components[{i}].name={c.name!r} is not a reward; "
                    f"valid: {sorted(REWARDS)} or 'module:function'"
                )
            if c.name == "sql":  # refused before a run starts, not at its first scoring
                try:
                    sql(RewardInputs.from_texts([]), **{"expression": None, **c.options})
                except (TypeError, ValueError) as e:
                    raise ValueError(f"RewardConfig.components[{i}] {e}") from None
            col = c.column_name
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", col):
                raise ValueError(f"RewardConfig.components[{i}] column {col!r} must be an identifier")
            if col in seen:
                raise ValueError(
                    f"RewardConfig.components[{i}]: column {col!r} is used twice; set `column` to tell them apart"
                )
            seen.add(col)
        return self


# ---------------------------------------------------------------------------------------
# inputs and outputs


@dataclass
class RewardInputs:
    """The text side of a batch, all lists of length B (what rewards need, no tensors)."""

    prompts: list[str]
    responses: list[str]
    references: list[str | None]
    finish_reasons: list[str]
    response_lengths: list[int]
    rollout_ids: list[str]
    prompt_ids: list[str]

    @classmethod
    def from_batch(cls, batch) -> RewardInputs:
        return cls(
            prompts=list(batch.prompts),
            responses=list(batch.responses),
            references=list(batch.references),
            finish_reasons=list(batch.finish_reasons),
            response_lengths=[int(x) for x in batch.response_length.tolist()],
            rollout_ids=list(batch.rollout_ids),
            prompt_ids=list(batch.prompt_ids),
        )

    @classmethod
    def from_texts(
        cls,
        responses: Sequence[str],
        references: Sequence[str | None] | None = None,
        prompts: Sequence[str] | None = None,
        finish_reasons: Sequence[str] | None = None,
        response_lengths: Sequence[int] | None = None,
    ) -> RewardInputs:
        """Convenience for tests and notebooks; lengths default to the word-token count."""
        n = len(responses)
        return cls(
            prompts=list(prompts) if prompts is not None else [""] * n,
            responses=list(responses),
            references=list(references) if references is not None else [None] * n,
            finish_reasons=list(finish_reasons) if finish_reasons is not None else ["eos"] * n,
            response_lengths=list(response_lengths)
            if response_lengths is not None
            else [len(tokenize(r)) for r in responses],
            rollout_ids=[str(i) for i in range(n)],
            prompt_ids=[str(i) for i in range(n)],
        )

    def __len__(self) -> int:
        return len(self.responses)


@dataclass
class ScoreTable:
    """Scores of one batch: `total` (B,) float32 and one (B,) float32 tensor per component."""

    total: torch.Tensor
    components: dict[str, torch.Tensor]
    weights: dict[str, float]

    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (atomically); component names and weights go in its metadata."""
        import json

        from safetensors.torch import save_file

        from gae.fsutil import atomic_path

        tensors = {"total": self.total.contiguous()}
        tensors.update({f"component.{k}": v.contiguous() for k, v in self.components.items()})
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"weights": json.dumps(self.weights)})
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> ScoreTable:
        import json

        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            weights = json.loads((f.metadata() or {}).get("weights", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        comps = {k.removeprefix("component."): v for k, v in tensors.items() if k.startswith("component.")}
        # Keep the configured column order (safetensors sorts keys).
        order = [k for k in weights if k in comps] + [k for k in comps if k not in weights]
        return cls(total=tensors["total"], components={k: comps[k] for k in order}, weights=weights)


# ---------------------------------------------------------------------------------------
# tokenisation shared by ROUGE-L, unigram F1 and distinct-n

# Han ideographs (the basic block, extensions A to I, compatibility ideographs and their
# supplement), kana: scripts written without spaces, so one character is one token (the usual
# practice for Chinese ROUGE).
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f\U00031350-\U000323af"
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")
_HAS_CJK = re.compile(rf"[{_CJK}]")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens; CJK characters one per token; punctuation dropped."""
    return _TOKEN_RE.findall(text.lower())


def has_cjk(text: str | None) -> bool:
    return bool(text) and _HAS_CJK.search(text) is not None


# ---------------------------------------------------------------------------------------
# registry

RewardFn = Callable[..., list[float]]
REWARDS: dict[str, RewardFn] = {}


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register a batch-level component `fn(inputs: RewardInputs, **options) -> list[float]`."""

    def deco(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered")
        REWARDS[name] = fn
        return fn

    return deco


def _per_sample(fn: Callable[..., float], inputs: RewardInputs, **options) -> list[float]:
    return [fn(r, ref, **options) for r, ref in zip(inputs.responses, inputs.references, strict=True)]


# --- reference similarity


def _sacrebleu_tokenize(tokenize: str, response: str, reference: str) -> str:
    if tokenize != "auto":
        return tokenize
    # sacrebleu's 'zh' tokenizer splits Chinese characters and keeps 13a rules for the rest.
    return "zh" if has_cjk(reference) or has_cjk(response) else "13a"


@register("bleu")
def bleu(inputs: RewardInputs, *, tokenize: str = "auto", smooth_method: str = "exp") -> list[float]:
    """Sentence BLEU / 100 (Papineni et al. 2002) with effective order, so short sentences
    that match exactly score 1 instead of 0 for lack of 4-grams."""
    from sacrebleu.metrics import BLEU

    cache: dict[str, Any] = {}
    out = []
    for resp, ref in zip(inputs.responses, inputs.references, strict=True):
        if ref is None:
            out.append(0.0)
            continue
        tok = _sacrebleu_tokenize(tokenize, resp, ref)
        if tok not in cache:
            cache[tok] = BLEU(tokenize=tok, smooth_method=smooth_method, effective_order=True)
        out.append(cache[tok].sentence_score(resp, [ref]).score / 100.0)
    return out


@register("chrf")
def chrf(inputs: RewardInputs, *, char_order: int = 6, word_order: int = 0, beta: int = 2) -> list[float]:
    """Sentence chrF / 100 (Popović 2015); `word_order=2` gives chrF++. Character n-grams
    need no word segmentation, so it works for Chinese as is."""
    from sacrebleu.metrics import CHRF

    metric = CHRF(char_order=char_order, word_order=word_order, beta=beta)
    return [
        0.0 if ref is None else metric.sentence_score(resp, [ref]).score / 100.0
        for resp, ref in zip(inputs.responses, inputs.references, strict=True)
    ]


def _lcs_length(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _rouge_l(response: str, reference: str | None, *, beta: float = 1.0) -> float:
    if reference is None:
        return 0.0
    hyp, ref = tokenize(response), tokenize(reference)
    if not hyp or not ref:
        return float(hyp == ref)
    lcs = _lcs_length(hyp, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(hyp), lcs / len(ref)
    return (1 + beta**2) * p * r / (r + beta**2 * p)


@register("rouge_l")
def rouge_l(inputs: RewardInputs, *, beta: float = 1.0) -> list[float]:
    """ROUGE-L F-measure (Lin 2004): LCS over tokens; beta=1 weighs precision and recall equally."""
    return _per_sample(_rouge_l, inputs, beta=beta)


def _unigram_f1(response: str, reference: str | None) -> float:
    if reference is None:
        return 0.0
    hyp, ref = tokenize(response), tokenize(reference)
    if not hyp or not ref:
        return float(hyp == ref)
    common = sum((Counter(hyp) & Counter(ref)).values())
    if common == 0:
        return 0.0
    p, r = common / len(hyp), common / len(ref)
    return 2 * p * r / (p + r)


@register("unigram_f1")
def unigram_f1(inputs: RewardInputs) -> list[float]:
    """Token-overlap F1 as in SQuAD's evaluation (Rajpurkar et al. 2016), counts clipped."""
    return _per_sample(_unigram_f1, inputs)


# --- structure

_SENTENCE_END = re.compile(r"[.!?。！？][\"'”’)\]）」』]*\s*$")


@register("ends_sentence")
def ends_sentence(inputs: RewardInputs) -> list[float]:
    """1.0 when the response ends at a sentence boundary (. ! ? 。！？), else 0.0."""
    return [1.0 if _SENTENCE_END.search(r) else 0.0 for r in inputs.responses]


@register("length_window")
def length_window(
    inputs: RewardInputs,
    *,
    min_length: int = 1,
    max_length: int = 64,
    unit: str = "tokens",
    slack: int = 0,
) -> list[float]:
    """1.0 inside [min_length, max_length], falling linearly to 0 over `slack` units outside
    (slack 0: a hard window). unit: 'tokens' (generated tokens, EOS included), 'words'
    (word/CJK-character tokens) or 'chars'."""
    if unit not in ("tokens", "words", "chars"):
        raise ValueError(f"length_window: unit must be 'tokens', 'words' or 'chars', got {unit!r}")
    if min_length > max_length:
        raise ValueError(f"length_window: min_length={min_length} > max_length={max_length}")
    if unit == "tokens":
        lengths = inputs.response_lengths
    elif unit == "words":
        lengths = [len(tokenize(r)) for r in inputs.responses]
    else:
        lengths = [len(r) for r in inputs.responses]
    out = []
    for n in lengths:
        dist = max(min_length - n, n - max_length, 0)
        out.append(1.0 if dist == 0 else max(0.0, 1.0 - dist / slack) if slack > 0 else 0.0)
    return out


def _distinct_n(response: str, reference: str | None, *, n: int = 2) -> float:
    toks = tokenize(response)
    grams = [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


@register("distinct_n")
def distinct_n(inputs: RewardInputs, *, n: int = 2) -> list[float]:
    """Distinct n-grams over n-grams of the response (Li et al. 2016): 1.0 without repetition,
    towards 0 as it loops. A response shorter than n has no n-gram and scores 1.0."""
    if n < 1:
        raise ValueError(f"distinct_n: n must be >= 1, got {n}")
    return _per_sample(_distinct_n, inputs, n=n)


# --- verifiable


def _normalise(text: str, lowercase: bool) -> str:
    text = " ".join(text.split())
    return text.lower() if lowercase else text


@register("exact_match")
def exact_match(inputs: RewardInputs, *, lowercase: bool = False) -> list[float]:
    """1.0 when the response equals the reference after collapsing whitespace."""
    return [
        float(ref is not None and _normalise(r, lowercase) == _normalise(ref, lowercase))
        for r, ref in zip(inputs.responses, inputs.references, strict=True)
    ]


@register("regex")
def regex(inputs: RewardInputs, *, pattern: str | None = None, extract: bool = False) -> list[float]:
    """Three uses:
    - `pattern` alone: 1.0 when it matches anywhere in the response (format checks);
    - `pattern` and `extract=True`: the first match's group 1 (or whole match) must equal
      the reference after whitespace normalisation (answer extraction, e.g. '#### (\\d+)');
    - no `pattern`: the reference is the pattern and must match the whole stripped response.
    """
    compiled = re.compile(pattern) if pattern is not None else None
    out = []
    for r, ref in zip(inputs.responses, inputs.references, strict=True):
        if compiled is None:
            out.append(float(ref is not None and re.fullmatch(ref, r.strip()) is not None))
        elif extract:
            m = compiled.search(r)
            got = None if m is None else (m.group(1) if compiled.groups else m.group(0))
            out.append(
                float(
                    ref is not None and got is not None and _normalise(got, False) == _normalise(ref, False)
                )
            )
        else:
            out.append(float(compiled.search(r) is not None))
    return out


def load_callable(spec: str) -> Callable:
    """'package.module:function' -> the function (imported, never eval'd)."""
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ValueError(f"python reward: expected 'module:function', got {spec!r}")
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"python reward {spec!r}: cannot import module {mod_name!r}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"python reward {spec!r}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"python reward {spec!r} is not callable")
    return obj


@register("python")
def python(inputs: RewardInputs, *, function: str, batched: bool = False, **kwargs) -> list[float]:
    """A user's callable. Per sample (default): `f(prompt=, response=, reference=, **kwargs) -> float`;
    batched: `f(prompts=, responses=, references=, **kwargs) -> sequence of B floats`."""
    fn = load_callable(function)
    if batched:
        return list(
            fn(prompts=inputs.prompts, responses=inputs.responses, references=inputs.references, **kwargs)
        )
    return [
        fn(prompt=p, response=r, reference=ref, **kwargs)
        for p, r, ref in zip(inputs.prompts, inputs.responses, inputs.references, strict=True)
    ]


@register("sql")
def sql(inputs: RewardInputs, *, expression: str) -> list[float]:
    """Evaluate a DuckDB expression per rollout, e.g. `CASE WHEN response LIKE '%.' THEN 1 ELSE 0 END`.

    The expression must be one expression and nothing else (`gae.sqlsafe.parse_expression`:
    no `;`, statements, table functions or tables other than `rollouts`), and runs on a
    private in-memory connection that cannot touch files, extensions or settings
    (`gae.sqlsafe.sandbox`): a run's config must not be able to write a file (issue 12).
    """
    import duckdb
    import pyarrow as pa

    from gae.sqlsafe import parse_expression, sandbox

    parsed = parse_expression(expression, tables=("rollouts",), what="sql reward: expression")
    table = pa.table(
        {
            "row_idx": pa.array(range(len(inputs)), pa.int64()),
            "rollout_id": pa.array(inputs.rollout_ids, pa.string()),
            "prompt_id": pa.array(inputs.prompt_ids, pa.string()),
            "prompt": pa.array(inputs.prompts, pa.string()),
            "response": pa.array(inputs.responses, pa.string()),
            "reference": pa.array(inputs.references, pa.string()),
            "response_length": pa.array(inputs.response_lengths, pa.int64()),
            "finish_reason": pa.array(inputs.finish_reasons, pa.string()),
        }
    )
    # Booleans become 1.0/0.0, NULL becomes 0.0; built with the relational API, never pasted.
    score = duckdb.CoalesceOperator(parsed.cast(duckdb.sqltype("DOUBLE")), duckdb.ConstantExpression(0.0))
    con = sandbox()
    try:
        con.register("rollouts", table)
        try:
            rel = con.table("rollouts").select(duckdb.ColumnExpression("row_idx"), score.alias("score"))
            rows = rel.order("row_idx").fetchall()
        except duckdb.Error as e:
            raise ValueError(
                f"sql reward: expression {expression!r} failed: {' '.join(str(e).split())}"
            ) from e
    finally:
        con.close()
    return [r[1] for r in rows]


# ---------------------------------------------------------------------------------------
# scoring


def score_inputs(inputs: RewardInputs, cfg: RewardConfig) -> ScoreTable:
    """Run every component of `cfg` over `inputs`; check each returns B finite floats."""
    B = len(inputs)
    components: dict[str, torch.Tensor] = {}
    weights: dict[str, float] = {}
    total = torch.zeros(B, dtype=torch.float64)
    for i, comp in enumerate(cfg.components):
        if comp.name in REWARDS:
            fn, options = REWARDS[comp.name], comp.options
        else:  # 'module:function' given directly as the name
            fn, options = python, {"function": comp.name, **comp.options}
        where = f"reward components[{i}] {comp.name!r} with options {comp.options}"
        try:
            values = fn(inputs, **options)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{where}: {e}") from e
        except Exception as e:  # a user's python reward, a bad regex...: say which component
            raise RuntimeError(f"{where} failed: {type(e).__name__}: {e}") from e
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError) as e:
            raise TypeError(f"{where} must return numbers, one per rollout: {e}") from e
        if len(values) != B:
            raise ValueError(
                f"reward components[{i}] {comp.name!r} returned {len(values)} scores for {B} rollouts"
            )
        bad = [j for j, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            raise ValueError(
                f"reward components[{i}] {comp.name!r} gave a non-finite score {values[bad[0]]} "
                f"for rollout {inputs.rollout_ids[bad[0]]!r} (row {bad[0]})"
            )
        col = torch.tensor(values, dtype=torch.float64)
        components[comp.column_name] = col.float()
        weights[comp.column_name] = comp.weight
        total += comp.weight * col
    return ScoreTable(total=total.float(), components=components, weights=weights)


def score_batch(batch, cfg: RewardConfig) -> ScoreTable:
    """Score a `gae.batch.RolloutBatch`: `.total` (B,) and `.components[name]` (B,), float32."""
    table = score_inputs(RewardInputs.from_batch(batch), cfg)
    if cfg.overlong_buffer:  # training-time length shaping (DAPO); evaluation scores without it
        from gae.shaping import add_overlong_component

        table = add_overlong_component(table, batch, cfg.overlong_buffer, cfg.overlong_penalty)
    return table
