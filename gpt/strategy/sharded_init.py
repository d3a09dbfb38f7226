"""Build a model that no rank ever holds whole, with exactly the weights a plain build gives.

A plain build (`seed_everything(seed); GPT(cfg)`) draws every weight from the CPU
generator, in the order the constructor initialises them: nn.Linear's own
kaiming_uniform_ first, then GPT's normal_ re-initialisation. Sharded strategies (FSDP,
ZeRO-3) must end with the same weights, or their losses could not match a single
process, and a checkpoint's meaning would depend on the world size.

`ShardedInit` makes that possible without the whole model in memory. While the model is
constructed, an initialiser that targets a parameter this rank holds only a shard of
(a meta placeholder under FSDP, a partitioned parameter under ZeRO-3) is run on a
full-size CPU scratch tensor instead: the generator advances exactly as in a plain build,
the strategy keeps its shard of the result, and the scratch is freed. At most one
parameter is whole at any moment: for GPT-2 124M the largest, the tied embedding
(50304 x 768, 155 MB in fp32), against 498 MB for the model.

Only initialisers that overwrite the whole tensor can be followed this way (torch.nn.init's
functions, and the tensor methods in OVERWRITING); any other in-place change of a sharded
parameter during construction is refused with a GPTError rather than silently lost.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from gpt.errors import GPTError

# tensor methods that overwrite every element whatever the tensor held
OVERWRITING = {"normal_", "uniform_", "zero_", "fill_", "copy_", "random_", "bernoulli_", "exponential_",
               "geometric_", "log_normal_", "cauchy_"}

FullShape = Callable[[torch.Tensor], Optional[torch.Size]]  # a sharded parameter's whole shape; None: not sharded
Keep = Callable[[torch.Tensor, torch.Tensor], None]  # (sharded parameter, its whole new value on CPU)


class ShardedInit(TorchFunctionMode):
    """Inside: initialisers of sharded parameters run on a whole CPU scratch, and `keep` takes this rank's part."""

    def __init__(self, full_shape: FullShape, keep: Keep):
        super().__init__()
        self.full_shape = full_shape
        self.keep = keep

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # torch.nn.init's functions arrive here with the tensor as keyword `tensor`; tensor methods as args[0]
        target = args[0] if args else kwargs.get("tensor")
        shape = self.full_shape(target) if isinstance(target, torch.Tensor) else None
        name = getattr(func, "__name__", "")
        if shape is None or not name.endswith("_") or name.startswith("__"):
            return func(*args, **kwargs)  # not a sharded parameter, or not a change to one (shape, dim, grad_fn...)
        if name not in OVERWRITING and getattr(func, "__module__", "") != "torch.nn.init":
            raise GPTError(f"the model changes a parameter in place with {name} while it is built; a sharded build "
                           f"(FSDP, ZeRO-3) follows only initialisers that overwrite the whole tensor "
                           f"(torch.nn.init's, or {', '.join(sorted(OVERWRITING))}). Initialise it with one of those, "
                           "or train with --strategy=ddp.")
        full = torch.empty(shape, dtype=target.dtype)  # on CPU, where a plain build draws its weights
        if args:
            func(full, *args[1:], **kwargs)
        else:
            func(**{**kwargs, "tensor": full})
        self.keep(target, full)
        return target


def dim0_shard(full: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's rows of `full` as DTensor's Shard(0) lays them out (torch.chunk's split; empty past the end)."""
    chunks = torch.chunk(full, world, dim=0) if full.dim() > 0 and full.size(0) > 0 else ()
    return chunks[rank].clone() if rank < len(chunks) else full.new_empty((0, *full.shape[1:]))


class MetaShards:
    """Parameters built as meta placeholders, of whose values this rank keeps only its dim-0 shard.

        shards = MetaShards(rank, world)
        with shards.building():
            model = make()                      # parameters are meta placeholders
        rows = shards.rows_by_name(model)       # before fully_shard replaces the placeholders
    """

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world
        self.values: dict[int, torch.Tensor] = {}  # id(placeholder) -> this rank's rows

    @contextlib.contextmanager
    def building(self) -> Iterator[None]:
        handle = nn.modules.module.register_module_parameter_registration_hook(self._register)
        try:
            with ShardedInit(self._full_shape, self._keep):
                yield
        finally:
            handle.remove()

    def rows_by_name(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """This rank's rows of each parameter, by name (tied parameters once)."""
        return {name: self.values[id(p)] for name, p in model.named_parameters()}

    def _register(self, module: nn.Module, name: str, param: Optional[nn.Parameter]) -> Optional[nn.Parameter]:
        """nn.Module's parameter-registration hook: swap a new parameter for a meta placeholder, keep our rows."""
        if param is None or id(param) in self.values:  # tying assigns an existing placeholder again
            return None
        placeholder = nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)
        self.values[id(placeholder)] = dim0_shard(param.detach(), self.rank, self.world)
        return placeholder

    def _full_shape(self, t: torch.Tensor) -> Optional[torch.Size]:
        return t.shape if id(t) in self.values else None

    def _keep(self, t: torch.Tensor, full: torch.Tensor) -> None:
        self.values[id(t)] = dim0_shard(full, self.rank, self.world)
