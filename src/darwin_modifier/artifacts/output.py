"""The output checkpoint appears whole or not at all, and never over someone's files.

A run saves into ``<output>.partial`` (a sibling, so the final rename stays on one
filesystem), seals it (:mod:`~darwin_modifier.artifacts.checkpoint`) and only then
swaps it in place of ``<output>``. A kill at any moment leaves either the previous
checkpoint or the new one at ``<output>``, never a mix: an older sharded save's
``model.safetensors.index.json`` cannot survive next to a new single-file save. The
siblings ``.partial`` and ``.replaced`` are this package's own and are cleared when a
run starts. A non-empty ``<output>`` that is not a sealed checkpoint of ours is refused
before any work: it may be anything, and the swap would delete it. Two runs never
publish to one output at once (a lock ``.<output>.lock`` beside it), and a run's own
database, search or training directory may not lie inside its output, which the swap
replaces (:func:`refuse_work_dirs_inside`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from darwin_modifier.artifacts import lock
from darwin_modifier.artifacts.checkpoint import MANIFEST, seal
from darwin_modifier.distributed import barrier, is_main


def refuse_foreign_output(output_dir: str | os.PathLike) -> None:
    output = Path(output_dir)
    if output.exists() and not output.is_dir():
        raise ValueError(f"output_dir {output} is a file; give a directory")
    if output.is_dir() and any(output.iterdir()) and not (output / MANIFEST).exists():
        raise ValueError(
            f"output_dir {output} is not empty and is not a checkpoint saved by "
            f"darwin-modifier (no {MANIFEST}); the save would replace it: give an "
            "empty or new directory, or delete this one"
        )


@contextmanager
def publishing(output_dir: str | os.PathLike | None) -> Iterator[Path | None]:
    """Yield the directory to save into; when the block ends without an error, it is
    sealed and becomes ``output_dir`` (on the main rank; every rank waits)."""
    if output_dir is None:
        yield None
        return
    output = Path(output_dir)
    with lock.holding(output, "output_dir", beside=True):
        with _published(output) as staging:
            yield staging


@contextmanager
def _published(output: Path) -> Iterator[Path]:
    staging, replaced = _siblings(output)
    if is_main():
        if replaced.exists() and not output.exists():
            os.replace(replaced, output)  # killed mid-swap: the previous one back
        refuse_foreign_output(output)
        for leftover in (staging, replaced):  # of a run that was killed
            shutil.rmtree(leftover, ignore_errors=True)
        staging.mkdir(parents=True)
    barrier()
    yield staging
    if is_main():
        seal(staging)
        if output.exists():
            os.replace(output, replaced)
        os.replace(staging, output)
        shutil.rmtree(replaced, ignore_errors=True)
    barrier()


def refuse_work_dirs_inside(
    output_dir: str | os.PathLike | None, work_dirs: dict[str, str]
) -> None:
    """``work_dirs``: field name -> directory a run keeps its resumable state in."""
    if output_dir is None:
        return
    output = Path(output_dir).resolve()
    for field, directory in work_dirs.items():
        path = Path(directory).resolve()
        if path == output or output in path.parents:
            raise ValueError(
                f"{field} {directory} is inside output_dir {output_dir}, which is "
                "replaced whole when the run finishes; put it beside the output"
            )


def _siblings(output: Path) -> tuple[Path, Path]:
    return (
        output.with_name(output.name + ".partial"),
        output.with_name(output.name + ".replaced"),
    )
