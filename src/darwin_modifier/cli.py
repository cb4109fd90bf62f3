"""`darwin-modifier ...`: oneshot with a DarwinLM recipe, for people who do not write Python."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="darwin-modifier", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    compress = commands.add_parser("compress", help="run a recipe through oneshot")
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
    compress.add_argument("--num-samples", type=int, default=64)
    compress.add_argument("--seq-len", type=int, default=512)
    compress.add_argument("--seed", type=int, default=0)

    fetch = commands.add_parser("fetch", help="fetch the embedded default model + corpus")
    fetch.add_argument("--print", action="store_true", help="print the model directory")

    args = parser.parse_args(argv)
    if args.command == "compress":
        from darwin_modifier.modifier.entry import run_oneshot

        run_oneshot(
            args.model,
            args.recipe,
            args.output_dir,
            dataset=args.dataset,
            num_samples=args.num_samples,
            seq_len=args.seq_len,
            seed=args.seed,
            text_column=args.text_column,
        )
    elif args.command == "fetch":
        from darwin_modifier.data import fetch_corpus, fetch_default_model

        fetch_corpus()
        print(fetch_default_model())


if __name__ == "__main__":
    main(sys.argv[1:])
