"""Write a file so that a kill at any moment leaves the old file or the new one.

Everything a long job saves to resume from (database layers and manifest, the search
state, training checkpoints) goes through :func:`replacing`: the writer fills a
``.partial`` sibling and the rename publishes it in one step.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it atomically becomes ``path``."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        yield partial
        os.replace(partial, path)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise OSError(
            err.errno,
            f"no space left to write {path}; free some and run the same command "
            "again: what was finished is kept and the run resumes from it",
        ) from err
    finally:
        partial.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, value, indent: int | None = 1) -> None:
    with replacing(path) as partial:
        partial.write_text(json.dumps(value, indent=indent))
