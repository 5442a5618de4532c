"""Fully sharded data parallelism on ``torch.distributed``: one process per device, each holding a shard of every
parameter, gradient and optimizer state (PyTorch's FSDP2, ``torch.distributed.fsdp.fully_shard``).

Launching, the process group, sharded loaders and collectives are every data-parallel strategy's
(:class:`~torchsystem_trainer.strategies.parallel.ParallelStrategy`). What differs from DDP:

* **Sharding.** :meth:`FSDPStrategy.shard` applies ``fully_shard`` on an explicit one-dimensional ``DeviceMesh``
  of all processes (never the default one a machine would pick: pytorch #132471), bottom-up to every submodule
  ``auto_wrap_policy`` selects, then to the module itself. ``setup`` shards each trainable child of the aggregate
  (``aggregate.nn``), as DDP routes them: the aggregate object, its attributes and its ``state_dict`` keys stay the
  user's; the parameters become sharded ``DTensor``s.
* **Optimizers** must step the sharded parameters. An optimizer built before sharding (the usual aggregate, and
  always when the Trainer starts the processes, since the aggregate is built in the caller) is pointed at them in
  place: the same object, type, hyper-parameters, parameter groups and LR schedulers, each parameter replaced by
  its sharded successor. One that has already stepped (its state belongs to the old parameters) or that holds
  parameters of no module of the aggregate is refused, with the pipeline order that avoids it.
* **The step.** Gradients are reduce-scattered (averaged) during the backward pass, so nothing is left to reduce
  before a step. Clipping by norm computes the global norm of the sharded gradients (torchtitan's
  ``clip_grad_norm_``). Inside an accumulation window the parameters stay gathered after each backward
  (``set_reshard_after_backward(False)``): one all-gather per window instead of one per batch; the gradients are
  still reduce-scattered at every batch and summed in their shards (``set_requires_gradient_sync(False)`` would keep
  the whole model's unsharded gradients on every process for the window, the memory FSDP exists to save, and leave
  a window cut short by ``max_time`` or a stop with gradients no process reduced).
* **Evaluation** gathers the parameters once per validation, test or predict phase and keeps them gathered for the
  phase (:meth:`FSDPStrategy.evaluation_context`), so processes may run different numbers of evaluation batches
  (exact results over uneven shards, as under DDP). The full parameters (not gradients, not optimizer state) must
  then fit on one device.
* **Checkpoints** are ``torch.distributed.checkpoint`` folders every process writes its shard of
  (:mod:`torchsystem_trainer.checkpoint.sharded`), which load on another number of processes.

The design follows Lightning's ``ModelParallelStrategy`` and torchtitan's ``distributed/`` code (explicit mesh,
bottom-up ``fully_shard``, ``MixedPrecisionPolicy`` from the precision, the global norm of sharded gradients).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.optim import Optimizer
from typing_extensions import override

from torchsystem_trainer.domain import Aggregate
from torchsystem_trainer.registry import setname
from torchsystem_trainer.strategies.collectives import group_initialized
from torchsystem_trainer.strategies.environment import ProcessEnvironment
from torchsystem_trainer.strategies.optimizer_step import find_optimizers
from torchsystem_trainer.strategies.parallel import ParallelStrategy
from torchsystem_trainer.strategies.routing import loose_parameters, trainable_modules

if TYPE_CHECKING:  # imported where used: torch.distributed.fsdp and DTensor take ~0.8 s to import
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy

__all__ = ["FSDPStrategy", "WrapPolicy"]

M = TypeVar("M", bound=nn.Module)
WrapPolicy = set[type[nn.Module]] | Callable[[nn.Module], bool]
"""A set of module classes (every submodule of one of them is sharded on its own), or ``(module) -> bool``."""

_PARAMETER_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
_PIPELINE = (
    "shard the network before building its optimizer:\n"
    "    compiler.step(build_network)\n"
    "    compiler.step(strategy.shard)      # its parameters become sharded DTensors\n"
    "    compiler.step(build_aggregate)     # the optimizer is built on them\n"
    "or build the aggregate as usual and let fit shard it: an optimizer that has not stepped yet is then pointed "
    "at the sharded parameters"
)


class FSDPStrategy(ParallelStrategy):
    """Train on several processes, one per device, each holding a shard of the parameters, gradients and optimizer
    state (FSDP2's ``fully_shard``; see the module docstring).

    With per-process batch ``B`` on ``N`` processes a step sees the mean gradient of ``N * B`` samples, as one
    process with batch ``N * B`` would, while each process holds about ``1/N`` of the parameters, gradients and
    optimizer state (plus one sharded unit's full parameters at a time during forward and backward).

    Args:
        devices, accelerator, backend, timeout, start_method, collective_warning: as for
            :class:`~torchsystem_trainer.strategies.parallel.ParallelStrategy` (``DDPStrategy``'s).
        auto_wrap_policy: which submodules become sharding units of their own (each gathers its parameters only
            while it runs): a set of module classes (``{TransformerBlock}``), or ``(module) -> bool``; ``None``:
            only each trainable child of the aggregate as a whole.
        reshard_after_forward: free the gathered parameters of a unit after its forward and gather them again for
            its backward (``True``, less memory), or keep them until the backward (``False``, less communication).
        cpu_offload: keep the sharded parameters, gradients and optimizer state in CPU memory between uses
            (``CPUOffloadPolicy``; for CUDA, where it pins the memory).
        precision: ``"32-true"``, ``"64-true"``, ``"bf16-mixed"`` (bfloat16 parameters in forward and backward,
            float32 gradient reductions and optimizer step, FSDP2's ``MixedPrecisionPolicy``, under autocast) or
            ``"16-mixed"`` (the same in float16, with a ``GradScaler``).

    Raises:
        ValueError: for an invalid argument, naming it, the value and the valid values.
        RuntimeError: for ``accelerator="cuda"`` without CUDA, or GPU indices this machine does not have.
    """

    def __init__(
        self,
        devices: str | int | Sequence[int] = "auto",
        accelerator: str = "auto",
        auto_wrap_policy: WrapPolicy | None = None,
        reshard_after_forward: bool = True,
        cpu_offload: bool = False,
        precision: str = "32-true",
        backend: str | None = None,
        timeout: timedelta | float = timedelta(minutes=30),
        collective_warning: float | str | None = "auto",
        start_method: str = "spawn",
    ) -> None:
        self.auto_wrap_policy = _check_policy(auto_wrap_policy)
        if not isinstance(reshard_after_forward, bool):
            raise ValueError(
                f"FSDPStrategy: reshard_after_forward={reshard_after_forward!r} is invalid; valid: True, False"
            )
        if not isinstance(cpu_offload, bool):
            raise ValueError(f"FSDPStrategy: cpu_offload={cpu_offload!r} is invalid; valid: True, False")
        self.reshard_after_forward = reshard_after_forward
        self.cpu_offload = cpu_offload
        self._mesh: DeviceMesh | None = None
        self._units: list[FSDPModule] = []  # every sharded module of the aggregate set up last, roots included
        self._replaced: dict[int, tuple[weakref.ref[nn.Parameter], nn.Parameter]] = {}
        self._keep_gathered = False  # the parameters stay gathered after backward (inside an accumulation window)
        super().__init__(devices, accelerator, backend, precision, timeout, start_method, collective_warning)
        self._keeps_one_process_group = True  # the aggregate stays sharded on it after fit: keep it usable

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)  # sent to the processes the launcher starts: nothing of this process's group
        state.update(_mesh=None, _units=[], _replaced={}, _keep_gathered=False)
        return state

    # -- the mesh and sharding --------------------------------------------------------------------------

    @property
    def device_mesh(self) -> DeviceMesh:
        """The one-dimensional mesh of all processes (``("fsdp",)``) the parameters are sharded over; created at
        first use, in the processes of the run.

        Raises:
            RuntimeError: outside the processes of a run (see :meth:`shard`).
        """
        from torch.distributed.device_mesh import init_device_mesh

        self._join()
        if self._mesh is None:
            self._mesh = init_device_mesh(self.root_device.type, (self.world_size,), mesh_dim_names=("fsdp",))
        return self._mesh

    def shard(self, module: M) -> M:
        """Shard ``module`` in place and return it: ``fully_shard`` on every submodule ``auto_wrap_policy``
        selects, bottom-up, then on ``module`` itself; an :class:`~torchsystem_trainer.domain.Aggregate` has each
        of its trainable children sharded so. Already sharded modules are left as they are (idempotent).

        A step for a ``Compiler`` pipeline that builds the optimizer after it (``compiler.step(strategy.shard)``),
        under ``torchrun`` or with one process; ``fit`` calls it on the aggregate in any case.

        Args:
            module: a network (moved to :attr:`root_device`), or an aggregate.

        Returns:
            The same module: its class is FSDP2's subclass of its own, its parameters sharded ``DTensor``s, its
            registry name and identity unchanged.

        Raises:
            RuntimeError: outside the processes of a run: with several processes the Trainer starts, the network
                is sharded inside ``fit`` (build the aggregate as usual).
        """
        self._join()
        roots = [child for _, child in trainable_modules(module)] if isinstance(module, Aggregate) else [module]
        for root in roots:
            self._shard_root(root)
        return module

    def _join(self) -> None:
        if group_initialized():
            return
        if ProcessEnvironment.from_environ() is None and self.num_processes > 1:
            raise RuntimeError(
                f"FSDPStrategy: no process group yet: with devices={self.num_processes} the Trainer starts the "
                "processes inside fit, which shards the aggregate there (build it as usual; an optimizer built "
                "before is pointed at the sharded parameters). Call shard() yourself only under torchrun"
            )
        if ProcessEnvironment.from_environ() is None:
            self.init_process_group(store=dist.HashStore(), rank=0, world_size=1)
        else:
            self.init_process_group()

    def _shard_root(self, root: nn.Module) -> None:
        from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, OffloadPolicy, fully_shard

        if isinstance(root, FSDPModule):
            return
        before = dict(root.named_parameters(remove_duplicate=False))
        options: dict[str, Any] = {
            "mesh": self.device_mesh,
            # None: FSDP2's own choice for True (the root keeps its parameters until the backward, which needs them)
            "reshard_after_forward": None if self.reshard_after_forward else False,
            "mp_policy": self._mixed_precision(),
            "offload_policy": CPUOffloadPolicy(pin_memory=self.accelerator == "cuda")
            if self.cpu_offload
            else OffloadPolicy(),
        }
        policy = self.auto_wrap_policy
        if policy is not None:
            for module in reversed(list(root.modules())):  # every descendant before its ancestors
                if module is not root and not isinstance(module, FSDPModule) and _selected(policy, module):
                    if any(True for _ in module.parameters()):
                        setname(module)  # FSDP2 subclasses the module's class; its registry name must not change
                        fully_shard(module, **options)
        setname(root)
        fully_shard(root, **options)
        for name, old in before.items():
            new = root.get_parameter(name)
            if new is not old:
                self._replaced[id(old)] = (weakref.ref(old), new)

    def _mixed_precision(self) -> MixedPrecisionPolicy:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        dtype = _PARAMETER_DTYPES.get(self.precision.precision)
        if dtype is None:
            return MixedPrecisionPolicy()
        return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)

    # -- set-up -----------------------------------------------------------------------------------------

    @override
    def setup(self, aggregate: Any) -> Any:
        """Set up as :class:`Strategy` does (device, precision, optimizer binding), shard each trainable child of
        the aggregate (:meth:`shard`), and point its optimizers at the sharded parameters. Idempotent.

        Returns:
            The same aggregate.

        Raises:
            RuntimeError: outside the processes of a run; for an optimizer that already stepped on parameters
                this strategy replaced, or that holds parameters of no module of the aggregate (the message shows
                the pipeline order that works).
            ValueError: for trainable parameters outside every child module (set on the aggregate itself): FSDP
                shards modules.
        """
        from torch.distributed.fsdp import FSDPModule

        self._join()
        super().setup(aggregate)
        roots = [child for _, child in trainable_modules(aggregate)]
        loose = loose_parameters(aggregate, roots)
        if loose:
            names = [name for name, p in aggregate.named_parameters() if any(p is q for q in loose)]
            raise ValueError(
                f"FSDPStrategy shards the trainable child modules of {type(aggregate).__name__}, but its parameters "
                f"{names} belong to none of them: move them into a child module (an nn.Module attribute)"
            )
        for root in roots:
            self._shard_root(root)
        self._units = [m for m in aggregate.modules() if isinstance(m, FSDPModule)]
        self._repoint_optimizers(aggregate)
        return aggregate

    def _repoint_optimizers(self, aggregate: nn.Module) -> None:
        live = {id(p) for p in aggregate.parameters()}
        for optimizer in find_optimizers(aggregate):
            owner = f"{type(optimizer).__name__} of {type(aggregate).__name__}"
            for group in optimizer.param_groups:
                params = group["params"]
                for index, parameter in enumerate(params):
                    if id(parameter) in live:
                        continue
                    entry = self._replaced.get(id(parameter))
                    if entry is None or entry[0]() is not parameter:
                        raise RuntimeError(
                            f"FSDPStrategy: the optimizer {owner} holds a parameter of shape {list(parameter.shape)} "
                            f"that is in no module of the aggregate (it was built on the parameters of a network "
                            f"sharded since, or of another model): {_PIPELINE}"
                        )
                    if optimizer.state.get(params[index]):
                        raise RuntimeError(
                            f"FSDPStrategy: the optimizer {owner} has already stepped: its state belongs to "
                            f"parameters that sharding replaced and cannot follow them. Build the optimizer after "
                            f"sharding ({_PIPELINE}); to continue a run, resume it with fit(ckpt_path=...)"
                        )
                    params[index] = entry[1]  # in place: an LBFGS keeps a reference to this very list

    @override
    def teardown(self, aggregate: Aggregate) -> None:
        """Undo the bindings and end an accumulation window's gathered parameters. The aggregate stays sharded
        (FSDP2 cannot be undone): after a ``torchrun`` fit each process holds its shards; after a fit the Trainer
        started processes for, the caller's aggregate holds rank 0's gathered state."""
        self._gather_after_backward(False)
        super().teardown(aggregate)

    # -- per batch --------------------------------------------------------------------------------------

    @override
    def train_step_context(self) -> contextlib.AbstractContextManager[Any]:
        """The precision context; inside an accumulation window the parameters also stay gathered after the
        backward pass (until the window's last batch), so a window gathers each unit once."""
        self._gather_after_backward(self.steps.accumulating)
        return self.forward_context()

    def _gather_after_backward(self, keep: bool) -> None:
        if keep != self._keep_gathered:
            for unit in self._units:
                unit.set_reshard_after_backward(not keep, recurse=False)
            self._keep_gathered = keep

    @override
    def evaluation_context(self) -> contextlib.AbstractContextManager[Any]:
        """The precision context, with every sharded unit's parameters gathered once for the whole phase (one
        all-gather per unit per phase), so that no forward communicates and the processes may run different
        numbers of batches. They are freed (resharded) at the phase's end."""
        stack = contextlib.ExitStack()
        stack.enter_context(self._gathered())
        stack.enter_context(self.forward_context())
        return stack

    @contextlib.contextmanager
    def _gathered(self) -> Iterator[None]:
        units = list(self._units)
        for unit in units:
            unit.set_reshard_after_forward(False, recurse=False)
        for unit in units:
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.reshard()
            roots = self._roots()
            for unit in units:  # back to fully_shard's setting: the roots keep theirs until the backward
                root_default = any(unit is root for root in roots)
                unit.set_reshard_after_forward(self.reshard_after_forward and not root_default, recurse=False)

    def _roots(self) -> list[FSDPModule]:
        inner = {id(m) for unit in self._units for m in unit.modules() if m is not unit}  # type: ignore[attr-defined]
        return [unit for unit in self._units if id(unit) not in inner]

    @override
    def clip_gradients(self, optimizer: Optimizer) -> None:
        """Clip ``optimizer``'s gradients in place: by the global 2-norm of all its sharded gradients (each
        process's shards' norms combined, as torchtitan's ``clip_grad_norm_`` does, so every process scales by
        the same factor), or by value (elementwise, on each shard)."""
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        assert self.gradient_clip_val is not None
        if self.gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(parameters, self.gradient_clip_val)
            return
        from torch.distributed.tensor import DTensor

        grads = [p.grad for p in parameters if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()  # a replicated DTensor: the global norm as a plain tensor
        torch.nn.utils.clip_grads_with_norm_(parameters, self.gradient_clip_val, norm)

    # -- persistence ------------------------------------------------------------------------------------

    @property
    @override
    def sharded_checkpoints(self) -> bool:
        """``True``: checkpoints are ``torch.distributed.checkpoint`` folders every process writes its shard of."""
        return True

    @override
    def aggregate_state(self, aggregate: Any) -> dict[str, Any]:
        """The aggregate's whole state gathered from the shards, in the one-process format: every process must
        call it; global rank 0 gets full tensors on the CPU, the others get an empty ``modules`` section and
        ``None`` for the optimizer tensors (gathered to rank 0 only)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = super().aggregate_state(aggregate)
        state["modules"] = get_model_state_dict(
            aggregate, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        zero = self.is_global_zero
        state["optimizers"] = {name: _gathered_tensors(saved, zero) for name, saved in state["optimizers"].items()}
        return state

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", reshard_after_forward={self.reshard_after_forward!r})"


def _gathered_tensors(value: Any, keep: bool) -> Any:
    """``value`` with every ``DTensor`` gathered (``full_tensor``, a collective: the same order on every process)
    and moved to the CPU where ``keep``, ``None`` elsewhere."""
    from torch.distributed.tensor import DTensor

    if isinstance(value, DTensor):
        full = value.full_tensor()
        return full.cpu() if keep else None
    if isinstance(value, dict):
        return {key: _gathered_tensors(item, keep) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_gathered_tensors(item, keep) for item in value)
    return value


def _check_policy(policy: Any) -> WrapPolicy | None:
    if policy is None or (callable(policy) and not isinstance(policy, type)):
        return policy  # type: ignore[no-any-return]
    if isinstance(policy, Iterable) and not isinstance(policy, (str, bytes)):
        classes = set(policy)
        if all(isinstance(cls, type) and issubclass(cls, nn.Module) for cls in classes):
            return classes
    raise ValueError(
        f"FSDPStrategy: auto_wrap_policy={policy!r} is invalid; valid: None, a set of nn.Module classes "
        "({TransformerBlock}), or a function (module) -> bool"
    )


def _selected(policy: WrapPolicy, module: nn.Module) -> bool:
    if isinstance(policy, set):
        return isinstance(module, tuple(policy))
    return bool(policy(module))
