"""Peak memory and time of `score_responses` forward + backward: chunked log-probs against the
one-pass reference (`chunk_tokens=0`, every position's logits at once), measured in this run.

    python bench/logprobs.py                                  # B=8, T=256, V=50257, small GPT
    python bench/logprobs.py --vocab 151936 --batch 4 --new-tokens 128 --chunks 0,256,64

Peak memory is the largest "Total Allocated" of the CPU allocator during the call, read from
torch.profiler's memory events (`profile_memory=True`): every tensor the forward keeps for the
backward and every temporary, relative to the start of the call (the model, optimizer-free,
and the batch exist before it). Time is the median of `--repeat` calls outside the profiler.
The loss mixes log-probs, entropy and values as PPO's does. Gradients are checked against the
reference in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gae.models import ModelConfig, build_model, score_responses  # noqa: E402
from gae.models.scoring import LOGITS_CHUNK_BYTES, _chunk_positions  # noqa: E402


def make_batch(B: int, P: int, T: int, V: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, V, (B, P), generator=g)
    pmask = torch.ones(B, P, dtype=torch.bool)
    resp = torch.randint(3, V, (B, T), generator=g)
    amask = torch.ones(B, T, dtype=torch.bool)
    return prompt, pmask, resp, amask


def step(model, args, chunk_tokens: int | None) -> None:
    out = score_responses(model, *args, compute_entropy=True, chunk_tokens=chunk_tokens)
    loss = out.logprobs.mean() - 0.01 * out.entropy.mean() + 0.5 * out.values.pow(2).mean()
    loss.backward()


def peak_bytes(fn) -> int:
    """Largest bytes allocated (above the start) while `fn` runs, from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    return max(
        (int(e["args"].get("Total Allocated", 0)) for e in events if e.get("name") == "[memory]"), default=0
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--chunks", default="0,512,128", help="chunk_tokens values; 0 = one pass (the reference)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig.preset(args.preset, block_size=max(256, args.prompt_len + args.new_tokens))
    model = build_model(cfg, args.vocab).eval()
    batch = make_batch(args.batch, args.prompt_len, args.new_tokens, args.vocab)
    chunks = [int(c) for c in args.chunks.split(",")]
    if 0 not in chunks:
        chunks = [0, *chunks]

    def grads():
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    model.zero_grad(set_to_none=True)
    step(model, batch, 0)
    ref = grads()
    rows = []
    for c in chunks:
        model.zero_grad(set_to_none=True)
        step(model, batch, c)
        err = max(float((a - b).abs().max()) for a, b in zip(grads(), ref, strict=True))
        model.zero_grad(set_to_none=True)
        peak = peak_bytes(lambda c=c: step(model, batch, c))
        times = []
        for _ in range(args.repeat):
            model.zero_grad(set_to_none=True)
            t = time.perf_counter()
            step(model, batch, c)
            times.append(time.perf_counter() - t)
        rows.append({"chunk": c, "peak": peak, "s": statistics.median(times), "err": err})

    B, T, V = args.batch, args.new_tokens, args.vocab
    print(
        f"machine: {platform.machine()} threads={torch.get_num_threads()} torch {torch.__version__}; "
        f"gpt preset={args.preset} (n_layer={cfg.n_layer} n_embd={cfg.n_embd}) V={V}; "
        f"B={B} P={args.prompt_len} T={T}"
    )
    print(
        f"float32 logits of the whole window: {B * T * V * 4 / 2**20:.0f} MiB; default chunk "
        f"({LOGITS_CHUNK_BYTES >> 20} MiB budget): {_chunk_positions(B, T, V, None)} positions"
    )
    base = rows[0]
    print(
        f"{'chunk_tokens':>12s} {'positions':>9s} {'peak MiB':>9s} {'vs one pass':>11s} {'seconds':>8s} "
        f"{'time ratio':>10s} {'max |grad diff|':>15s}"
    )
    for r in rows:
        pos = T if r["chunk"] == 0 else _chunk_positions(B, T, V, r["chunk"])
        print(
            f"{r['chunk']:>12d} {pos:>9d} {r['peak'] / 2**20:9.0f} {r['peak'] / base['peak']:10.2f}x "
            f"{r['s']:8.3f} {r['s'] / base['s']:9.2f}x {r['err']:15.1e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
