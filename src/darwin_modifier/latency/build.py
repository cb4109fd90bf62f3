"""The latency table for a database: found in its cache, or measured on vLLM.

Runs in the compress environment. The models to time (:class:`~.sweep.Sweep`) are
configs made from the database's kept shapes; the timing runs in the serve
environment's Python (:mod:`.measure`), since vLLM and LLM Compressor cannot share
one environment. Tables are cached in ``<database_dir>/latency/<digest>.json``, one per
identity: the timed configs, the settings (:class:`~.config.LatencyConfig`), and the
engine and device, which the serve environment reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

from loguru import logger

from darwin_modifier.artifacts import digest, write_json
from darwin_modifier.database.store import DatabaseStore
from darwin_modifier.distributed import main_rank_first
from darwin_modifier.format.shrink import shrunk_config
from darwin_modifier.latency.config import LatencyConfig
from darwin_modifier.latency.sweep import MODES, Sweep, predict
from darwin_modifier.latency.table import LatencyTable
from darwin_modifier.plan import LayerPlan, Plan
from darwin_modifier.search.genome import Genome

SERVE_PYTHON_ENV = "DARWIN_SERVE_PYTHON"
TABLE_DIR = "latency"


# config keys that do not change a step's time (vLLM takes the dtype as an argument):
# left out, so that a table measured from one copy of a config serves another
UNTIMED_KEYS = (
    "_name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "use_cache",
)


def sweep_of(store: DatabaseStore) -> Sweep:
    levels = {m: len(ladder) for m, ladder in store.ladders.items()}
    return Sweep.design(store.shape.num_layers, levels, store.ladders["attn"])


def model_config(store: DatabaseStore, dense_config, genome: Genome | None) -> dict:
    """``config.json`` of the genome's shrunk model, or (None) of the dense model
    as the user serves it now: the reference."""
    config = dense_config
    if genome is not None:
        n = store.shape.num_layers
        plan = Plan(
            store.shape,
            [
                LayerPlan(
                    store.kept(i, "attn", genome.attn[i]),
                    store.kept(i, "mlp", genome.mlp[i]),
                )
                for i in range(n)
            ],
        )
        config = shrunk_config(dense_config, plan)
    values = json.loads(config.to_json_string())
    return {k: v for k, v in values.items() if k not in UNTIMED_KEYS}


def requested_identity(
    store: DatabaseStore, dense_config, config: LatencyConfig
) -> tuple[dict, dict[str, dict]]:
    """The identity a table must have (without engine and device), and the configs
    of the sweep's models by name."""
    sweep = sweep_of(store)
    configs = {"reference": model_config(store, dense_config, None)}
    for name, genome in sweep.genomes.items():
        configs[name] = model_config(store, dense_config, genome)
    identity = {"models": digest(configs), **config.latency_settings()}
    return identity, configs


def serve_python(config: LatencyConfig) -> str | None:
    """The python that can run vLLM: the setting, the environment variable, or this
    interpreter if it has vLLM."""
    chosen = config.serve_python or os.environ.get(SERVE_PYTHON_ENV)
    if chosen:
        return chosen
    return sys.executable if find_spec("vllm") is not None else None


def check_speed_target(config, database_dir: str | Path) -> None:
    """Before calibration: a ``target_speedup`` can get its table (a given one, the
    serve environment to measure one, or one cached by an earlier run)."""
    if config.target_speedup is None or config.latency_table:
        if config.latency_table and not Path(config.latency_table).exists():
            raise ValueError(f"latency_table {config.latency_table} does not exist")
        return
    cached = any(Path(database_dir, TABLE_DIR).glob("*.json"))
    if serve_python(config) is None and not cached:
        raise ValueError(
            "target_speedup needs a latency table measured on vLLM: set serve_python "
            f"(or {SERVE_PYTHON_ENV}) to the serve environment's python (e.g. "
            ".venv-serve/bin/python), or give latency_table"
        )


def latency_table(
    store: DatabaseStore, dense_config, config: LatencyConfig
) -> LatencyTable:
    """The table for ``store`` and the config's serving setup (main rank measures
    first; the other ranks then read its cache)."""
    identity, configs = requested_identity(store, dense_config, config)
    if config.latency_table:
        return LatencyTable.load(config.latency_table, identity)
    with main_rank_first():
        return _cached_or_measured(store, configs, identity, config)


def _cached_or_measured(
    store: DatabaseStore, configs: dict, identity: dict, config: LatencyConfig
) -> LatencyTable:
    cache = Path(store.root) / TABLE_DIR
    python = serve_python(config)
    if python is None:
        return _only_cached(cache, identity)
    identity = {**identity, **_engine_identity(python)}
    path = cache / f"{digest(identity)}.json"
    if path.exists():
        logger.info(f"latency table: {path} (cached)")
        return LatencyTable.load(path, identity)
    cache.mkdir(parents=True, exist_ok=True)
    times = _measure(python, configs, config, path)
    table = fit(sweep_of(store), identity, times, params_table(store))
    table.save(path)
    logger.info(f"latency table: {path}")
    return table


def params_table(store: DatabaseStore) -> dict[str, list[list[int]]]:
    return {
        m: [
            [store.params(i, m, lv) for lv in range(len(ladder))]
            for i in range(store.shape.num_layers)
        ]
        for m, ladder in store.ladders.items()
    }


def fit(
    sweep: Sweep, identity: dict, times: dict[str, dict], params: dict
) -> LatencyTable:
    """The table from the timed models (names as in ``sweep.genomes``)."""
    costs, check = {}, {}
    for mode in MODES:
        seconds = {name: t[f"{mode}_s"] for name, t in times.items()}
        costs[mode] = sweep.costs(seconds, params)
        predicted = predict(costs[mode], sweep.genomes["check"])
        check[mode] = {
            "predicted_s": predicted,
            "measured_s": seconds["check"],
            "error": predicted / seconds["check"] - 1,
        }
    return LatencyTable(identity, times, costs, check)


def _measure(python: str, configs: dict, config: LatencyConfig, path: Path) -> dict:
    """Time the distinct configs in the serve environment; every name gets its
    config's times."""
    distinct: dict[str, str] = {}  # config text -> the first name with it
    names = {}
    for name, values in configs.items():
        text = json.dumps(values, sort_keys=True)
        names[name] = distinct.setdefault(text, name)
    models = [{"name": n, "config": configs[n]} for n in dict.fromkeys(names.values())]
    logger.info(
        f"latency table: timing {len(models)} models on vLLM with {python} "
        f"(batch {config.latency_batch}, {config.latency_dtype}); a rerun resumes"
    )
    measured = time_on_vllm(python, models, config.latency_settings(), path)
    return {name: measured[first] for name, first in names.items()}


def time_on_vllm(python: str, models: list[dict], settings: dict, path: Path) -> dict:
    """:func:`darwin_modifier.latency.measure.measure` in the serve environment:
    ``{name: times}`` for models given as ``{"name", "config"}`` or ``{"name",
    "path"}``. ``path`` names the spec and result files (a rerun resumes)."""
    spec_path = path.with_suffix(".spec.json")
    out = path.with_suffix(".times.json")
    write_json(spec_path, {"settings": settings, "models": models})
    command = [
        python,
        "-m",
        "darwin_modifier.latency.measure",
        str(spec_path),
        str(out),
    ]
    run = subprocess.run(command, stdin=subprocess.DEVNULL)
    if run.returncode != 0:
        raise RuntimeError(
            f"timing models on vLLM failed (exit {run.returncode}; its output is "
            f"above): {' '.join(command)}"
        )
    measured = json.loads(out.read_text())["times"]
    spec_path.unlink()
    out.unlink()
    return measured


def _engine_identity(python: str) -> dict:
    command = [python, "-m", "darwin_modifier.latency.measure", "--identity"]
    try:
        run = subprocess.run(
            command, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
    except OSError as err:
        raise ValueError(
            f"serve_python {python!r} cannot be run ({err}); set serve_python (or "
            f"{SERVE_PYTHON_ENV}) to the serve environment's python, e.g. "
            ".venv-serve/bin/python"
        ) from err
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:
        raise ValueError(
            f"serve_python {python!r} cannot run vLLM with darwin-modifier (exit "
            f"{run.returncode}: {run.stderr.strip()[-500:]}); install the serve "
            "environment (make setup) or point serve_python at it"
        )
    return json.loads(lines[-1])


def _only_cached(cache: Path, identity: dict) -> LatencyTable:
    """Without vLLM at hand: the one cached table measured for this setup."""
    found = []
    for path in sorted(cache.glob("*.json")):
        if path.name.endswith((".spec.json", ".times.json")):
            continue
        table = LatencyTable.load(path)
        if all(table.identity.get(k) == v for k, v in identity.items()):
            found.append((path, table))
    if len(found) == 1:
        path, table = found[0]
        logger.info(
            f"latency table: {path} (cached; {table.identity['engine']} on "
            f"{table.identity['device']})"
        )
        return table
    if not found:
        raise ValueError(
            "target_speedup needs a latency table measured on vLLM, and none is cached "
            f"in {cache} for these settings; set serve_python (or {SERVE_PYTHON_ENV}) "
            "to the serve environment's python (e.g. .venv-serve/bin/python) to "
            "measure it, or give latency_table"
        )
    listed = ", ".join(f"{p.name} ({t.identity['device']})" for p, t in found)
    raise ValueError(
        f"several cached latency tables fit these settings ({listed}); set "
        f"serve_python to measure for this engine, or choose one with latency_table"
    )
