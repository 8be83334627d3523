"""Rollout throughput: KV-cached generation against regenerating without a cache and against
Hugging Face `generate` on an equivalent GPT-2 configuration, all measured in this run (the
machine is shared and noisy: compare the ratios, not the absolute times).

    python bench/rollout.py                      # batch 64, 128 new tokens, the "small" GPT
    python bench/rollout.py --batch 16 --new-tokens 32 --repeat 1

Every method samples exactly `--new-tokens` tokens per row (no EOS stop) at temperature 1
from a randomly initialised model; prompts are `--prompt-len` random tokens, left-padded to
lengths between half and all of it. "cached" is `gae.rollout.sample_batch` (what
`generate_rollouts` runs) with the dynamic cache (the loop of issue 4); "static" is the same
call with `decode="static"` (gae.decode: fixed shapes, replayed as a CUDA graph on CUDA, run
eagerly on CPU, where it measures the cost of attending over the whole preallocated cache
and of keeping finished rows); "no cache" runs the same model's full forward over the whole
sequence at every step; "HF generate" is `GPT2LMHeadModel.generate` (do_sample, top_k=0,
min_new_tokens = max_new_tokens) on a GPT-2 config of the same sizes built locally (never
downloaded). "rollout" adds the two `score_responses` passes (policy values, reference
log-probs) of `generate_rollouts`. The fast rows run interleaved (one call each per round).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gae.device import resolve_device  # noqa: E402
from gae.models import ModelConfig, build_model, score_responses  # noqa: E402
from gae.rollout import filter_probs, left_pad, sample_batch, sample_tokens  # noqa: E402

TARGET_VS_NO_CACHE = 5.0  # issue 4, "Targets": batch 64, 128 new tokens
TARGET_VS_HF = 1.0


def prompts(batch: int, prompt_len: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(max(1, prompt_len // 2), prompt_len + 1, (batch,), generator=g)
    return [torch.randint(3, vocab, (int(n),), generator=g).tolist() for n in lens]


def run_cached(model, rows, new_tokens, device, decode="dynamic"):
    return sample_batch(
        model, rows, list(range(len(rows))), max_new_tokens=new_tokens, temperature=1.0, top_k=0, top_p=1.0,
        eos_id=-1, pad_id=0, device=device, decode=decode,
    )  # fmt: skip


@torch.no_grad()
def run_no_cache(model, rows, new_tokens, device):
    """The obvious loop: at each step, one full forward over prompt + tokens so far."""
    ids, mask = left_pad(rows, 0, device)
    gens = [torch.Generator().manual_seed(i) for i in range(len(rows))]
    for _ in range(new_tokens):
        logits, _ = model(ids, mask)
        u = torch.tensor([torch.rand((), generator=g, dtype=torch.float64).item() for g in gens])
        tok = sample_tokens(filter_probs(logits[:, -1].float(), 1.0, 0, 1.0), u.to(device))
        ids = torch.cat([ids, tok[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(tok[:, None], dtype=torch.bool)], 1)
    return ids


@torch.no_grad()
def run_hf(hf_model, rows, new_tokens, device):
    ids, mask = left_pad(rows, 0, device)
    return hf_model.generate(
        input_ids=ids, attention_mask=mask.long(), do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
        max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0, eos_token_id=None,
    )  # fmt: skip


@torch.no_grad()
def run_rollout(model, rows, new_tokens, device):
    out = run_cached(model, rows, new_tokens, device)
    args = (out["prompt_tokens"], out["prompt_mask"], out["response_tokens"], out["action_mask"])
    score_responses(model, *args)
    score_responses(model, *args)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--preset", default="small", help="gae ModelConfig preset (gpt arch)")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3, help="rounds of the fast rows (median)")
    ap.add_argument("--no-hf", action="store_true", help="skip the Hugging Face comparison")
    ap.add_argument("--no-baseline", action="store_true", help="skip the (slow) no-cache row")
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default); see RESULTS.md"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    torch.manual_seed(0)
    mcfg = ModelConfig.preset(args.preset)
    model = build_model(mcfg, args.vocab).to(device).eval()
    rows = prompts(args.batch, args.prompt_len, args.vocab, 0)
    n_tokens = args.batch * args.new_tokens
    fns = {
        "cached (gae)": lambda: run_cached(model, rows, args.new_tokens, device),
        "static (gae decode=static)": lambda: run_cached(model, rows, args.new_tokens, device, "static"),
        "rollout (gae: cached + 2 scoring passes)": lambda: run_rollout(model, rows, args.new_tokens, device),
    }
    if not args.no_hf:
        try:
            import transformers
        except ImportError:
            print("transformers not installed: skipping the HF comparison")
        else:
            hf_cfg = transformers.GPT2Config(
                vocab_size=args.vocab, n_positions=mcfg.block_size, n_embd=mcfg.n_embd, n_layer=mcfg.n_layer,
                n_head=mcfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2,
            )  # fmt: skip
            hf_model = transformers.GPT2LMHeadModel(hf_cfg).to(device).eval()
            fns["HF generate (GPT2LMHeadModel)"] = lambda: run_hf(hf_model, rows, args.new_tokens, device)
    for fn in fns.values():  # warm-up (allocator, first-call dispatch)
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.repeat):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    if not args.no_baseline:
        med["no cache (full recompute each step)"] = timed(
            lambda: run_no_cache(model, rows, args.new_tokens, device)
        )

    print(
        f"machine: {platform.machine()} {platform.processor() or ''} threads={torch.get_num_threads()} "
        f"device={device} torch {torch.__version__}"
    )
    print(
        f"model: gpt preset={args.preset} (n_layer={mcfg.n_layer} n_embd={mcfg.n_embd} n_head={mcfg.n_head}) "
        f"vocab={args.vocab}; batch={args.batch} new_tokens={args.new_tokens} prompt_len<={args.prompt_len}"
    )
    print(f"{'method':44s} {'seconds':>9s} {'tokens/s':>10s} {'cached speed-up':>16s}")
    base = med["cached (gae)"]
    for k, s in med.items():
        print(f"{k:44s} {s:9.3f} {n_tokens / s:10.0f} {s / base:15.2f}x")
    print(f"static vs cached (dynamic): {base / med['static (gae decode=static)']:.2f}x")
    if "no cache (full recompute each step)" in med:
        vs_nc = med["no cache (full recompute each step)"] / base
        print(f"\ncached vs no cache: {vs_nc:.1f}x (target >= {TARGET_VS_NO_CACHE}x)")
    if "HF generate (GPT2LMHeadModel)" in med:
        vs_hf = med["HF generate (GPT2LMHeadModel)"] / base
        print(f"cached vs HF generate: {vs_hf:.2f}x (target >= {TARGET_VS_HF}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
