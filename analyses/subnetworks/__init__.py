"""Subnetworks: what RL changed in the weights (RESEARCH.md section 2, Mukherjee et al. 2025).

Streaming weight diff straight from safetensors files (no model is instantiated): updated
fraction (1 - sparsity) at three tolerances per tensor / layer / module kind, update rank,
spectral shift and principal angles, overlap of updated sets across runs against the random
baseline, consensus over N runs, SFT beside RL; changed masks as packed bits; ``patch`` builds a
copy of the base with the RL values inside a mask.

Public names:
    diff_weights(base, rl, **settings) -> WeightDiff
    diff_runs(base, [rl0, rl1], sft=None, **settings) -> RunFamilyDiff   (.to_dict(): results.json)
    DiffSettings, WeightDiff, RunFamilyDiff, RunOverlap, Consensus, TensorDiff, TiedEmbeddings,
    UpdatedCounts, TOLERANCE_KINDS, ENGINES, prepare_engine (load the numba kernels up front)
    SafetensorsCheckpoint(source)                 # tensor-by-tensor reader
    module_kind(name), layer_index(name), MODULE_KINDS
    update_rank, top_singular_subspaces, principal_angles_deg, spectral_shift, SpectralShift
    PackedMasks, pack_mask, unpack_mask, save_masks, load_masks, patch
"""

from .change_counts import (
    BF16_RTOL,
    ENGINES,
    TOLERANCE_KINDS,
    UpdatedCounts,
    compare_tensor,
    prepare_engine,
    rounded_atol_threshold,
)
from .checkpoint_files import (
    CheckpointNotFoundError,
    SafetensorsCheckpoint,
    resolve_checkpoint_files,
)
from .masks import (
    PackedMasks,
    load_masks,
    pack_mask,
    patch,
    read_mask_metadata,
    save_masks,
    unpack_mask,
)
from .matrix_spectra import (
    SpectralShift,
    principal_angles_deg,
    singular_values,
    spectral_shift,
    top_singular_subspaces,
    update_rank,
)
from .parameter_names import MODULE_KINDS, layer_index, module_kind
from .weight_diff import (
    Consensus,
    DiffSettings,
    RunFamilyDiff,
    RunOverlap,
    TensorDiff,
    TiedEmbeddings,
    WeightDiff,
    diff_runs,
    diff_weights,
    overlap_of,
)

__all__ = [
    "BF16_RTOL", "ENGINES", "TOLERANCE_KINDS", "UpdatedCounts", "compare_tensor", "prepare_engine",
    "rounded_atol_threshold",
    "CheckpointNotFoundError", "SafetensorsCheckpoint", "resolve_checkpoint_files",
    "PackedMasks", "load_masks", "pack_mask", "patch", "read_mask_metadata", "save_masks", "unpack_mask",
    "SpectralShift", "principal_angles_deg", "singular_values", "spectral_shift", "top_singular_subspaces",
    "update_rank",
    "MODULE_KINDS", "layer_index", "module_kind",
    "Consensus", "DiffSettings", "RunFamilyDiff", "RunOverlap", "TensorDiff", "TiedEmbeddings", "WeightDiff",
    "diff_runs", "diff_weights", "overlap_of",
]
