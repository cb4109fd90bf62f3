"""torch.distributed (torchrun) for the database build and the search.

Under ``torchrun`` LLM Compressor gives every rank its share of the calibration data;
:mod:`.ranks` says who is who and :mod:`.collectives` holds the few exchanges the
package needs (Hessians to the layer's owner rank, fitness values to every rank, small
objects such as per-layer stats). Without a process group every helper is the
single-process identity, so the same code runs both ways.
"""

from darwin_modifier.distributed.collectives import (
    gather_objects,
    map_round_robin,
    reduce_weighted_mean,
)
from darwin_modifier.distributed.ranks import (
    barrier,
    init_from_env,
    is_main,
    main_rank_first,
    rank,
    refuse_distributed,
    require_process_group,
    world_size,
)

__all__ = [
    "barrier",
    "gather_objects",
    "init_from_env",
    "is_main",
    "main_rank_first",
    "map_round_robin",
    "rank",
    "reduce_weighted_mean",
    "refuse_distributed",
    "require_process_group",
    "world_size",
]
