"""Load a base/RL pair, capture activations to disk, and intervene on the residual stream.

The public names (stable; see API.md):
    load_model, load_pair, Model, ModelPair        loading (safetensors only)
    capture, ActivationStore                       streaming capture and lazy reading
    add_to_residual, ablate_direction, edit_block_output   scoped interventions (every forward path)
    generate                                       seeded, batched KV-cached generation
    resolve_hook_names, TwinlensError
"""

from hooks.capturing import capture
from hooks.errors import TwinlensError
from hooks.generation import generate
from hooks.interventions import ablate_direction, add_to_residual, edit_block_output
from hooks.loading import Model, ModelPair, load_model, load_pair, resolve_hook_names
from hooks.store import ActivationStore

__all__ = [
    "ActivationStore",
    "Model",
    "ModelPair",
    "TwinlensError",
    "ablate_direction",
    "add_to_residual",
    "capture",
    "edit_block_output",
    "generate",
    "load_model",
    "load_pair",
    "resolve_hook_names",
]
