"""Resumable artefacts: atomic writes, identities that bind a directory to its inputs,
and the plots people look at. A leaf: it imports nothing else of the package, so the
database, the search and training all share it."""

from darwin_modifier.artifacts.atomic import replacing, write_json
from darwin_modifier.artifacts.identity import (
    combine_row_digests,
    digest,
    require_same,
    row_digests,
    tokens_digest,
)

__all__ = [
    "combine_row_digests",
    "digest",
    "replacing",
    "require_same",
    "row_digests",
    "tokens_digest",
    "write_json",
]
