"""Beyond one process: tensor-parallel inference (``model``: a layer as N shards and one reduction;
``shard``: the split and each rank's slices of a checkpoint; ``comm``: the collectives and the in-process
group; ``mpi``: the MPI communicator, optional extra ``pycohere[mpi]``) and golden bundles as a Dask job
(``golden_dask``, optional extra ``pycohere[dask]``). mpi4py and dask are imported only when used.

May import: ``pycohere.text`` and below, and the applications (``pycohere.golden``); never ``pycohere.cli``.
"""
from .comm import Communicator, LocalGroup, sum_in_rank_order
from .model import (ShardedKVCache, TensorParallelAutoModelForCausalLM, TensorParallelCohereForCausalLM, TensorParallelCohereModel, VocabParallelWeight,
                    communicator, from_pretrained, rank_layer)
from .shard import SPLITS, ShardPlan, load_shard

__all__ = ["Communicator", "LocalGroup", "SPLITS", "ShardPlan", "ShardedKVCache", "TensorParallelAutoModelForCausalLM", "TensorParallelCohereForCausalLM",
           "TensorParallelCohereModel", "VocabParallelWeight", "communicator", "from_pretrained", "load_shard",
           "rank_layer", "sum_in_rank_order"]
