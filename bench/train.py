"""PPO iteration overhead: bookkeeping (checkpoint, MLflow logging, train log-prob file)
against the PPO update's own compute, at the default pipeline's shapes.

    .venv/bin/python bench/train.py [--repeats 3] [--prompts 32] [--samples 4] [--new-tokens 64]

Prints medians and ratios measured in this run (the machine is shared and noisy: compare
ratios, not seconds). The update is timed with and without the pre-update scoring pass
that gives the store exact trainer log-probs (`PPOConfig.score_before_update`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

from gae.batch import RolloutBatch  # noqa: E402
from gae.checkpoint import checkpoint_dir, save_checkpoint  # noqa: E402
from gae.models import ModelConfig, build_model, score_responses  # noqa: E402
from gae.paths import DataDir  # noqa: E402
from gae.train import PPOConfig, build_optimizer, data_metrics, ppo_update  # noqa: E402


def make_batch(model, B: int, P: int, T: int, V: int, seed: int = 0) -> RolloutBatch:
    g = torch.Generator().manual_seed(seed)
    pt = torch.randint(3, V, (B, P), generator=g)
    pm = torch.ones(B, P, dtype=torch.bool)
    rt = torch.randint(3, V, (B, T), generator=g)
    lengths = torch.randint(T // 4, T + 1, (B,), generator=g)
    am = torch.arange(T)[None, :] < lengths[:, None]
    with torch.no_grad():
        out = score_responses(model, pt, pm, rt, am)
    return RolloutBatch(
        rollout_ids=[f"{i}" for i in range(B)],
        prompt_ids=[f"{i // 4}" for i in range(B)],
        group_ids=torch.arange(B) // 4,
        prompt_tokens=pt,
        prompt_mask=pm,
        response_tokens=rt,
        action_mask=am,
        logprobs=out.logprobs,
        ref_logprobs=out.logprobs.clone(),
        values=out.values,
        last_values=out.last_values,
        prompts=["p"] * B,
        responses=["r" * 40] * B,
        references=[None] * B,
        finish_reasons=["length" if int(n) == T else "eos" for n in lengths],
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=24)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--preset", default="small")
    args = ap.parse_args()

    V = 2048
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset(args.preset), V)
    B = args.prompts * args.samples
    batch = make_batch(model, B, args.prompt_tokens, args.new_tokens, V)
    m = batch.action_mask
    scores = torch.rand(B)
    rewards = torch.zeros(m.shape)
    rewards[torch.arange(B), m.sum(1) - 1] = scores
    from gae.advantages import compute_gae

    adv, ret = compute_gae(rewards, batch.values, m, gamma=1.0, lam=0.95)
    cfg = PPOConfig()
    tmp = tempfile.mkdtemp(prefix="gae-bench-train-")
    dd = DataDir.resolve(tmp).ensure()
    from gae.tracking import Tracker, generation_rows

    tracker = Tracker.start(dd, run_id="bench")  # first sqlite creation is not part of an iteration
    tracker.log_config({"ppo": cfg.model_dump(mode="json")})

    t = {k: [] for k in ("update", "update_no_prepass", "checkpoint", "mlflow", "logprob_file")}
    for r in range(args.repeats):
        mdl = build_model(ModelConfig.preset(args.preset), V)
        mdl.load_state_dict(model.state_dict())
        opt = build_optimizer(mdl, cfg)
        t0 = time.perf_counter()
        metrics, lp = ppo_update(mdl, opt, batch, adv, ret, cfg, iteration=r)
        t["update"].append(time.perf_counter() - t0)

        mdl2 = build_model(ModelConfig.preset(args.preset), V)
        mdl2.load_state_dict(model.state_dict())
        opt2 = build_optimizer(mdl2, cfg)
        cfg2 = cfg.model_copy(update={"score_before_update": False})
        t0 = time.perf_counter()
        ppo_update(mdl2, opt2, batch, adv, ret, cfg2, iteration=r)
        t["update_no_prepass"].append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        save_checkpoint(checkpoint_dir(dd.run_dir("bench"), r), model=mdl, optimizer=opt, iteration=r)
        t["checkpoint"].append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        from safetensors.torch import save_file

        save_file({"train_logprobs": lp.contiguous()}, str(dd.root / f"lp-{r}.safetensors"))
        t["logprob_file"].append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        metrics.update(data_metrics(batch, scores=scores, token_rewards=rewards, advantages=adv, returns=ret))
        tracker.log_metrics(metrics, step=r)
        tracker.log_generations(generation_rows(batch, total=scores, limit=16), iteration=r)
        t["mlflow"].append(time.perf_counter() - t0)

    med = {k: statistics.median(v) for k, v in t.items()}
    overhead = med["checkpoint"] + med["mlflow"] + med["logprob_file"]
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"model {args.preset} ({n_params / 1e6:.2f} M params), B={B}, P={args.prompt_tokens}, T={args.new_tokens}, "
        f"epochs={cfg.epochs}, minibatches={cfg.minibatches}, torch threads={torch.get_num_threads()}"
    )
    for k, v in med.items():
        print(f"  {k:<18} {v * 1000:9.1f} ms (median of {args.repeats})")
    print(f"bookkeeping / (update + bookkeeping): {overhead / (med['update'] + overhead):.1%}")
    print(
        f"pre-update scoring pass: update is {med['update'] / med['update_no_prepass']:.2f}x the update without it"
    )
    tracker.finish()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
