"""Compiled backends of the advantage engine (numba on CPU, Triton on CUDA).

Each kernel computes exactly what `gae.advantages.gae_reference` computes; the tests
compare them on random inputs. Kernels are imported lazily: numba and triton cost
seconds to import and are only needed when a batch reaches them.
"""

import functools


@functools.cache
def triton_available() -> bool:
    """Whether Triton imports here (it is an optional extra, `gaeflow[gpu]`)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install that fails on import
        return False
    return True
