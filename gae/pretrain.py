"""Next-token pretraining of the policy on the corpus: the initial policy and the frozen reference.

nanoGPT's recipe at CPU scale: documents become `[BOS] doc [EOS]` and are packed into one
token stream; each step trains on random windows of it (no padding is ever wasted); AdamW
with decoupled weight decay on matrices only; linear warm-up then cosine decay to
`min_lr_ratio * lr` (Loshchilov & Hutter 2017); gradient-norm clipping; periodic eval
perplexity on the eval split; periodic checkpoints.

The unigram baseline is the perplexity of add-one-smoothed train-split token frequencies on
the very same eval targets, so "model ppl < unigram ppl" means the model learned context.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from gae.device import autocast, resolve_device
from gae.fsutil import atomic_write_json
from gae.models import ModelConfig, build_model, save_model
from gae.tokenizer import Tok, load_tokenizer, train_tokenizer

# Sized for a 2-core CPU (bench/RESULTS.md, "models and rollouts"): tiny pretrains in ~5-10 s
# for the smoke pipeline; small in ~60-90 s to a perplexity well under the unigram baseline.
PRETRAIN_PRESETS: dict[str, dict] = {
    # ~150 steps x 1k tokens at ~0.03 s each + ~1-2 s of tokenizer training and packing
    "tiny": {
        "vocab_size": 512,
        "max_tokenizer_chars": 500_000,
        "max_train_tokens": 150_000,
        "max_steps": 150,
        "batch_size": 16,
        "seq_len": 64,
        "lr": 3e-3,
        "warmup_steps": 10,
        "eval_interval": 75,
        "eval_tokens": 4096,
        "max_seconds": 8.0,
    },
    # the PretrainConfig defaults: ~250 steps x 2k tokens at ~0.2-0.5 s each on 2 cores, eval ppl
    # about 1/4-1/3 of the unigram baseline; the time guard stops early on a busy machine. The
    # stream cap (600k tokens) is above the ~500k tokens 250 steps read, so no epoch repeats.
    "small": {
        "vocab_size": 1024,
        "max_tokenizer_chars": 1_000_000,
        "max_train_tokens": 600_000,
        "max_steps": 250,
        "batch_size": 16,
        "seq_len": 128,
        "lr": 3e-3,
        "warmup_steps": 20,
        "eval_interval": 125,
        "eval_tokens": 16384,
        "max_seconds": 90.0,
    },
}


_SMALL = PRETRAIN_PRESETS["small"]


class PretrainConfig(BaseModel):
    """Pretraining hyper-parameters (saved in `pretrain.json` next to the model). The defaults are
    the "small" preset; `PretrainConfig.preset("tiny")` is the smoke-pipeline budget."""

    model_config = ConfigDict(extra="forbid")

    vocab_size: int = Field(
        _SMALL["vocab_size"], ge=259, description="BPE vocabulary when a tokenizer is trained here."
    )
    max_tokenizer_chars: int = Field(
        _SMALL["max_tokenizer_chars"],
        ge=1000,
        description="Characters of train text the tokenizer sees (BPE merges saturate early).",
    )
    max_train_tokens: int | None = Field(
        _SMALL["max_train_tokens"],
        description="Cap on the packed train stream (bounds tokenizing time); None = all.",
    )
    max_steps: int = Field(
        _SMALL["max_steps"], ge=1, description="Optimizer steps; the cosine schedule spans them."
    )
    batch_size: int = Field(_SMALL["batch_size"], ge=1, description="Windows per step.")
    seq_len: int | None = Field(
        _SMALL["seq_len"], ge=8, description="Window length in tokens; None = the model's block_size."
    )
    lr: float = Field(
        _SMALL["lr"], gt=0, description="Peak learning rate (small models tolerate nanoGPT's 1e-3..6e-3)."
    )
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="Final lr as a fraction of the peak (Chinchilla: 0.1)."
    )
    warmup_steps: int = Field(
        _SMALL["warmup_steps"], ge=0, description="Linear warm-up steps from 0 to the peak lr."
    )
    weight_decay: float = Field(0.1, ge=0, description="AdamW decoupled weight decay on 2-D weights only.")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(
        0.95, ge=0, lt=1, description="AdamW beta2 (0.95: GPT-3 / nanoGPT, steadier at high lr)."
    )
    grad_clip: float = Field(1.0, ge=0, description="Clip the global gradient norm to this; 0 = off.")
    eval_interval: int = Field(
        _SMALL["eval_interval"], ge=1, description="Evaluate every this many steps (and at the end)."
    )
    eval_tokens: int = Field(
        _SMALL["eval_tokens"], ge=64, description="Eval-split tokens used per evaluation."
    )
    checkpoint_interval: int = Field(
        0, ge=0, description="Save `checkpoint/` every this many steps; 0 = off."
    )
    max_seconds: float | None = Field(
        _SMALL["max_seconds"],
        description="Stop early after this much training time (a guard on slow machines); None = off.",
    )
    seed: int = Field(0, description="Seeds init and window sampling.")
    bf16: bool = Field(False, description="bf16 autocast on CUDA (ignored on CPU).")

    @classmethod
    def preset(cls, name: str, **overrides) -> PretrainConfig:
        """A named budget ("tiny", "small") with optional field overrides."""
        if name not in PRETRAIN_PRESETS:
            raise ValueError(f"unknown pretrain preset {name!r}; choose one of {sorted(PRETRAIN_PRESETS)}")
        return cls(**{**PRETRAIN_PRESETS[name], **overrides})


class PretrainResult(BaseModel):
    """What pretraining achieved; JSON-able (`model_dump()`)."""

    eval_ppl: float
    unigram_ppl: float
    initial_eval_ppl: float
    steps: int
    seconds: float
    train_tokens: int
    eval_tokens: int
    tokens_seen: int
    n_params: int
    final_train_loss: float
    history: list[dict] = Field(default_factory=list)
    out_dir: str = ""


def pack(tok: Tok, texts: list[str], max_tokens: int | None) -> torch.Tensor:
    """`[BOS] doc [EOS]` for each document, concatenated: (N,) int64 (stops after `max_tokens`)."""
    out: list[int] = []
    step = 256
    for s in range(0, len(texts), step):
        for ids in tok.encode_batch(texts[s : s + step]):
            out.append(tok.bos_id)
            out.extend(ids)
            out.append(tok.eos_id)
        if max_tokens is not None and len(out) >= max_tokens:
            out = out[:max_tokens]
            break
    return torch.tensor(out, dtype=torch.long)


def lr_at(step: int, cfg: PretrainConfig, time_frac: float = 0.0) -> float:
    """Linear warm-up over `warmup_steps`, then cosine from `lr` to `min_lr_ratio * lr`.

    The cosine's progress is the larger of the step fraction and `time_frac` (elapsed /
    max_seconds), so a run that the time guard will stop still anneals to the low lr by then
    (a schedule cut at a high lr leaves the loss well above where it would settle).
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = max((step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps), time_frac)
    coef = 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * coef)


def unigram_nll(train: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> float:
    """Mean -log p(y) of add-one-smoothed train frequencies over `targets` (nats)."""
    counts = torch.bincount(train, minlength=vocab_size).double() + 1.0
    logp = counts.log() - counts.sum().log()
    return float(-logp[targets].mean())


def eval_windows(stream: torch.Tensor, seq_len: int, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping (x, y) windows from the start of `stream`: (W, seq_len) each."""
    n = min(len(stream) - 1, max_tokens) // seq_len
    if n < 1:
        raise ValueError(f"eval stream of {len(stream)} tokens is shorter than one window of {seq_len + 1}")
    x = stream[: n * seq_len].view(n, seq_len)
    y = stream[1 : n * seq_len + 1].view(n, seq_len)
    return x, y


def lm_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of the policy's LM head (the value head is not trained here)."""
    hidden, _ = model.actor(x, torch.ones_like(x, dtype=torch.bool), None)
    logits = model.actor.logits(hidden)  # (B, L, V)
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def evaluate_nll(model, x: torch.Tensor, y: torch.Tensor, batch_size: int, device, bf16: bool) -> float:
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(x), batch_size):
        xb, yb = x[s : s + batch_size].to(device), y[s : s + batch_size].to(device)
        with autocast(device, bf16=bf16):
            total += float(lm_loss(model, xb, yb)) * yb.numel()
        count += yb.numel()
    model.train(was)
    return total / count


def make_optimizer(model, cfg: PretrainConfig, device) -> torch.optim.AdamW:
    decay = [p for p in model.actor_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.actor_parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


def pretrain(
    train_texts: list[str],
    eval_texts: list[str],
    *,
    tokenizer_path: str | Path | None,
    model_cfg: ModelConfig,
    cfg: PretrainConfig,
    out_dir: str | Path,
    device: str | torch.device = "auto",
    progress: Callable[..., None] | None = None,
) -> PretrainResult:
    """Train a tokenizer (unless `tokenizer_path` is given) and the policy LM; write both to `out_dir`.

    `out_dir` then holds tokenizer.json, model.safetensors + config.json (loadable with
    `load_model`/`load_tokenizer`) and pretrain.json (this config and the result). When the
    eval split is too short for one window, the last 10% of the train stream is held out.
    `progress`, when given, is called after every step with step, steps and loss.
    """
    started = time.perf_counter()
    device = resolve_device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_texts = [t for t in train_texts if t]
    if not train_texts:
        raise ValueError("pretrain: no train texts (is the corpus ingested, with a non-empty train split?)")
    if tokenizer_path is None:
        budget, chosen = cfg.max_tokenizer_chars, []
        for t in train_texts:
            if budget <= 0:
                break
            chosen.append(t[:budget])
            budget -= len(chosen[-1])
        tok = load_tokenizer(train_tokenizer(chosen, vocab_size=cfg.vocab_size, out_dir=out_dir))
    else:
        tok = load_tokenizer(tokenizer_path)
        tok.save(out_dir)

    train = pack(tok, train_texts, cfg.max_train_tokens)
    eval_stream = pack(tok, [t for t in eval_texts if t], cfg.eval_tokens + 1)
    seq_len = cfg.seq_len or model_cfg.block_size
    if model_cfg.arch == "gpt":
        seq_len = min(seq_len, model_cfg.block_size)
    packed_train, n_docs = len(train), len(train_texts)
    if len(eval_stream) < seq_len + 1:
        cut = int(len(train) * 0.9)
        train, eval_stream = train[:cut], train[cut:]
    if len(eval_stream) < seq_len + 1 or len(train) < seq_len + 2:
        # Say how much text is missing, not which internal stream ran short (issue 12). The
        # eval windows then come from the last 10% of the train stream, hence the factor 10.
        per_doc = max(1.0, packed_train / n_docs)
        need_docs = math.ceil(10 * (seq_len + 2) / per_doc)
        which, have, need = (
            ("eval", len(eval_stream), seq_len + 1)
            if len(eval_stream) < seq_len + 1
            else ("train", len(train), seq_len + 2)
        )
        raise ValueError(
            f"corpus too small: {have} tokens in the {which} stream, need at least {need} "
            f"(about {need_docs} documents like these; the corpus has {n_docs} train documents, "
            f"{packed_train} tokens); add text, or lower pretrain.seq_len"
        )
    ex, ey = eval_windows(eval_stream, seq_len, cfg.eval_tokens)
    unigram_ppl = math.exp(unigram_nll(train, ey.reshape(-1), tok.vocab_size))

    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg, tok.vocab_size).to(device).train()
    opt = make_optimizer(model, cfg, device)
    gen = torch.Generator().manual_seed(cfg.seed)
    offsets = torch.arange(seq_len + 1)
    history: list[dict] = []
    initial = math.exp(evaluate_nll(model, ex, ey, cfg.batch_size, device, cfg.bf16))
    history.append({"step": 0, "eval_ppl": initial})
    loss_val, step = float("nan"), 0
    t_train = time.perf_counter()
    for step in range(1, cfg.max_steps + 1):
        starts = torch.randint(0, len(train) - seq_len - 1, (cfg.batch_size,), generator=gen)
        win = train[starts[:, None] + offsets]  # (B, seq_len + 1)
        x, y = win[:, :-1].to(device), win[:, 1:].to(device)
        elapsed = time.perf_counter() - t_train
        time_frac = elapsed / cfg.max_seconds if cfg.max_seconds else 0.0
        lr = lr_at(step - 1, cfg, time_frac)
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast(device, bf16=cfg.bf16):
            loss = lm_loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.actor_parameters(), cfg.grad_clip)
        opt.step()
        loss_val = float(loss.detach())
        if progress is not None:
            progress(step=step, steps=cfg.max_steps, loss=loss_val)
        out_of_time = cfg.max_seconds is not None and time.perf_counter() - t_train >= cfg.max_seconds
        if step % cfg.eval_interval == 0 or step == cfg.max_steps or out_of_time:
            ppl = math.exp(evaluate_nll(model, ex, ey, cfg.batch_size, device, cfg.bf16))
            history.append({"step": step, "train_loss": loss_val, "eval_ppl": ppl, "lr": lr})
        if cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0:
            save_model(model, out_dir / "checkpoint", extra={"step": step})
        if out_of_time:
            break
    model.sync_critic_from_actor()
    result = PretrainResult(
        eval_ppl=history[-1]["eval_ppl"],
        unigram_ppl=unigram_ppl,
        initial_eval_ppl=initial,
        steps=step,
        seconds=round(time.perf_counter() - started, 3),
        train_tokens=len(train),
        eval_tokens=int(ey.numel()),
        tokens_seen=step * cfg.batch_size * seq_len,
        n_params=sum(p.numel() for p in model.parameters()),
        final_train_loss=loss_val,
        history=history,
        out_dir=str(out_dir),
    )
    save_model(model.cpu(), out_dir, extra={"pretrain": result.model_dump(exclude={"history"})})
    atomic_write_json(out_dir / "pretrain.json", {"config": cfg.model_dump(), "result": result.model_dump()})
    return result
