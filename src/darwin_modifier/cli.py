"""`darwin-modifier ...`: oneshot with a DarwinLM recipe, for people who do not write
Python."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="darwin-modifier", description=__doc__)
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    compress = commands.add_parser(
        "compress",
        help="run a recipe through oneshot, one oneshot per *_stage (DarwinLM, "
        "training, quantization)",
    )
    compress.add_argument("--model", required=True, help="HF model id or directory")
    compress.add_argument("--recipe", required=True, help="YAML recipe path")
    compress.add_argument("--output-dir", required=True)
    compress.add_argument(
        "--dataset",
        default="python-docs",
        help="calibration text: 'python-docs', a hub dataset 'name[:config]', "
        "or a local text file / directory",
    )
    compress.add_argument("--text-column", default="text")
    compress.add_argument("--num-samples", type=_positive, default=64)
    compress.add_argument("--seq-len", type=_positive, default=512)
    compress.add_argument("--seed", type=int, default=0)
    compress.add_argument(
        "--save-stages",
        action="store_true",
        help="also save each earlier stage's model to OUTPUT_DIR/<stage>",
    )

    train = commands.add_parser(
        "train", help="post-compression training of a checkpoint"
    )
    train.add_argument("--model", required=True, help="(shrunk) checkpoint to train")
    train.add_argument("--output-dir", required=True)
    train.add_argument("--dataset", default="python-docs")
    train.add_argument("--text-column", default="text")
    train.add_argument("--tokens", type=_positive, default=1_000_000)
    train.add_argument("--seq-len", type=_positive, default=512)
    train.add_argument("--batch-size", type=_positive, default=1)
    train.add_argument("--lr", type=float, default=1e-5)
    train.add_argument("--loss", choices=["ce", "kd"], default="ce")
    train.add_argument("--teacher", help="dense model for --loss kd")
    train.add_argument("--kd-topk", type=int, default=None)

    evaluate = commands.add_parser(
        "eval",
        help="lm-eval on several checkpoints side by side (default: the local "
        "multiple-choice task; any lm-eval task names where the hub is reachable)",
    )
    evaluate.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="a checkpoint to evaluate, named in the table; repeat for each",
    )
    evaluate.add_argument("--tasks", default="darwinlm_docs_mc")
    evaluate.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    evaluate.add_argument("--out", default="results/eval")
    evaluate.add_argument(
        "--num-items", type=int, default=200, help="items of the local task"
    )
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--batch-size", default="8")
    evaluate.add_argument(
        "--model-args", default="", help="extra lm-eval model_args, e.g. dtype=float32"
    )
    evaluate.add_argument("--limit", type=int, help="items per task (lm-eval --limit)")

    plan = commands.add_parser(
        "plan",
        help="peak memory of each phase of a recipe on a model, from its config.json "
        "alone (no weights); exits 1, naming the setting to change, if it cannot fit",
    )
    plan.add_argument("--recipe", required=True)
    plan.add_argument("--model", required=True, help="HF model id or directory")
    plan.add_argument(
        "--gpu-mem",
        type=float,
        help="GPU memory in GB as cards are labelled (80 for an H100, 141 for an "
        "H200); default: this machine's GPU, or none (CPU)",
    )
    plan.add_argument(
        "--host-mem",
        type=float,
        help="host memory in GB (default: what this machine has available)",
    )
    plan.add_argument("--num-samples", type=_positive, default=64)
    plan.add_argument("--seq-len", type=_positive, default=512)
    plan.add_argument("--json", help="also write the plan here")

    verify = commands.add_parser(
        "verify",
        help="check a saved checkpoint against its manifest (every file's size, every "
        "tensor's hash); exits 1 naming what differs, is missing or does not belong",
    )
    verify.add_argument("directory", help="a checkpoint saved by compress or train")

    latency = commands.add_parser(
        "latency",
        help="the latency table of a database: every level's time per block on vLLM "
        "(measured through the serve environment, cached in the database directory)",
    )
    latency.add_argument("--database", required=True, help="a complete database dir")
    latency.add_argument("--model", required=True, help="the dense model (its config)")
    latency.add_argument(
        "--serve-python",
        help="the serve environment's python (default: $DARWIN_SERVE_PYTHON, or this "
        "python if it has vLLM)",
    )
    latency.add_argument("--batch", type=_positive, default=16)
    latency.add_argument("--input-len", type=_positive, default=128)
    latency.add_argument("--output-len", type=_positive, default=64)
    latency.add_argument("--repeats", type=_positive, default=3)
    latency.add_argument("--dtype", default="bfloat16")
    latency.add_argument(
        "--enforce-eager",
        action="store_true",
        help="time vLLM without compile (what you serve with enforce_eager=True)",
    )

    commands.add_parser(
        "fetch", help="fetch the embedded default model + corpus; print the model path"
    )

    args = parser.parse_args(argv)
    try:
        _run(args, parser)
    except (ValueError, RuntimeError, OSError) as err:
        # a refusal (bad recipe, data, model, directory) is the message; the
        # traceback is for bugs, behind --debug
        if args.debug:
            raise
        print(f"darwin-modifier {args.command}: error: {err}", file=sys.stderr)
        sys.exit(1)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _run(args, parser) -> None:
    if args.command == "compress":
        from darwin_modifier.modifier.chain import run_oneshot_stages

        run_oneshot_stages(
            args.model,
            args.recipe,
            args.output_dir,
            dataset=args.dataset,
            num_samples=args.num_samples,
            seq_len=args.seq_len,
            seed=args.seed,
            text_column=args.text_column,
            save_stages=args.save_stages,
        )
    elif args.command == "train":
        _train(args)
    elif args.command == "eval":
        _evaluate(args, parser)
    elif args.command == "plan":
        sys.exit(_plan(args))
    elif args.command == "verify":
        sys.exit(_verify(args.directory))
    elif args.command == "latency":
        _latency(args)
    elif args.command == "fetch":
        from darwin_modifier.data import fetch_corpus, fetch_default_model

        fetch_corpus()
        print(fetch_default_model())


def _train(args) -> None:
    """The recipe stage, run on its own: one oneshot with DarwinLMTrainingModifier."""
    import os

    from darwin_modifier.modifier import DarwinLMTrainingModifier
    from darwin_modifier.modifier.chain import run_oneshot_stages
    from darwin_modifier.modifier.posttrain import refuse_distributed_training

    refuse_distributed_training()

    modifier = DarwinLMTrainingModifier(
        tokens=args.tokens,
        loss=args.loss,
        teacher=args.teacher,
        kd_topk=args.kd_topk,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        dataset=args.dataset,
        text_column=args.text_column,
        # beside the output, not in it: the output appears only when complete
        train_dir=os.path.normpath(args.output_dir) + "-train",
    )
    run_oneshot_stages(
        args.model,
        [modifier],
        args.output_dir,
        dataset=args.dataset,
        num_samples=1,  # oneshot wants calibration data; the trainer brings its own
        seq_len=args.seq_len,
        text_column=args.text_column,
    )


def _latency(args) -> None:
    from transformers import AutoConfig

    from darwin_modifier.latency.build import latency_table
    from darwin_modifier.latency.config import LatencyConfig
    from darwin_modifier.pipeline import load_database

    config = LatencyConfig(
        serve_python=args.serve_python,
        latency_batch=args.batch,
        latency_input_len=args.input_len,
        latency_output_len=args.output_len,
        latency_repeats=args.repeats,
        latency_dtype=args.dtype,
        latency_enforce_eager=args.enforce_eager,
    )
    dense_config = AutoConfig.from_pretrained(args.model)
    store = load_database(args.database, dense_config)
    table = latency_table(store, dense_config, config)
    print(table.format(store.ladders))


def _verify(directory: str) -> int:
    from darwin_modifier.artifacts.checkpoint import verify

    problems = verify(directory)
    for problem in problems:
        print(f"{directory}: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"{directory}: every file and tensor is as it was saved")
    return 0


def _plan(args) -> int:
    import json

    from darwin_modifier.memory import ModelSpec, machine_capacity, plan_run, refusal
    from darwin_modifier.modifier.chain import split_stages

    darwin = training = None
    for stage in split_stages(args.recipe):
        for modifier in stage.modifiers:
            role = getattr(type(modifier), "darwinlm_role", None)
            if role == "prune":
                darwin = modifier
            elif role == "train":
                training = modifier
    if darwin is None and training is None:
        print(f"{args.recipe}: no DarwinLM modifier, nothing to plan", file=sys.stderr)
        return 2
    spec = ModelSpec.from_pretrained(args.model)
    device, gpu, host = machine_capacity()
    if args.gpu_mem is not None:
        device, gpu = "cuda", int(args.gpu_mem * 1e9)
    if args.host_mem is not None:
        host = int(args.host_mem * 1e9)
    run = dict(
        calibration_tokens=args.num_samples * args.seq_len,
        calibration_seq_len=args.seq_len,
        device=device,
        device_capacity=gpu,
        host_capacity=host,
    )
    plan = plan_run(spec, darwin, training, **run)
    print(plan.table())
    reason = refusal(plan, spec, darwin, training, **run)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({**plan.to_dict(), "refusal": reason}, out, indent=1)
    if reason:
        print(f"does not fit: {reason}", file=sys.stderr)
        return 1
    print("fits")
    return 0


def _evaluate(args, parser) -> None:
    from darwin_modifier.evaluation.harness import compare, format_table

    models = {}
    for given in args.model:
        name, sep, path = given.partition("=")
        if not sep or not name or not path:
            parser.error(f"--model {given!r}: write NAME=DIR, e.g. dense=./dense")
        if name in models:
            parser.error(f"--model {name}=... given twice; name each model once")
        models[name] = path
    if args.num_items < 1:
        parser.error(f"--num-items {args.num_items}: give at least 1")
    table = compare(
        models,
        args.out,
        tasks=args.tasks,
        backend=args.backend,
        num_items=args.num_items,
        seed=args.seed,
        batch_size=args.batch_size,
        model_args=args.model_args,
        limit=args.limit,
    )
    print(format_table(table))


if __name__ == "__main__":
    main(sys.argv[1:])
