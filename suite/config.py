"""The suite's own process-wide JAX settings: for its CLI process and its test session.

A function a user calls never changes global JAX settings; ``configure`` is only called
by ``backprop-suite`` itself (suite/cli.py) and by the test conftest, where

- float64 must exist for the oracle to be the truth;
- implicit rank promotion is an error, so that a broadcast in a derivation is always a
  decision, never an accident;
- matrix products run at full precision: on a GPU, JAX's default float32 matmul may use
  TF32 (10 mantissa bits), which would judge a float32 derivation against an oracle three
  orders of magnitude blurrier than float32 itself — or pass a wrong one by accident.

``use_compile_cache`` turns on JAX's persistent compilation cache, for the CLI process (and
its worker processes) only: a repeated report loads its executables from disk instead of
compiling them again.
"""

import os

import jax
from jax import monitoring

__all__ = ["configure", "default_compile_cache", "use_compile_cache", "compile_cache_counts",
           "count_compile_cache", "process_settings", "apply_settings"]

# The JAX settings a worker process (suite.run.run_all(workers=N)) copies from its parent.
_SETTINGS = ("jax_enable_x64", "jax_numpy_rank_promotion", "jax_default_matmul_precision",
             "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")

_HIT = "/jax/compilation_cache/cache_hits"
_REQUEST = "/jax/compilation_cache/compile_requests_use_cache"
_counts = {_HIT: 0, _REQUEST: 0}
_listening: list[bool] = []  # one listener per process, however often the cache is turned on


def configure() -> None:
    """float64 on, implicit rank promotion raising, matmuls at HIGHEST: for the whole process."""
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_default_matmul_precision", "highest")


def default_compile_cache() -> str:
    """The cache folder: $XDG_CACHE_HOME/backprop-suite/jax, or ~/.cache/backprop-suite/jax.

    Outside the repository, per user, shared by every checkout of the same JAX version
    (JAX keys each entry by the program, the compile options, the backend and its version).
    """
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "backprop-suite", "jax")


def use_compile_cache(directory: str) -> None:
    """Cache every compiled executable in ``directory`` (made if missing), for the whole process.

    JAX by default writes only programs that took a second or more to compile; the suite's
    programs mostly take 0.05-0.5 s each, but there are thousands, so the thresholds are
    off: every compile is written, whatever its time and size (min entry size -1: no floor
    and no override by JAX). Call it before the first compile. Counts the cache's hits from
    then on (``compile_cache_counts``).
    """
    if not isinstance(directory, str) or not directory:
        raise ValueError(f"directory must be a non-empty path, got {directory!r}")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:
        raise ValueError(f"compile cache directory {directory!r} cannot be made: {err}") from None
    if not os.access(directory, os.W_OK):
        raise ValueError(f"compile cache directory {directory!r} is not writable")
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    count_compile_cache()


def count_compile_cache() -> None:
    """Count the persistent cache's hits and requests in this process from now on."""
    if not _listening:
        monitoring.register_event_listener(_count)
        _listening.append(True)


def _count(event: str, **_: object) -> None:
    if event in (_HIT, _REQUEST):
        _counts[event] += 1


def compile_cache_counts() -> tuple[int, int]:
    """(executables loaded from the persistent cache, compiles that asked it) in this process."""
    return _counts[_HIT], _counts[_REQUEST]


def process_settings() -> dict[str, object]:
    """This process's values of the JAX settings the suite sets (configure, the cache)."""
    return {name: getattr(jax.config, name) for name in _SETTINGS}


def apply_settings(settings: dict[str, object]) -> None:
    """Give this process the settings ``process_settings`` read in another: for the suite's
    own worker processes, which must judge exactly as their parent would."""
    for name, value in settings.items():
        if name not in _SETTINGS:
            raise ValueError(f"settings: unknown JAX setting {name!r}; known: {_SETTINGS}")
        jax.config.update(name, value)
    if settings.get("jax_compilation_cache_dir"):
        count_compile_cache()
