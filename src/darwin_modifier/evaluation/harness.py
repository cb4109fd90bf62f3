"""lm-eval on several checkpoints side by side: ``darwin-modifier eval``.

Each model runs through lm-eval's own command line (``python -m lm_eval``) in a fresh
process, exactly as a user would type it, so the figures are lm-eval's and the engine
of one model (a vLLM instance holds its memory until the process ends) never meets the
next one. The default task is the local multiple-choice task of
:mod:`~darwin_modifier.evaluation.mc_task`; users with hub access pass lm-eval's names
(the paper's suite: :data:`PAPER_TASKS`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from darwin_modifier.artifacts.atomic import write_json
from darwin_modifier.evaluation.mc_task import TASK_NAME, write_task

PAPER_TASKS = "sciq,piqa,winogrande,arc_easy,arc_challenge,hellaswag,logiqa,boolq,mmlu"
BACKENDS = ("hf", "vllm")


def lm_eval_command(
    model_dir: str | Path,
    tasks: str,
    backend: str,
    output_path: Path,
    include_path: Path | None = None,
    batch_size: str = "8",
    model_args: str = "",
    limit: int | None = None,
) -> list[str]:
    """The ``lm_eval`` command line for one checkpoint."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: choose one of {BACKENDS}")
    args = f"pretrained={Path(model_dir).resolve()}" + (
        f",{model_args}" if model_args else ""
    )
    command = [sys.executable, "-m", "lm_eval", "--model", backend]
    command += ["--model_args", args, "--tasks", tasks, "--batch_size", batch_size]
    command += ["--output_path", str(output_path)]
    if include_path is not None:
        command += ["--include_path", str(include_path)]
    if limit is not None:
        command += ["--limit", str(limit)]
    return command


def _read_results(output_path: Path) -> dict:
    """lm-eval writes ``<output_path>/<model name>/results_<time>.json``."""
    found = sorted(output_path.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise RuntimeError(f"lm-eval wrote no results under {output_path}")
    report = json.loads(found[-1].read_text())
    results = {}
    for task, metrics in report["results"].items():
        values = {
            key.split(",")[0]: value
            for key, value in metrics.items()
            if "," in key and isinstance(value, int | float)
        }
        values["n"] = report.get("n-samples", {}).get(task, {}).get("effective")
        results[task] = values
    return results


def compare(
    models: dict[str, str],
    out_dir: str | Path,
    tasks: str = TASK_NAME,
    backend: str = "hf",
    num_items: int = 200,
    seed: int = 0,
    batch_size: str = "8",
    model_args: str = "",
    limit: int | None = None,
) -> dict:
    """Run every model on ``tasks``; write ``out_dir/lm_eval_<backend>.json``."""
    out_dir = Path(out_dir)
    include = None
    if TASK_NAME in tasks.split(","):
        include = write_task(out_dir / "tasks", num_items=num_items, seed=seed)
    table = {
        "backend": backend,
        "tasks": tasks,
        "model_args": model_args,
        "models": {},
    }
    for name, model_dir in models.items():
        output_path = out_dir / "lm_eval" / backend / name
        command = lm_eval_command(
            model_dir,
            tasks,
            backend,
            output_path,
            include,
            batch_size,
            model_args,
            limit,
        )
        run = subprocess.run(command, stdin=subprocess.DEVNULL)  # lm-eval's own log
        if run.returncode != 0:
            raise RuntimeError(
                f"lm-eval failed on {name} ({model_dir}) with exit code "
                f"{run.returncode}; its output is above. The command: "
                + " ".join(command)
            )
        table["models"][name] = {
            "path": str(model_dir),
            "command": ["lm_eval", *command[3:]],
            "results": _read_results(output_path),
        }
    write_json(out_dir / f"lm_eval_{backend}.json", table)
    return table


def format_table(table: dict) -> str:
    """One row per model, task and accuracy metric, for the terminal."""
    rows = [f"{'model':<12} {'task':<22} {'metric':<10} {'value':>7} {'n':>5}"]
    for name, entry in table["models"].items():
        for task, metrics in entry["results"].items():
            for metric in ("acc", "acc_norm"):
                if metric in metrics:
                    rows.append(
                        f"{name:<12} {task:<22} {metric:<10} "
                        f"{metrics[metric]:>7.3f} {metrics['n'] or '-':>5}"
                    )
    return "\n".join(rows)
