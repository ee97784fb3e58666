"""torchrun support: the same training command on N processes, DDP or FSDP2, gloo on CPU and NCCL on
GPU. Outside torchrun every helper here is a no-op, so the loop has one code path.

State for checkpoints is gathered as *full* state dicts (torch.distributed.checkpoint's
`get_state_dict`), so a checkpoint written by 2 FSDP ranks resumes on 1 process and vice versa.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> None:
    """Join the process group torchrun describes (once)."""
    if launched_by_torchrun() and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))


def local_device(requested: str) -> torch.device:
    """`auto`: this rank's GPU under torchrun when there is one, else the CPU."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(requested)


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def wrap(model: nn.Module, strategy: str) -> nn.Module:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for module in model.modules():
            if type(module).__name__ == "Block":
                fully_shard(module)
        fully_shard(model)
        return model
    return nn.parallel.DistributedDataParallel(model)


def maybe_no_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
    """Skip DDP's gradient all-reduce on all but the last micro-batch of an accumulation."""
    if not sync and isinstance(model, nn.parallel.DistributedDataParallel):
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def mean_across_ranks(value: Tensor) -> float:
    if dist.is_available() and dist.is_initialized():
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return float(value)


def sum_across_ranks(value: Tensor) -> float:
    if dist.is_available() and dist.is_initialized():
        value = value.detach().clone()
        dist.all_reduce(value)
    return float(value)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_path(path: Path | None) -> Path:
    """Rank 0's checkpoint folder, told to every rank."""
    if dist.is_available() and dist.is_initialized():
        box = [str(path) if path is not None else ""]
        dist.broadcast_object_list(box, src=0)
        path = Path(box[0])
    assert path is not None
    return path


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Whole (unsharded, CPU) model and optimizer state, keyed by parameter names."""
    return get_state_dict(model, optimizer, options=_FULL)


def load_full_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_state: dict[str, Tensor],
    optim_state: dict[str, Any],
) -> None:
    """Put saved full state back (each rank keeps its shard under FSDP); `model_state` may hold only
    the trainable tensors: the frozen ones were rebuilt the same way the first run built them."""
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_state_dict(
        model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state, options=options
    )


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
