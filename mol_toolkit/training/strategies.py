"""One object per parallelism, as torchtitan keeps one `parallelize_fn`: everything a training run does differently
by strategy (building the model, optimizer options, what a checkpoint stores, the micro-batches and their losses,
gradient finishing and clipping, the devtest evaluation, the full state dict). `MLMTrainer` holds one and has no
strategy branches.

- `SingleProcess` (`strategy: none`): one process, the whole model.
- `FullySharded` (`fsdp`) and `HybridSharded` (`hsdp`): FSDP2 over all processes, or sharded within a node and
  replicated across nodes.
- `GroupParallel` (`group_parallel`): each rank holds only its language group's copies of the group blocks and
  trains on its group's sentences of the global draw, with token weights that make its losses FSDP's.
"""

import math

import torch

from mol_toolkit.training import group_parallel, mlm_data
from mol_toolkit.training.export import full_state_dict
from mol_toolkit.training.parallelism import build_model


class SingleProcess:
    """The plain data path: every process's micro-batches of the global draw, the mean MLM loss of each."""

    name = "none"
    sharded = False
    supports_fp16 = True  # the Interference Matrix paper's single-model runs (dynamic loss scaling, one process)

    def __init__(self, trainer):
        self.trainer = trainer
        self.context, self.config = trainer.context, trainer.config

    @classmethod
    def check(cls, config, model_config, context):
        """What this strategy refuses, checked before any data work."""
        for key, owner in (("shard_group_size", "hsdp"), ("group_ranks", "group_parallel")):
            if getattr(config, key) is not None and cls.name != owner:
                raise ValueError(f"{key}={getattr(config, key)!r} is an option of strategy {owner!r}, and this run's "
                                 f"strategy is {cls.name!r} ({context.world_size} process(es)): remove it, or set "
                                 f"strategy: {owner}.")
        if config.mixed_precision == "fp16" and not cls.supports_fp16:
            raise ValueError(f"mixed_precision=fp16 runs one process without sharding (the Interference Matrix "
                             f"paper's single-model runs); this run's strategy is {cls.name!r} on "
                             f"{context.world_size} processes: use bf16, or one process.")

    # -- the model
    def build_model(self, model_class, model_config):
        return build_model(model_class, model_config, self.context, self.name, self.config.mixed_precision,
                           self.config.shard_group_size, self.config.seed)

    def optimizer_options(self):
        return {}

    def identity(self):
        """What this strategy adds to the run identity a checkpoint must share."""
        return {}

    def checkpoint_states(self, states, model):
        """The states a checkpoint stores (and loads into)."""
        return states

    def full_state_dict(self, model):
        return full_state_dict(model, sharded=self.sharded)

    # -- one optimizer step
    def micro_batches(self, sampler, step):
        """(model inputs on the device, their real tokens counted on the host, what `micro_loss` needs besides the
        output: None here) for each micro-batch of this process."""
        trainer = self.trainer
        for micro in range(trainer.accumulation):
            slot = micro * self.context.world_size + self.context.rank
            pairs = sampler.next_batch(step, slot)
            batch = mlm_data.mlm_batch(trainer.data.train_sequences(pairs), [lang for lang, _ in pairs],
                                       trainer.data.masking, mlm_data.step_generator(self.config.seed, step, slot))
            tokens = int(batch["attention_mask"].sum())  # a host tensor: no device synchronisation
            yield {k: v.to(trainer.device) for k, v in batch.items()}, tokens, None

    def micro_loss(self, output, batch, extra):
        """(the loss to backpropagate, the loss to log): the logged losses of a step, summed and divided by
        `logged_divisor`, summed over the ranks, are the global batch's mean loss."""
        return output.loss / self.trainer.accumulation, output.loss.detach().double()

    def logged_divisor(self):
        return self.context.world_size * self.trainer.accumulation

    def finish_gradients(self, model):
        """Called once the micro-batches are backpropagated, before clipping."""

    def clip(self, model, max_norm):
        """The gradient norm before clipping, as a device tensor (read at the next flush)."""
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    # -- evaluation
    def evaluate(self, model):
        """MLM loss per devtest language: the sum of token losses over all ranks' batches / the masked tokens."""
        trainer, world, rank = self.trainer, self.context.world_size, self.context.rank
        losses = {}
        for code, batches in zip(trainer.codes, trainer.eval_batches()):
            # Every rank runs the same number of forwards (FSDP gathers weights collectively); the padding batches
            # count for nothing.
            total = count = 0.0
            for round_index in range(math.ceil(len(batches) / world)):
                index = round_index * world + rank
                batch = batches[min(index, len(batches) - 1)]
                loss = trainer.eval_loss(model, batch)
                if index < len(batches):
                    masked = (batch["labels"] != -100).sum().item()
                    total += loss.item() * masked
                    count += masked
            total, count = self.context.sum([total, count])
            losses[code] = total / count
        return losses


class FullySharded(SingleProcess):
    """FSDP2 (`fsdp`) or HSDP (`hsdp`): the same data path, parameters sharded, the full state gathered at export."""

    name = "fsdp"
    sharded = True
    supports_fp16 = False


class GroupParallel(SingleProcess):
    """Each rank trains its language group's sentences of the global draw on its group's copies only."""

    name = "group_parallel"
    supports_fp16 = False

    def __init__(self, trainer):
        super().__init__(trainer)
        self.layout = self.plan_layout()

    @classmethod
    def check(cls, config, model_config, context):
        """A model or a layout the ranks cannot form fails before any data work (equal shares stand in for the
        sampling probabilities, which need the data)."""
        super().check(config, model_config, context)
        group_parallel.check_model(model_config)
        group_parallel.plan_layout(context.world_size, list(model_config.language_groups),
                                   [1.0] * model_config.num_groups, config.group_ranks)

    def plan_layout(self):
        """The ranks of each language group, by each group's share of the sampling probabilities."""
        trainer, config = self.trainer, self.config
        probabilities = mlm_data.language_probabilities(trainer.data.sizes(), config.sampling,
                                                        config.sampling_temperature)
        layout = group_parallel.plan_layout(self.context.world_size, list(trainer.model_config.language_groups),
                                            group_parallel.group_shares(trainer.model_config, probabilities),
                                            config.group_ranks)
        if self.context.is_main:
            print(f"group-parallel layout (group: ranks): {layout.to_dict()}")
        return layout

    def build_model(self, model_class, model_config):
        return group_parallel.build_group_parallel_model(model_class, model_config, self.context, self.layout,
                                                         self.config.mixed_precision, self.config.seed)

    def optimizer_options(self):
        return {"foreach": False}  # parameters on different device meshes cannot share one foreach kernel

    def identity(self):
        return {"group_parallel": self.layout.to_dict()}

    def checkpoint_states(self, states, model):
        return group_parallel.checkpoint_states(states, model, self.layout, self.context.rank)

    def full_state_dict(self, model):
        return group_parallel.full_state_dict(model, self.layout, self.context)

    def micro_batches(self, sampler, step):
        trainer = self.trainer
        for micro in range(trainer.accumulation):
            batch, _ = group_parallel.micro_batch(
                sampler, trainer.data, trainer.data.masking, self.config.seed, step, micro, self.context.world_size,
                trainer.accumulation, self.layout, self.context.rank, trainer.group_of_language)
            weights = batch.pop("token_weights").to(trainer.device)
            tokens = int(batch["attention_mask"].sum())
            yield {k: v.to(trainer.device) for k, v in batch.items()}, tokens, weights

    def micro_loss(self, output, batch, weights):
        loss = group_parallel.weighted_mlm_loss(output, batch["labels"], weights)
        return loss, loss.detach().double()

    def logged_divisor(self):
        return 1  # the token weights already divide by the slots: the ranks' sum is the global mean

    def finish_gradients(self, model):
        group_parallel.sum_gradients(model)

    def clip(self, model, max_norm):
        return group_parallel.clip_gradients(model, max_norm)

    def evaluate(self, model):
        """The same losses, each language's batches run by the ranks of its group (round-robin): every rank runs
        as many forwards as the busiest (FSDP gathers collectively), repeating one of its batches for nothing."""
        import torch.distributed as dist

        trainer = self.trainer
        my_group = self.layout.group_of_rank(self.context.rank)
        group_ranks = self.layout.ranks[my_group]
        work = [(lang, batch) for lang, batches in enumerate(trainer.eval_batches())
                if trainer.group_of_language[lang] == my_group
                for index, batch in enumerate(batches) if index % len(group_ranks) == group_ranks.index(self.context.rank)]
        rounds = torch.tensor(len(work))
        dist.all_reduce(rounds, op=dist.ReduceOp.MAX)
        sums = [0.0] * (2 * len(trainer.codes))  # (token loss sum, masked tokens) per language
        for round_index in range(int(rounds)):
            lang, batch = work[min(round_index, len(work) - 1)] if work else (None, None)
            if batch is None:  # no devtest text in this group: any batch of its languages, for nothing
                lang = next(i for i, g in enumerate(trainer.group_of_language) if g == my_group)
                batch = trainer.eval_batches()[lang][0]
            loss = trainer.eval_loss(model, batch)
            if round_index < len(work):
                masked = (batch["labels"] != -100).sum().item()
                sums[2 * lang] += loss.item() * masked
                sums[2 * lang + 1] += masked
        sums = self.context.sum(sums)
        return {code: sums[2 * i] / sums[2 * i + 1] for i, code in enumerate(trainer.codes)}


class HybridSharded(FullySharded):
    name = "hsdp"


STRATEGIES = {cls.name: cls for cls in (SingleProcess, FullySharded, HybridSharded, GroupParallel)}
