"""How the MoE baselines' routers spread tokens over their experts: per routed block and per language, counted on
the device from the router logits (no host synchronisation per batch) and read as fractions. Used by the training
loop's logs and by `evaluate_mol.py routing` (the paper's Figure 4)."""

import torch

from mol_toolkit.training.metrics import StepMetrics


class ExpertLoad:
    """Real tokens each expert of each routed block received, per language, since the last `reset`."""

    def __init__(self, routed_blocks, languages, num_experts, device="cpu"):
        self.blocks = list(routed_blocks)
        self.languages = list(languages)
        self.num_experts = num_experts
        self.counts = torch.zeros(len(self.blocks), len(self.languages), num_experts, dtype=torch.float64,
                                  device=device)

    @classmethod
    def for_model(cls, config, device="cpu"):
        return cls(config.group_layers, config.languages, config.num_experts, device)

    def add(self, router_logits, attention_mask, lang_ids):
        """router_logits: per routed block (batch * seq_len, experts), as the model returns them with
        output_router_logits (the decision is the arg max: noise included in training); attention_mask: (batch,
        seq_len); lang_ids: (batch,) indices into the languages."""
        if len(router_logits) != len(self.blocks):
            raise ValueError(f"{len(router_logits)} router logits for {len(self.blocks)} routed blocks {self.blocks}.")
        device = self.counts.device
        real = attention_mask.to(device).reshape(-1).to(torch.float64)
        row_language = lang_ids.to(device)[:, None].expand(attention_mask.shape).reshape(-1)
        for block, logits in enumerate(router_logits):
            cell = row_language * self.num_experts + logits.to(device).argmax(dim=-1)
            self.counts[block].view(-1).index_add_(0, cell, real)

    def total(self, context):
        """The counts summed over every process of the run, as a flat list (one all-reduce; every process calls it)."""
        counts = self.counts.flatten().tolist()
        return context.sum(counts) if context.world_size > 1 else counts

    def merge(self, context):
        """Replace each process's counts by their sum over the run's processes."""
        self._set(self.total(context))

    def restore(self, counts, is_main):
        """Resume the counts a checkpoint saved (`total` at that step): on the main process, which then holds the
        run's sum, zeros on the others; the next log then covers the same steps as an uninterrupted run's."""
        self._set(counts if is_main else [0.0] * self.counts.numel())

    def _set(self, flat):
        self.counts = torch.tensor(flat, dtype=torch.float64, device=self.counts.device).view(self.counts.shape)

    def reset(self):
        self.counts.zero_()

    @staticmethod
    def _fractions(counts):
        total = counts.sum(dim=-1, keepdim=True)
        return torch.where(total > 0, counts / total.clamp(min=1), torch.zeros_like(counts))

    def by_block(self):
        """{block: [share of the tokens per expert]} over all languages."""
        shares = self._fractions(self.counts.sum(dim=1))
        return {block: shares[i].tolist() for i, block in enumerate(self.blocks)}

    def by_language(self):
        """{language: {block: [share of that language's tokens per expert]}}, languages that had tokens only."""
        shares = self._fractions(self.counts)
        seen = self.counts[0].sum(dim=-1) > 0 if self.blocks else []
        return {code: {block: shares[i, j].tolist() for i, block in enumerate(self.blocks)}
                for j, code in enumerate(self.languages) if bool(seen[j])}

    def metrics(self):
        """Scalar metrics for trackers: router/block{b}/expert{e} (shares over all languages)."""
        return {f"router/block{block}/expert{e}": share
                for block, shares in self.by_block().items() for e, share in enumerate(shares)}


class RouterMetrics(StepMetrics):
    """A MoE run's router log: the auxiliary loss of each logged step, and every expert's share of the tokens per
    routed block (trackers) and per language (metrics.jsonl) since the previous log."""

    wants_router_logits = True

    def __init__(self, model_config, context):
        self.load = ExpertLoad.for_model(model_config, context.device)
        self.context = context

    def add(self, output, batch):
        self.load.add(output.router_logits, batch["attention_mask"], batch["lang_ids"])
        return {"train/aux_loss": output.aux_loss.detach().double()}

    def values(self, means):
        self.load.merge(self.context)
        return {**means, **self.load.metrics()}

    def details(self):
        details = {"router/load_by_language": self.load.by_language()}
        self.load.reset()
        return details

    def state(self):
        return self.load.total(self.context)  # every process calls it: one all-reduce

    def restore(self, state, is_main):
        if state is not None:
            self.load.restore(state, is_main)


def step_metrics(model_config, context):
    """The metrics hook of a run: the router log for a MoE, nothing more otherwise."""
    return RouterMetrics(model_config, context) if model_config.is_moe else StepMetrics()
