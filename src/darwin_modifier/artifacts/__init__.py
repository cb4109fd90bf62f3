"""Resumable artefacts: atomic writes, identities that bind a directory to its inputs,
one run per directory, and the plots people look at. It imports nothing else of the
package but ``distributed`` (which rank writes), so the database, the search and
training all share it."""

from darwin_modifier.artifacts.atomic import replacing, write_json
from darwin_modifier.artifacts.identity import (
    combine_row_digests,
    config_digest,
    digest,
    require_same,
    row_digests,
    tokens_digest,
    weights_digest,
)
from darwin_modifier.artifacts.lock import holding

__all__ = [
    "combine_row_digests",
    "config_digest",
    "digest",
    "holding",
    "replacing",
    "require_same",
    "row_digests",
    "tokens_digest",
    "weights_digest",
    "write_json",
]
