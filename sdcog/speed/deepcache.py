"""DeepCache (Ma et al., 2023; Runware's acceleratorOptions.deepCache): a UNet's deep features
change slowly from step to step, so every `interval`-th UNet call runs in full and the calls in
between reuse its deep features, computing only the shallow branch around them.

`branch` picks where the cached part starts, as the DeepCache package counts it: down block
branch // 3, layer branch % 3 (0: the cheapest calls, only the outermost layer is recomputed).
The same modules are skipped as in the package; unlike it, the count restarts with every
pipeline call (a hires second pass, the next batch, the refiner's own UNet), and everything is
removed when the with-block ends.

A window (start, end: fractions of a pipeline call's UNet calls, as diffusers' ControlNet
start/end count steps) limits the reuse: the calls outside it run in full, and the interval
counts from the window's first call. A pipeline call's length is known once its first step
ends (`step_end`); that first call runs in full whatever the window.
"""

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import UNet2DConditionModel


def branches(unet: UNet2DConditionModel | Mapping[str, Any]) -> int:
    """A UNet's branches (three per down block), from the UNet or its config."""
    config = unet if isinstance(unet, Mapping) else unet.config
    return 3 * len(config["down_block_types"])


@dataclass
class _State:
    unet: torch.nn.Module
    interval: int
    window: tuple[float, float] = (0.0, 1.0)
    full: bool = True
    calls: int = 0  # UNet calls since the pipeline call began
    length: int | None = None  # the pipeline call's UNet calls, once its first step has ended
    last: tuple[float, tuple[int, ...]] | None = None  # timestep and shape of the last call
    outputs: dict[torch.nn.Module, Any] = field(default_factory=dict)
    reused: int = 0
    total: int = 0

    def begin(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        timestep = float(args[1] if len(args) > 1 else kwargs["timestep"])
        # Timesteps fall within a pipeline call: one that rises, or a new shape, starts another.
        if self.last is None or timestep > self.last[0] or sample.shape != self.last[1]:
            self.calls, self.length = 0, None
            self.outputs.clear()
        self.last = (timestep, sample.shape)
        self.full = self._in_full(self.calls)
        self.calls += 1
        self.total += 1
        self.reused += not self.full

    def _in_full(self, index: int) -> bool:
        if self.window == (0.0, 1.0):
            return index % self.interval == 0
        if self.length is None:  # the first call: nothing is cached yet anyway
            return True
        start, end = self.window
        inside = [i / self.length >= start and (i + 1) / self.length <= end
                  for i in range(self.length)]  # fmt: skip
        return not inside[index] or (index - inside.index(True)) % self.interval == 0


def _skipped(unet: UNet2DConditionModel, branch: int) -> list[torch.nn.Module]:
    """The modules whose outputs are reused between full calls: everything deeper than the
    branch, counted from the outside in on both the way down and the way up."""
    block, layer = divmod(branch, 3)
    skipped: list[torch.nn.Module] = [unet.mid_block]
    for index, down in enumerate(unet.down_blocks):
        if index > block or (index == block and layer == 0):
            skipped.append(down)
        elif index == block:
            layers = [*down.resnets, *getattr(down, "attentions", [])]
            skipped += [m for m in layers if _position(down, m) >= layer]
            skipped += list(down.downsamplers or [])
    for index, up in enumerate(reversed(unet.up_blocks)):
        if index > block:
            skipped.append(up)
        elif index == block:  # the up path's layers count from its end
            count = len(up.resnets)
            layers = [*up.resnets, *getattr(up, "attentions", [])]
            skipped += [m for m in layers if count - 1 - _position(up, m) > layer]
    return skipped


def _position(block: torch.nn.Module, module: torch.nn.Module) -> int:
    for modules in (block.resnets, getattr(block, "attentions", [])):
        for index, candidate in enumerate(modules):
            if candidate is module:
                return index
    raise ValueError(f"{module} is not a layer of {block}")


@contextmanager
def _reusing(module: torch.nn.Module, state: _State) -> Iterator[None]:
    """`module` runs on full calls and returns its last output on the others."""
    own = module.__dict__.get("forward")
    run = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        if state.full or module not in state.outputs:
            state.outputs[module] = run(*args, **kwargs)
        return state.outputs[module]

    module.forward = forward
    try:
        yield
    finally:
        if own is None:
            del module.forward  # the class's forward again
        else:
            module.forward = own


def check(unets: Iterable[Mapping[str, Any]], interval: int, branch: int) -> None:
    """The branch must be one the UNets (their configs) have, when DeepCache is on at all."""
    for unet in unets if interval > 1 else ():
        if not 0 <= branch < branches(unet):
            raise ValueError(
                f"deepcache_branch: this model's UNet has branches 0 to {branches(unet) - 1} "
                f"(got {branch})"
            )


def step_end(states: dict[str, _State]) -> Callable:
    """A step hook that tells the running UNet's state its pipeline call's length (diffusers'
    num_timesteps: one UNet call each)."""

    def told(pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        for state in states.values():
            if state.unet is pipe.unet:
                state.length = pipe.num_timesteps
        return kwargs

    return told


@contextmanager
def cached(
    unets: dict[str, UNet2DConditionModel],
    interval: int,
    branch: int,
    window: tuple[float, float] = (0.0, 1.0),
) -> Iterator[dict[str, _State]]:
    """DeepCache on each UNet for a with-block; interval 1: nothing changes. Yields each UNet's
    counts (total calls, reused) by name."""
    if interval == 1:
        yield {}
        return
    states = {}
    with ExitStack() as stack:
        for name, unet in unets.items():
            state = states[name] = _State(unet, interval, window)
            stack.callback(state.outputs.clear)  # frees the cached features
            handle = unet.register_forward_pre_hook(state.begin, with_kwargs=True)
            stack.callback(handle.remove)
            for module in _skipped(unet, branch):
                stack.enter_context(_reusing(module, state))
        yield states
