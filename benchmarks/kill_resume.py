"""SIGKILL ``darwin-modifier compress`` at random moments on SmolLM2; every rerun of
the same command must end at the checkpoint an uninterrupted run saves.

    python benchmarks/kill_resume.py --json results/kill_resume.json

The job is a three-stage recipe on the embedded SmolLM2-135M-Instruct (DarwinLM:
database and a 2-generation search; post-training with a checkpoint every 4 steps;
W8A8 quantization), every stage saved. One uninterrupted run is the reference; it
also times the phases. Then each chain starts from an empty directory and kills
the command once in every phase: it reruns the command, waits until the run's log
shows the phase has started, sleeps a random fraction of the phase's reference
length and sends SIGKILL (the phase actually running then is read from the log, so a
resumed run that got ahead is recorded as it was). After the last kill the command
runs to the end and the chain's result is compared with the reference: every file of
the published output (every tensor by its hash, as ``darwin-modifier verify`` reads
them), the search log and result, the training history.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from serving_harness import device_info  # noqa: E402  (this folder: a sibling)

from darwin_modifier.artifacts.checkpoint import MANIFEST, verify  # noqa: E402
from darwin_modifier.data import fetch_default_model  # noqa: E402

RECIPE = """
darwin_stage:
  darwin_modifiers:
    DarwinLMModifier:
      target_fraction: 0.5
      database_dir: db
      search_dir: search
      gqa_mode: kv_group
      mlp_multiple: 32
      generations: 2
      offspring: 4
      selection_stages:
        - {survivors: 2, train_tokens: 256, fitness_tokens: 512}
        - {survivors: 1, train_tokens: 512, fitness_tokens: 512}
      fitness: kl
      search_seq_len: 128
      fitness_pool_tokens: 1024
      train_pool_tokens: 2048
train_stage:
  train_modifiers:
    DarwinLMTrainingModifier:
      tokens: 2048
      seq_len: 128
      learning_rate: 1.0e-4
      warmup_steps: 2
      bf16_autocast: false
      checkpoint_every: 4
      eval_windows: 2
      train_dir: train
quant_stage:
  quant_modifiers:
    QuantizationModifier: {scheme: W8A8, targets: [Linear], ignore: [lm_head]}
"""

# phase -> the log line that starts it (ours or LLM Compressor's), in run order
PHASES = {
    "database": "Inferred `SequentialPipeline`",
    "search": "search: uniform parent",
    "post-training": "post-training:",
    "quantize + save": "for `QuantizationModifier`",
}


class Run:
    """One ``darwin-modifier compress`` process in ``work``; its log is watched for
    the phase markers as it is written."""

    def __init__(self, work: Path, model: Path):
        self.started = time.monotonic()
        self.seen: dict[str, float] = {}  # phase -> seconds after start
        self.log = open(work / "runs.log", "ab")
        command = [
            sys.executable,
            "-m",
            "darwin_modifier.cli",
            "compress",
            "--model",
            str(model),
            "--recipe",
            "recipe.yaml",
            "--output-dir",
            "out",
            "--num-samples",
            "16",
            "--seq-len",
            "256",
            "--save-stages",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
        self.process = subprocess.Popen(
            command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        tail = b""
        for chunk in iter(lambda: self.process.stdout.read1(65536), b""):
            self.log.write(chunk)
            tail = (tail + chunk)[-4096:]
            text = tail.decode(errors="replace")
            for phase, marker in PHASES.items():
                if phase not in self.seen and marker in text:
                    self.seen[phase] = time.monotonic() - self.started

    def current_phase(self) -> str:
        order = [p for p in PHASES if p in self.seen]
        return order[-1] if order else "start-up"

    def wait_for(self, phase: str, timeout: float = 1800) -> bool:
        """True once ``phase`` has started; False if the run ended first."""
        deadline = time.monotonic() + timeout
        while phase not in self.seen:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.reader.join(timeout=5)
                return phase in self.seen
            time.sleep(0.05)
        return True

    def kill(self) -> float:
        self.process.send_signal(signal.SIGKILL)
        self.finish()
        return time.monotonic() - self.started

    def finish(self) -> int:
        code = self.process.wait()
        self.reader.join(timeout=10)
        self.log.close()
        return code


def outcome(work: Path) -> dict:
    problems = verify(work / "out")
    if problems:
        raise RuntimeError(f"{work / 'out'}: {problems}")
    return {
        "checkpoint": json.loads((work / "out" / MANIFEST).read_text())["files"],
        "search_log": (work / "search" / "search_log.jsonl").read_text(),
        "result": json.loads((work / "search" / "result.json").read_text()),
        "training": json.loads((work / "train" / "posttrain_history.json").read_text()),
    }


def fresh(root: Path, name: str) -> Path:
    work = root / name
    work.mkdir()
    (work / "recipe.yaml").write_text(RECIPE)
    return work


def reference_run(root: Path, model: Path) -> tuple[dict, dict, float]:
    work = fresh(root, "reference")
    run = Run(work, model)
    code = run.finish()
    wall = time.monotonic() - run.started
    if code != 0:
        raise RuntimeError(f"the reference run failed ({code}); see {work}/runs.log")
    starts = [run.seen[p] for p in PHASES] + [wall]
    durations = {p: starts[i + 1] - starts[i] for i, p in enumerate(PHASES)}
    return outcome(work), durations, wall


def chain(
    root: Path, model: Path, index: int, reference: tuple[dict, dict], rng
) -> dict:
    expected, durations = reference
    work = fresh(root, f"chain{index}")
    kills = []
    for phase in PHASES:
        run = Run(work, model)
        if not run.wait_for(phase):
            run.finish()
            kills.append({"target": phase, "killed_in": None, "note": "ended first"})
            continue
        delay = rng.uniform(0, durations[phase])
        time.sleep(max(0.0, run.seen[phase] + delay - (time.monotonic() - run.started)))
        if run.process.poll() is not None:
            code = run.finish()
            kills.append({"target": phase, "killed_in": None, "note": f"exit {code}"})
            continue
        at = run.kill()
        kills.append(
            {
                "target": phase,
                "killed_in": run.current_phase(),
                "at_s": round(at, 1),
                "into_phase_s": round(at - run.seen[run.current_phase()], 1),
            }
        )
        print(f"  chain {index}: killed in {kills[-1]['killed_in']} at {at:.1f} s")
    started = time.monotonic()
    final = Run(work, model)
    code = final.finish()
    identical = code == 0 and outcome(work) == expected
    return {
        "kills": kills,
        "final_exit": code,
        "final_rerun_s": round(time.monotonic() - started, 1),
        "identical": identical,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--chains", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    model = Path(fetch_default_model())
    with tempfile.TemporaryDirectory(prefix="kill-resume-") as tmp:
        root = Path(tmp)
        expected, durations, wall = reference_run(root, model)
        print(
            f"reference run {wall:.0f} s; phases "
            + ", ".join(f"{p} {d:.0f} s" for p, d in durations.items())
        )
        chains = [
            chain(root, model, i, (expected, durations), rng)
            for i in range(args.chains)
        ]
    kills = [k for c in chains for k in c["kills"] if k["killed_in"] is not None]
    result = {
        "machine": device_info(),
        "seed": args.seed,
        "reference_s": round(wall, 1),
        "phases_s": {p: round(d, 1) for p, d in durations.items()},
        "chains": chains,
        "kills": len(kills),
        "kills_by_phase": {
            p: sum(k["killed_in"] == p for k in kills) for p in ["start-up", *PHASES]
        },
        "identical_chains": sum(c["identical"] for c in chains),
    }
    print(f"\n{'phase':<16} {'kills':>5}")
    for phase, count in result["kills_by_phase"].items():
        print(f"{phase:<16} {count:>5}")
    print(
        f"\n{result['kills']} kills in {len(chains)} chains; "
        f"{result['identical_chains']} of {len(chains)} chains identical to the "
        "uninterrupted run"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
