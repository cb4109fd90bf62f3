"""A local multiple-choice task for lm-eval: the true continuation of held-out text.

The paper's zero-shot suite (SciQ, PIQA, ARC, ...) needs the dataset hub, which these
machines cannot reach. This task asks the same kind of question (which continuation is
most likely?) of text no search or training step saw: each item is a passage of
held-out text, its true next words, and the same number of words taken from three
other places in the held-out split, in a seeded random order. Items are cut from the
original text (whitespace kept) by words, so they do not depend on any tokenizer.

It is written as an ordinary lm-eval task (YAML over a local JSON-lines file), so every
lm-eval backend runs it: ``lm_eval --include_path DIR --tasks darwinlm_docs_mc``.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from itertools import islice
from pathlib import Path

from darwin_modifier.artifacts.atomic import replacing
from darwin_modifier.data.windows import load_texts

TASK_NAME = "darwinlm_docs_mc"
NUM_CHOICES = 4
_STREAMED_DOCUMENTS = 2_000

_TASK_YAML = """\
# Made by darwin_modifier.evaluation.mc_task: {num_items} items from the held-out
# split of {source!r} (seed {seed}).
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data_file}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def _words(text: str) -> list[str]:
    """Words with their trailing whitespace, so that joining restores the text."""
    return re.findall(r"\S+\s*", text)


def build_items(
    texts: list[str],
    num_items: int,
    context_words: int = 48,
    continuation_words: int = 12,
    seed: int = 0,
) -> list[dict]:
    """``num_items`` questions: context, four choices, and the true one's index.

    Distractors come from other documents (distinct texts), and no two choices of an
    item read the same once whitespace is ignored, so every item has one answer.
    """
    if num_items < 1:
        raise ValueError(f"num_items must be at least 1, got {num_items}")
    span = context_words + continuation_words
    documents = [_words(t) for t in dict.fromkeys(texts)]  # distinct texts, in order
    documents = [w for w in documents if len(w) >= span]
    if len(documents) < NUM_CHOICES:
        raise ValueError(
            f"{len(documents)} distinct held-out documents have {span} words; "
            f"{NUM_CHOICES} are needed (true continuation + distractors from others): "
            "lower context_words / continuation_words or use a larger held-out split"
        )
    rng = random.Random(seed)

    def cut(words: list[str], start: int, length: int) -> str:
        return "".join(words[start : start + length]).strip()

    def same_text(a: str, b: str) -> bool:
        return a.split() == b.split()

    items = []
    for _ in range(num_items):
        source = rng.randrange(len(documents))
        words = documents[source]
        start = rng.randrange(len(words) - span + 1)
        context = cut(words, start, context_words)
        choices = [cut(words, start + context_words, continuation_words)]
        for _attempt in range(100 * NUM_CHOICES):
            if len(choices) == NUM_CHOICES:
                break
            other = rng.randrange(len(documents))
            if other == source:
                continue
            at = rng.randrange(len(documents[other]) - continuation_words + 1)
            piece = cut(documents[other], at, continuation_words)
            if not any(same_text(piece, c) for c in choices):
                choices.append(piece)
        else:
            if len(choices) < NUM_CHOICES:
                raise ValueError(
                    "the held-out documents repeat themselves too much to give "
                    f"{NUM_CHOICES - 1} distinct distractors; use another source"
                )
        true = choices[0]
        rng.shuffle(choices)
        items.append(
            {"context": context, "choices": choices, "label": choices.index(true)}
        )
    return items


def write_task(
    directory: str | Path,
    source: str = "python-docs",
    num_items: int = 200,
    seed: int = 0,
    text_column: str = "text",
) -> Path:
    """Write the items and the task YAML into ``directory`` (lm-eval's include path)."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    texts = load_texts(source, "heldout", text_column)
    if not isinstance(texts, Sequence):  # a hub stream: its first documents suffice
        texts = list(islice(texts, _STREAMED_DOCUMENTS))
    items = build_items(texts, num_items, seed=seed)
    data_file = directory / f"{TASK_NAME}.jsonl"
    with replacing(data_file) as tmp:
        tmp.write_text("".join(json.dumps(item) + "\n" for item in items))
    yaml = _TASK_YAML.format(
        task=TASK_NAME,
        data_file=json.dumps(str(data_file)),
        num_items=num_items,
        source=source,
        seed=seed,
    )
    with replacing(directory / f"{TASK_NAME}.yaml") as tmp:
        tmp.write_text(yaml)
    return directory
