"""Group-parallel training (`strategy: group_parallel`): each rank holds only its language group's weight copies.

Under FSDP2 or HSDP every rank all-gathers every group's copy of every group-specific block at every step, although
each sentence uses one group. Here:

- `plan_layout`: the ranks of each language group, in proportion to the group's share of the run's language
  sampling probabilities (largest remainder, at least one rank each; `group_ranks` overrides); more groups than
  ranks, a group with no data, or an override that does not add up to the world size are errors.
- `build_group_parallel_model`: the model on the meta device; in every group-specific block only the rank's own
  group's copies are kept (`MoLLayer.held_groups`), and the block is sharded with FSDP2 among the ranks of that
  group only (a device mesh from the group's process group), so its all-gathers and gradient reduce-scatters run
  within the group; the shared blocks, embeddings and head are FSDP2 over all ranks. FSDP2 averages each gradient
  over its mesh (all ranks, or the group's); `sum_gradients` multiplies the average back into the sum (gloo has no
  pre-multiplied reduction for FSDP2's divide factor): with token weights that reproduce FSDP's mean of per-slot
  means, the summed gradient is exactly FSDP's.
- `micro_batch`: the rank's part of a micro-batch: the FSDP run's global draw and masking, slot by slot, from which
  the rank keeps the sentences of its group (split round-robin among the group's ranks), with per-token loss weights
  1 / (slots x masked tokens of the sentence's FSDP slot). The run's language sampling probabilities are therefore
  exactly those of the global batch, and the loss summed over ranks is the FSDP run's mean loss.

Checkpoints (`checkpoint_states`) store each group block's tensors in the whole model's view (groups, ...), the
names and shapes an FSDP or HSDP run stores, so torch.distributed.checkpoint reshards between the strategies: a run
resumes group-parallel from an FSDP checkpoint and the reverse, or under another group layout.

Learned routing (the MoE baselines) is refused: expert parallelism needs the tokens exchanged between ranks
(all-to-all), which this layout does not do.
"""

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mol_toolkit.training import mlm_data


@dataclass(frozen=True)
class GroupLayout:
    group_names: tuple
    ranks: tuple  # per group (in the model's group order), its ranks

    @property
    def world_size(self):
        return sum(len(r) for r in self.ranks)

    def group_of_rank(self, rank):
        return next(g for g, ranks in enumerate(self.ranks) if rank in ranks)

    def to_dict(self):
        return {name: list(ranks) for name, ranks in zip(self.group_names, self.ranks)}


def group_shares(model_config, probabilities):
    """Each group's share of the language sampling probabilities (`probabilities` in config.languages order)."""
    group_of = model_config.language_to_group()
    shares = [0.0] * model_config.num_groups
    for language, probability in enumerate(probabilities):
        shares[group_of[language]] += float(probability)
    return shares


def check_model(model_config):
    if model_config.is_moe:
        raise ValueError(f"strategy='group_parallel' does not train learned routing (routing={model_config.routing!r}): "
                         "expert parallelism needs each token sent to its expert's ranks (all-to-all), which this "
                         "layout does not do; use strategy fsdp or hsdp.")
    if not model_config.group_layers or model_config.num_groups < 2:
        raise ValueError("strategy='group_parallel' needs a MoL with group-specific blocks and at least 2 language "
                         "groups; this model has none to place: use strategy fsdp or hsdp.")


def plan_layout(world_size, group_names, shares, override=None):
    """The ranks of every group: `override` (group name -> ranks) or in proportion to `shares`."""
    names = list(group_names)
    if world_size < len(names):
        raise ValueError(f"strategy='group_parallel' needs at least one rank per language group: {len(names)} groups "
                         f"({names}) on {world_size} ranks. Launch at least {len(names)} processes, or use fsdp/hsdp.")
    empty = [name for name, share in zip(names, shares) if share <= 0]
    if empty:
        raise ValueError(f"Language groups {empty} have no training data (sampling probability 0): group-parallel "
                         "ranks would hold weights nothing trains. Give them data or leave them out.")
    if override is not None:
        unknown = sorted(set(override) - set(names))
        missing = [name for name in names if name not in override]
        if unknown or missing:
            raise ValueError(f"group_ranks must give every language group a rank count: unknown {unknown}, missing "
                             f"{missing} (the groups are {names}).")
        counts = [override[name] for name in names]
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in counts):
            raise ValueError(f"group_ranks values must be integers >= 1, got {dict(override)}.")
        if sum(counts) != world_size:
            raise ValueError(f"group_ranks {dict(override)} add up to {sum(counts)} ranks, but the run has "
                             f"{world_size}: the groups must share the ranks exactly.")
    else:
        counts = proportional_counts(world_size, shares)
    ranks, start = [], 0
    for count in counts:
        ranks.append(tuple(range(start, start + count)))
        start += count
    return GroupLayout(tuple(names), tuple(ranks))


def proportional_counts(world_size, shares):
    """At least one rank per group, the rest by largest remainder of the shares (ties to the earlier group)."""
    total = sum(shares)
    spare = world_size - len(shares)
    exact = [spare * share / total for share in shares]
    counts = [1 + math.floor(e) for e in exact]
    order = sorted(range(len(shares)), key=lambda g: (-(exact[g] - math.floor(exact[g])), g))
    for g in order[:world_size - sum(counts)]:
        counts[g] += 1
    return counts


# ---- the model --------------------------------------------------------------------------------------------------

def hold_groups(model, held):
    """Keep only the `held` groups' copies in every group-specific block of a meta-device model."""
    from modeling_mol.modeling_mol import MoLGroupedLayerNorm, MoLGroupedLinear

    held = tuple(sorted(held))
    for layer in model.mol.encoder.layer:
        if not layer.is_group_block:
            continue
        layer.held_groups = held
        for module in layer.modules():
            if isinstance(module, (MoLGroupedLinear, MoLGroupedLayerNorm)):
                module.num_groups = len(held)
                for name in ("weight", "bias"):
                    full = getattr(module, name)
                    setattr(module, name, torch.nn.Parameter(torch.empty((len(held), *full.shape[1:]),
                                                                         device=full.device)))


def group_meshes(context, layout):
    """(world mesh, this rank's group mesh): every rank creates every group's process group, in the same order."""
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

    device_type = context.device.type
    world = init_device_mesh(device_type, (context.world_size,), mesh_dim_names=("shard",))
    mine = None
    for ranks in layout.ranks:
        group = dist.new_group(list(ranks))
        if context.rank in ranks:
            mine = DeviceMesh.from_group(group, device_type, mesh_dim_names=("group_shard",))
    return world, mine


def build_group_parallel_model(model_class, model_config, context, layout, mixed_precision="no", seed=0):
    """(model, autocast) as parallelism.build_model, laid out group-parallel."""
    import contextlib

    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from mol_toolkit.training.parallelism import initialise, materialise, shard_placement

    check_model(model_config)
    with torch.device("meta"):
        model = model_class(model_config)
    held = (layout.group_of_rank(context.rank),)
    hold_groups(model, held)
    bf16 = mixed_precision == "bf16"
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                                  reduce_dtype=torch.float32 if bf16 else None)
    world, group = group_meshes(context, layout)
    for layer in model.mol.encoder.layer:
        mesh = group if layer.is_group_block else world
        fully_shard(layer, mesh=mesh, mp_policy=policy, shard_placement_fn=shard_placement(mesh.size()))
    fully_shard(model, mesh=world, mp_policy=policy, shard_placement_fn=shard_placement(world.size()))
    materialise(model, context.device)
    initialise(model, model_class, model_config, seed, held_groups=held)
    torch.manual_seed(seed)
    return model, contextlib.nullcontext


def sum_gradients(model):
    """Each gradient as the sum over its mesh's ranks: FSDP2 reduce-scattered the mean."""
    from torch.distributed.tensor import DTensor

    for parameter in model.parameters():
        if isinstance(parameter.grad, DTensor):
            parameter.grad.to_local().mul_(parameter.grad.device_mesh.size())


def gradient_norm(model):
    """The global gradient norm over parameters sharded on different meshes: every rank's local squares summed,
    then all ranks' summed (each element lives on exactly one rank of its mesh)."""
    from torch.distributed.tensor import DTensor

    local = torch.zeros((), dtype=torch.float64)
    for parameter in model.parameters():
        grad = parameter.grad
        if grad is None:
            continue
        grad = grad.to_local() if isinstance(grad, DTensor) else grad
        local += grad.detach().double().pow(2).sum().cpu()
    dist.all_reduce(local)
    return local.sqrt()


def clip_gradients(model, max_norm):
    norm = gradient_norm(model)
    scale = min(1.0, max_norm / (float(norm) + 1e-6))
    if scale < 1.0:
        from torch.distributed.tensor import DTensor

        for parameter in model.parameters():
            if parameter.grad is not None:
                grad = parameter.grad.to_local() if isinstance(parameter.grad, DTensor) else parameter.grad
                grad.mul_(scale)
    return float(norm)


# ---- the data ---------------------------------------------------------------------------------------------------

def micro_batch(sampler, data, masking, seed, step, micro, world_size, accumulation, layout, rank, group_of_language,
                bos_eos=(0, 2)):
    """This rank's part of micro-batch `micro` of step `step` (see the module docstring): a batch dict with
    `token_weights`, and the number of its real sentences (0: a placeholder sentence keeps the collectives going)."""
    my_group = layout.group_of_rank(rank)
    group_ranks = layout.ranks[my_group]
    slots = world_size * accumulation
    chosen = []  # (input ids, attention mask, labels, lang id, weight) of this group's sentences, in slot order
    for slot in range(micro * world_size, (micro + 1) * world_size):
        pairs = sampler.next_batch(step, slot)
        batch = mlm_data.mlm_batch(data.train_sequences(pairs), [lang for lang, _ in pairs], masking,
                                   mlm_data.step_generator(seed, step, slot))
        masked = int((batch["labels"] != -100).sum())
        for row, (lang, _) in enumerate(pairs):
            if group_of_language[lang] == my_group:
                weight = 1.0 / (slots * masked) if masked else 0.0
                chosen.append((batch["input_ids"][row], batch["attention_mask"][row], batch["labels"][row], lang,
                               weight))
    mine = chosen[group_ranks.index(rank)::len(group_ranks)]
    if not mine:  # nothing for this rank: one unmasked placeholder sentence of its group, weight 0
        lang = next(i for i, g in enumerate(group_of_language) if g == my_group)
        ids = torch.tensor(bos_eos, dtype=torch.long)
        mine = [(ids, torch.ones_like(ids), torch.full_like(ids, -100), lang, 0.0)]
        real = 0
    else:
        real = len(mine)
    width = max(int(mask.sum()) for _, mask, _, _, _ in mine)
    input_ids = torch.full((len(mine), width), masking.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(mine), width), dtype=torch.long)
    labels = torch.full((len(mine), width), -100, dtype=torch.long)
    weights = torch.zeros((len(mine), width), dtype=torch.float64)
    for row, (ids, mask, label, _, weight) in enumerate(mine):
        length = int(mask.sum())
        input_ids[row, :length], attention[row, :length], labels[row, :length] = ids[:length], 1, label[:length]
        weights[row, :length] = weight
    batch = {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
             "lang_ids": torch.tensor([lang for _, _, _, lang, _ in mine], dtype=torch.long),
             "token_weights": weights}
    return batch, real


def weighted_mlm_loss(output, labels, token_weights):
    """Σ weight x token loss over the masked tokens (logits of the masked positions, in row-major order), plus 0 x
    the logits, so that a batch without masked tokens still reaches every parameter (FSDP's reductions run)."""
    masked = labels != -100
    losses = torch.nn.functional.cross_entropy(output.logits.float(), labels[masked], reduction="none")
    return (losses * token_weights[masked].to(losses.dtype)).sum() + 0.0 * output.logits.sum()


# ---- the whole model, for export ----------------------------------------------------------------------------------

def full_state_dict(model, layout, context):
    """Every parameter whole, as the unsharded model has it, on the main process (None elsewhere): the shared ones
    gathered over all ranks, each group block's copies within its group, then stacked in group order."""
    from torch.distributed.tensor import DTensor

    local_group = layout.group_of_rank(context.rank)
    shared, grouped = {}, {}
    group_blocks = {f"mol.encoder.layer.{i}." for i, layer in enumerate(model.mol.encoder.layer) if layer.is_group_block}
    for name, tensor in model.state_dict().items():
        full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor  # collective over its own mesh
        if any(name.startswith(prefix) for prefix in group_blocks):
            grouped[name] = full.detach().cpu()
        else:
            shared[name] = full.detach().cpu()
    leader = layout.ranks[local_group][0] == context.rank
    gathered = [None] * context.world_size
    dist.all_gather_object(gathered, (local_group, grouped) if leader else None)
    if not context.is_main:
        return None
    copies = {group: state for group, state in (g for g in gathered if g is not None)}
    state = dict(shared)
    for name in grouped:
        state[name] = torch.cat([copies[g][name] for g in range(len(layout.ranks))], 0)
    return state


# ---- checkpoints ----------------------------------------------------------------------------------------------------

def _group_block_prefixes(model):
    return tuple(f"mol.encoder.layer.{i}." for i, layer in enumerate(model.mol.encoder.layer) if layer.is_group_block)


def _global_view(tensor, group, num_groups):
    """A group block tensor of this rank (a DTensor over its group's mesh, holding the group's one copy) as a
    ShardedTensor of the whole model's shape (groups, ...): this rank's local block placed at its group's copy and
    its shard's offset. Same storage: a checkpoint load writes straight into the parameter (or optimizer state)."""
    from torch.distributed._shard.metadata import ShardMetadata
    from torch.distributed._shard.sharded_tensor import Shard, init_from_local_shards
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    local = tensor.to_local()
    shape, offset = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
    shards = []
    if local.numel():
        metadata = ShardMetadata(shard_offsets=[group + offset[0], *offset[1:]], shard_sizes=list(shape),
                                 placement=f"rank:{dist.get_rank()}/{local.device}")
        shards.append(Shard(local, metadata))
    return init_from_local_shards(shards, num_groups, *tensor.shape[1:])


def checkpoint_states(states, model, layout, rank):
    """The state dicts (as get_state_dict gives them) with every group block's tensors in the whole model's view
    (`_global_view`): the same names and global shapes as an FSDP or HSDP run's, so torch.distributed.checkpoint
    reshards between the strategies and layouts. The entries are views of the live tensors."""
    prefixes = _group_block_prefixes(model)
    group, num_groups = layout.group_of_rank(rank), len(layout.ranks)
    from torch.distributed.tensor import DTensor

    def convert(name, value):
        return _global_view(value, group, num_groups) if name.startswith(prefixes) and isinstance(value, DTensor) \
            else value

    model_state = {name: convert(name, value) for name, value in states["model"].items()}
    optimizer = dict(states["optimizer"])
    optimizer["state"] = {name: {key: convert(name, value) if getattr(value, "dim", lambda: 0)() > 0 else value
                                 for key, value in entry.items()}
                          for name, entry in states["optimizer"].get("state", {}).items()}
    return {"model": model_state, "optimizer": optimizer}
