"""The `visionssm` torch.library namespace: each native op is a PyTorch custom op
`torch.ops.visionssm.<name>` (schema, fake/meta implementation, autograd, CPU and CUDA kernels), so
torch.compile keeps it in the graph and torch.export keeps it in the exported program.

Each op module defines its ops with `custom_op` next to the kernel binding; importing py.ops registers
them all (an exported .pt2 holding them loads only after `import py.ops`). Schemas cannot return
None, so an output that is not there is an empty (0,) tensor (`absent`).
"""
import torch

NAMESPACE = "visionssm"


def custom_op(name):
    """Decorator: `fn` becomes the functional (nothing mutated) op visionssm::<name>, its type hints the
    schema and its body the CPU kernel. Add the others with .register_fake/.register_autograd, and the
    CUDA kernel with .register_kernel("cuda")."""
    return torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=(), device_types="cpu")


def absent(like):
    """The value of an output that is not there (its input was None, or a residual not asked for)."""
    return like.new_empty(0)


def present(t, there):
    """Reads an output back: t if `there`, else None."""
    return t if there else None
