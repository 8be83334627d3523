"""The Triton GAE kernel compiled for an H100/H200 (sm_90) without a GPU: registers, spills,
resident programs, and machine instructions per position in its hot loop (issue 14).

    python bench/gae_sass.py              # every launch of bench/gpu.py's LAUNCH_GRID at 1024 x 4096

Timings need the GPU (`bench/gpu.py`); this shows, on any machine with Triton's bundled NVIDIA
toolchain (ptxas, cuobjdump), what decides them before it runs: how many programs (rows) fit
on an SM at once (registers a thread x threads, against 65,536 registers, 2,048 threads and 32
blocks an SM), how many waves a 1024-row batch takes on 132 SMs, and how many instructions
each position costs (the SASS between the hot loop's label and its backward branch, divided by
the positions a thread holds). The arguments are typed as Triton's launcher types them for
`gae_triton`'s call, alignment attributes included: without them no load vectorises.

The kernel issue 8 shipped (one chunk of 2048 positions on 4 warps, a five-field scan, loads
masked by the action mask) compiled the same way: 196 registers, 2 programs an SM, 4 waves
for 1024 rows, 90 instructions a position, the values loaded one by one (`ISSUE_8_KERNEL`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SMS = 132  # H100 SXM / H200
REGS_PER_SM, THREADS_PER_SM, BLOCKS_PER_SM = 65536, 2048, 32
ISSUE_8_KERNEL = {"registers": 196, "programs_per_sm": 2, "waves": 4, "instructions_per_position": 90}


def compile_sm90(dt: str, T: int, config, *, decoupled: bool = False, check: bool = True, B: int = 1024):
    """Compile `_gae_kernel` for sm_90 as `gae_triton` launches it on (B, T) `dt` inputs ("fp32",
    "fp64") with `config` (a LaunchConfig); per-row lambdas when decoupled. Returns the compiled
    kernel's figures (see the module docstring). Needs TRITON_INTERPRET unset or 0 when the
    kernel module was imported."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import mangle_type

    from gae.kernels.triton_gae import _gae_kernel

    cx = {
        "HAS_LV": True,
        "LAMA_ROWS": decoupled,
        "LAMC_ROWS": decoupled,
        "DECOUPLED": decoupled,
        "CHECK": check,
        "GATHER": config.scan == "gather",
        "EVEN": T % config.block == 0,
        "BLOCK": config.block,
        "STAGES": config.stages,
    }
    sig, consts, attrs = {}, {}, {}
    for p in _gae_kernel.params:
        if p.name in cx:
            sig[p.name], consts[(p.num,)] = "constexpr", cx[p.name]
        elif p.name in ("B", "T"):
            val = {"B": B, "T": T}[p.name]
            sig[p.name] = mangle_type(val, specialize=True)  # an int equal to 1 is a constexpr
            if sig[p.name] == "constexpr":
                consts[(p.num,)] = val
            elif val % 16 == 0:
                attrs[(p.num,)] = [["tt.divisibility", 16]]
        elif p.name.endswith("_ptr"):
            kinds = {"m_ptr": "*u8", "rec_ptr": "*i64", "lama_ptr": "*fp64", "lamc_ptr": "*fp64"}
            sig[p.name] = kinds.get(p.name, f"*{dt}")
            attrs[(p.num,)] = [["tt.divisibility", 16]]  # torch's allocations are 256-byte aligned
        else:
            sig[p.name] = p.annotation  # gamma, lam_a, lam_c: annotated fp64
    k = triton.compile(
        ASTSource(fn=_gae_kernel, signature=sig, constexprs=consts, attrs=attrs),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": config.warps, "num_stages": config.stages},
    )
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(k.asm["cubin"])
        usage = subprocess.run(
            [tools / "cuobjdump", "-res-usage", cubin], capture_output=True, text=True
        ).stdout
        sass = subprocess.run([tools / "cuobjdump", "-sass", cubin], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", usage)
    regs = int(found.group(1)) if found else None
    threads = 32 * config.warps
    per_sm = (
        min(REGS_PER_SM // (_granular(regs) * threads), THREADS_PER_SM // threads, BLOCKS_PER_SM)
        if regs
        else None
    )
    loop = _hot_loop(sass)
    per_thread = max(1, config.block // threads)
    head = next(line for line in k.asm["ttir"].splitlines() if "tt.func" in line)
    return {
        "cubin": len(k.asm["cubin"]),
        "registers": regs,
        "spilled": int(found.group(2)) + int(found.group(3)) if found else None,
        "warps": config.warps,
        "programs_per_sm": per_sm,
        "waves": -(-B // (per_sm * SMS)) if per_sm else None,
        "instructions_per_position": round(len(loop) / per_thread, 1) if loop else None,
        "vector_loads": "ld.global.v4" in k.asm["ptx"] or "ld.global.v2.f64" in k.asm["ptx"],
        "f32_argument": ": f32 " in head,
    }


def _granular(regs: int) -> int:
    # registers are allocated to a warp in units of 256, i.e. 8 a thread
    return -(-regs // 8) * 8


def _hot_loop(sass: str) -> list[str]:
    """The instructions of the first loop in the SASS (the chunk loop; the cold pass that locates
    a bad position comes after it): from a backward branch's target to the branch."""
    at: dict[int, int] = {}
    body: list[str] = []
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m:
            at[int(m.group(1), 16)] = len(body)
            body.append(m.group(2))
    for i, ins in enumerate(body):
        m = re.search(r"BRA (0x[0-9a-f]+)", ins)
        if m and at.get(int(m.group(1), 16), i) < i:
            return body[at[int(m.group(1), 16)] : i + 1]
    return []


def main() -> int:
    os.environ["TRITON_INTERPRET"] = "0"  # compile, before triton.jit wraps the kernel
    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        print(
            "bench/gae_sass.py: needs triton with its NVIDIA backend (pip install -e '.[gpu]')",
            file=sys.stderr,
        )
        return 2
    from bench.gpu import LAUNCH_GRID
    from gae.kernels.triton_gae import launch_config

    os.environ.pop("GAE_TRITON_CONFIG", None)
    default = str(launch_config(4096))
    print(f"_gae_kernel for sm_90, float32, 1024 x 4096, checks on; {SMS} SMs (H100/H200)\n")
    print(f"{'launch':44s} {'regs':>5s} {'spill':>5s} {'prog/SM':>7s} {'waves':>5s} {'instr/pos':>9s}")
    b = ISSUE_8_KERNEL
    print(
        f"{'issue 8 kernel (block=2048,warps=4, 5 fields)':44s} {b['registers']:5d} {0:5d} "
        f"{b['programs_per_sm']:7d} {b['waves']:5d} {b['instructions_per_position']:9d}"
    )
    for cfg in LAUNCH_GRID:
        config = launch_config(4096, **cfg)
        k = compile_sm90("fp32", 4096, config)
        name = str(config) + (" *" if str(config) == default else "")
        print(
            f"{name:44s} {k['registers']:5d} {k['spilled']:5d} {k['programs_per_sm']:7d} {k['waves']:5d} "
            f"{k['instructions_per_position']:9.1f}"
        )
    print("\n* the default launch (gae.kernels.triton_gae.launch_config)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
