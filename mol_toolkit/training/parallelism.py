"""Parallelism: who this process is in its run, how it talks to the others, and how the model is laid over them.

- `ProcessContext`: rank, world size, device and the few collectives a run needs (barrier, sum, main-first). A run
  launched by accelerate uses every process (`from_accelerator`); a run that trains its own model alone, like each
  run of the interference sweep, is `local()`: no collective at all, even where a process group exists.
- `build_model`: the model on the meta device, sharded with FSDP2 (`fully_shard` over every MoLLayer, then the root)
  on a 1-D mesh, or HSDP on a 2-D (replicate, shard) mesh, then materialised where it lives. Each parameter is
  initialised one module at a time from the same seeded sequence on every rank, and each rank keeps only its shard:
  a model is never built whole on one rank, and every strategy starts from the same weights.
- The mixed-precision policy: FSDP2's (bf16 parameters, fp32 reduction) when sharded, autocast otherwise.

torch's own `fully_shard` is used rather than accelerate's FSDP plugin because that plugin silently falls back to
DDP on CPU (FACTS.md): one code path for CPU and GPU is what the CPU tests can vouch for.
"""

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class ProcessContext:
    world_size: int
    rank: int
    local_world_size: int
    device: torch.device
    collective: bool  # False: this process's run is its own, whatever process group exists

    @classmethod
    def from_accelerator(cls, accelerator):
        return cls(world_size=accelerator.num_processes, rank=accelerator.process_index,
                   local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)),
                   device=accelerator.device, collective=accelerator.num_processes > 1 and dist.is_initialized())

    @classmethod
    def local(cls, device=None):
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        return cls(world_size=1, rank=0, local_world_size=1, device=device, collective=False)

    @property
    def is_main(self):
        return self.rank == 0

    def barrier(self):
        if self.collective:
            dist.barrier()

    def sum(self, values):
        """The element-wise sum of `values` over the run's processes (float64 on the run's device)."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.collective:
            dist.all_reduce(tensor)
        return tensor.tolist()

    def reduce(self, tensor):
        """`tensor` (float64, on the run's device) summed over the run's processes, read to the host as a list."""
        if self.collective:
            dist.all_reduce(tensor)
        return tensor.tolist()

    @contextlib.contextmanager
    def main_process_first(self):
        """The main process runs the block first (e.g. tokenization into the shared cache), then the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


def die_with_launcher():
    """Under a launcher (accelerate launch / torchrun start each worker in a session of its own), ask Linux to kill
    this worker when its launcher dies: killing the launcher's process group then leaves no worker training on."""
    import ctypes
    import signal
    import sys

    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() == 1:  # the launcher died before the request was made
        os._exit(1)


def resolve_strategy(requested, context):
    """The strategy for this world size (the run config has checked the name)."""
    if requested == "auto":
        return "fsdp" if context.world_size > 1 else "none"
    if requested == "none" and context.world_size > 1:
        raise ValueError(f"strategy='none' with {context.world_size} processes would train {context.world_size} "
                         "separate models: use fsdp or hsdp, or launch one process.")
    if requested in ("fsdp", "hsdp", "group_parallel") and not context.collective:
        raise ValueError(f"strategy={requested!r} needs a distributed launch (accelerate launch with several "
                         "processes); use strategy none or auto for a single process.")
    return requested


def device_mesh(strategy, context, shard_group_size=None):
    from torch.distributed.device_mesh import init_device_mesh

    device_type = context.device.type
    if strategy == "fsdp":
        return init_device_mesh(device_type, (context.world_size,), mesh_dim_names=("shard",))
    shard = int(shard_group_size or context.local_world_size)
    if shard < 1 or context.world_size % shard:
        raise ValueError(f"shard_group_size={shard} does not divide the {context.world_size} processes of this run.")
    return init_device_mesh(device_type, (context.world_size // shard, shard), mesh_dim_names=("replicate", "shard"))


def build_model(model_class, model_config, context, strategy, mixed_precision="no", shard_group_size=None, seed=0):
    """(model, autocast): the model built on the meta device, sharded by `strategy`, materialised on the run's
    device and initialised; `autocast()` is the context to run forward passes in."""
    with torch.device("meta"):
        model = model_class(model_config)
    bf16 = mixed_precision == "bf16"
    if strategy in ("fsdp", "hsdp"):
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                                      reduce_dtype=torch.float32 if bf16 else None)
        mesh = device_mesh(strategy, context, shard_group_size)
        placement = shard_placement(mesh["shard"].size())
        for layer in model.mol.encoder.layer:
            fully_shard(layer, mesh=mesh, mp_policy=policy, shard_placement_fn=placement)
        fully_shard(model, mesh=mesh, mp_policy=policy, shard_placement_fn=placement)
        autocast = contextlib.nullcontext  # FSDP2 casts parameters itself
    else:
        device_type = context.device.type
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
        autocast = (lambda: torch.autocast(device_type, dtype=dtype)) if dtype else contextlib.nullcontext
    materialise(model, context.device)
    initialise(model, model_class, model_config, seed)
    torch.manual_seed(seed)  # dropout draws from here on: the same in every run of this seed
    return model, autocast


def shard_placement(shard_size):
    """FSDP2's shard dimension of each parameter: dim 0, except for the per-group tensors (groups, ...) whose group
    dimension is smaller than the shard group (a shared block's copy count is 1): they shard their feature dimension
    (dim 1). Sharded on dim 0 such a tensor would sit whole on the first ranks, padding on the others, and every
    all-gather would move that padding too (seen: a shared block gathered at 4x its size on 4 ranks)."""
    from torch.distributed.tensor import Shard

    def placement(parameter):
        return Shard(1) if parameter.dim() >= 2 and parameter.shape[0] < shard_size else Shard(0)

    return placement


def materialise(model, device):
    """Storage for a meta model on `device`. Parameters are swapped in place, so tied ones (the MLM decoder and the
    word embeddings) stay one parameter, as FSDP2 registered them."""
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model.to_empty(device=device)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)


def initialise(model, model_class, model_config, seed, held_groups=None):
    """Fill `model` (plain or sharded) with the weights `model_class._init_weights` gives, one module at a time.

    A meta copy of the unsharded model supplies each module; the module is materialised on the CPU alone, initialised
    by the model's own `_init_weights` from one seeded sequence (the same on every rank), copied into this rank's
    shard and dropped again. Tied parameters are filled once. With `held_groups` (group-parallel), a group block's
    parameters hold those groups' copies only: the same values as the full model's copies of them."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    with torch.device("meta"):
        reference = model_class(model_config)
    targets = dict(model.named_parameters(remove_duplicate=False))
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    done = set()
    try:
        for module_name, module in reference.named_modules():
            own = [(name, p) for name, p in module.named_parameters(recurse=False) if id(p) not in done]
            if not own:
                continue
            done.update(id(p) for _, p in module.named_parameters(recurse=False))
            module.to_empty(device="cpu", recurse=False)
            reference._init_weights(module)
            for name, _ in own:
                full = getattr(module, name).detach()
                target = targets[f"{module_name}.{name}" if module_name else name]
                if held_groups is not None and tuple(target.shape) != tuple(full.shape):
                    full = full[list(held_groups)]
                with torch.no_grad():
                    if isinstance(target, DTensor):
                        shard = distribute_tensor(full, target.device_mesh, target.placements, src_data_rank=None)
                        target.to_local().copy_(shard.to_local())
                    else:
                        target.copy_(full)
            module.to_empty(device="meta", recurse=False)
    finally:
        torch.random.set_rng_state(generator_state)


def choose_threads(requested, context):
    """(threads, why): torch's intra-op threads for this process. Under `accelerate launch` the launcher has set
    OMP_NUM_THREADS per process; under plain python the same rule is applied here: the physical cores divided by
    the processes on this machine."""
    if requested is not None:
        return requested, "the run config's threads"
    if os.environ.get("OMP_NUM_THREADS"):
        return int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    try:
        import psutil

        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, context.local_world_size)), "physical cores / local processes, as accelerate launch"
