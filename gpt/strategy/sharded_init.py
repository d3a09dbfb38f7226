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

from typing import Callable, Optional

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
    """This rank's rows of `full` (a view) as DTensor's Shard(0) lays them out: torch.chunk's split, empty past the end."""
    chunks = torch.chunk(full, world, dim=0) if full.dim() > 0 and full.size(0) > 0 else ()
    return chunks[rank] if rank < len(chunks) else full[0:0]


def copy_rows(shard: torch.Tensor, full: torch.Tensor, rank: int, world: int) -> None:
    """Copy this rank's rows of `full` into its local `shard` of a dim-0 sharded parameter."""
    rows = dim0_shard(full, rank, world)
    if shard.shape != rows.shape:  # FSDP laid the shard out otherwise than DTensor's Shard(0)
        raise RuntimeError(f"a local shard of shape {tuple(shard.shape)} for rows {tuple(rows.shape)}")
    with torch.no_grad():
        shard.copy_(rows)


class ShardFiller:
    """Fill an FSDP model's local shards with exactly the weights a plain build of `make` would have.

    Two constructions, neither holding the weights: first on the meta device, recording the order in which
    parameters are registered and which name each ends up with (`record`); the caller shards that model and
    allocates its shards (`to_empty`); then again (`fill`), with every new parameter swapped for a meta
    placeholder as it is registered and every initialiser run through ShardedInit, which copies this rank's
    rows of the result straight into the shard of the parameter registered in the same place. Rank memory
    peaks at its shards plus one whole parameter.
    """

    def __init__(self, make: Callable[[], nn.Module], rank: int, world: int):
        self.make, self.rank, self.world = make, rank, world

    def record(self) -> nn.Module:
        """The model on the meta device (initialisers draw nothing there), and the registration order."""
        registered: dict[int, nn.Parameter] = {}  # in registration order

        def hook(module: nn.Module, name: str, param: Optional[nn.Parameter]) -> None:
            if param is not None:  # tying registers an existing parameter again: it keeps its first place
                registered.setdefault(id(param), param)

        handle = nn.modules.module.register_module_parameter_registration_hook(hook)
        try:
            with torch.device("meta"):
                model = self.make()
        finally:
            handle.remove()
        names = {id(p): name for name, p in model.named_parameters()}
        # a parameter replaced during construction (the embedding's own, before tying) has no name: its
        # initialisers still draw from the generator, but nothing keeps their result
        self.order = [names.get(key) for key in registered]
        return model

    def fill(self, model: nn.Module) -> None:
        """Construct again and copy this rank's rows of every initial value into `model`'s local shards."""
        shards = {name: p.to_local() for name, p in model.named_parameters()}
        targets = [shards[name] if name is not None else None for name in self.order]
        slot: dict[int, Optional[torch.Tensor]] = {}  # id(placeholder) -> the shard its values go to

        def write(placeholder: torch.Tensor, full: torch.Tensor) -> None:
            if slot[id(placeholder)] is not None:
                copy_rows(slot[id(placeholder)], full, self.rank, self.world)

        def hook(module: nn.Module, name: str, param: Optional[nn.Parameter]) -> Optional[nn.Parameter]:
            if param is None or id(param) in slot:
                return None
            if len(slot) == len(targets):
                raise RuntimeError("the model registered more parameters the second time it was built")
            placeholder = nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)
            slot[id(placeholder)] = targets[len(slot)]
            write(placeholder, param.detach())  # values made at creation (LayerNorm's ones) count too
            return placeholder

        handle = nn.modules.module.register_module_parameter_registration_hook(hook)
        try:
            with torch.no_grad(), ShardedInit(lambda t: t.shape if id(t) in slot else None, write):
                twin = self.make()
        finally:
            handle.remove()
        for name, buffer in model.named_buffers():  # buffers are whole on every rank: take the real ones
            buffer.copy_(twin.get_buffer(name))
