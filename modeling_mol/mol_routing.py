"""Where each sentence goes when its language is not given by the caller: the MoE baselines' learned top-1 gate
(Section 5 of the Mixture of Languages paper) and the checkpoint's language identifier (`languages="auto"`).

A sibling of `modeling_mol.py`, copied with it into every exported checkpoint as remote code."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .mol_packing import MoLRowGroups


class MoLRouter(nn.Module):
    """The learned top-1 gate of a routed block (the paper's MoE baselines, Section 5).

    It reads the block's input, which in XLM-R's post-LN blocks is the normalised output of the preceding block (or
    of the embeddings): every token (`routing="token"`) or the mean over each sentence's tokens (`"sentence"`, whose
    tokens then all go to one expert). In training, Gaussian noise of std `router_noise_std` is added to the logits
    before the softmax; at inference the gate is noiseless top-1, or uniformly random after `set_random_routing`
    (the paper's Appendix A comparison)."""

    def __init__(self, config):
        super().__init__()
        self.level = config.routing
        self.num_experts = config.num_experts
        self.noise_std = config.router_noise_std
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.random_generator = None  # a torch.Generator while experts are drawn at random

    def forward(self, rows, batch):
        """(the rows in expert order as MoLRowGroups, per-row gate logits (rows, experts), the block's load-balancing
        loss, the chosen expert's gate probability per row); per-row values in the batch's order."""
        features = rows if self.level == "token" else sentence_means(rows, batch)
        logits = self.gate(features)
        if self.training and self.noise_std > 0:
            logits = logits + torch.randn_like(logits) * self.noise_std
        probs = logits.float().softmax(dim=-1)
        if self.random_generator is not None:
            expert = torch.randint(self.num_experts, (features.shape[0],), generator=self.random_generator)
            expert = expert.to(features.device)
        else:
            expert = probs.argmax(dim=-1)
        if self.level == "sentence":  # every token of a sentence takes its sentence's decision
            logits, probs, expert = logits[batch.row_sentence], probs[batch.row_sentence], expert[batch.row_sentence]
        # Rows in expert order: a stable sort on the device, and each expert's row end by a search in the sorted
        # experts; no host synchronisation.
        row_expert, order = torch.sort(expert, stable=True)
        offsets = torch.searchsorted(row_expert, torch.arange(self.num_experts, device=expert.device), right=True)
        restore = torch.empty_like(order).scatter_(0, order, torch.arange(order.shape[0], device=order.device))
        groups = MoLRowGroups(offsets.to(torch.int32), row_expert, order=order, restore=restore)
        aux_loss = load_balancing_loss(probs, expert, batch.real_rows, self.num_experts)
        return groups, logits, aux_loss, probs.gather(1, expert[:, None]).squeeze(1)


def sentence_means(rows, batch):
    """(sentences, hidden): the mean of each sentence slot's real rows."""
    weight = rows.new_ones(rows.shape[0]) if batch.real_rows is None else batch.real_rows.to(rows.dtype)
    sums = rows.new_zeros(batch.num_sentences, rows.shape[1]).index_add_(0, batch.row_sentence, rows * weight[:, None])
    counts = rows.new_zeros(batch.num_sentences).index_add_(0, batch.row_sentence, weight)
    return sums / counts.clamp(min=1)[:, None]


def load_balancing_loss(probs, row_group, real_rows, num_experts):
    """GShard's auxiliary load-balancing loss of one routed block, in the Switch Transformer's scale (the form of
    transformers' `load_balancing_loss_func`): E * sum_e f_e * P_e, where f_e is the share of tokens sent to expert
    e (top-1, not differentiable) and P_e the mean gate probability of e over the tokens. 1.0 at perfect balance, E
    when one expert takes everything. Tokens only, never padding; with sentence routing each token counts its
    sentence's decision, so the loss balances the experts' work (tokens), not the number of sentences."""
    dispatched = F.one_hot(row_group, num_experts).to(probs.dtype)
    if real_rows is not None:
        weight = real_rows.to(probs.dtype)[:, None]
        count = weight.sum().clamp(min=1)
        return num_experts * ((dispatched * weight).sum(0) / count * (probs * weight).sum(0) / count).sum()
    return num_experts * (dispatched.mean(0) * probs.mean(0)).sum()


class MoLLanguageIdentifier(nn.Module):
    """The checkpoint's language identifier (`config.language_identifier == "input-embedding-linear"`): a linear
    model over the mean of a text's input (word) embeddings, special tokens left out. One embedding lookup and one
    (hidden x labels) product per text, so identifying costs next to nothing beside the encoder. Its weights are
    buffers (fitted by mol_toolkit's language_identification, never trained by the MLM loss)."""

    def __init__(self, config):
        super().__init__()
        labels = config.language_identifier_labels
        self.register_buffer("weight", torch.zeros(len(labels), config.hidden_size))
        self.register_buffer("bias", torch.zeros(len(labels)))

    def forward(self, word_embeddings, input_ids, attention_mask, ignored_ids):
        """(batch, labels) logits."""
        mean = mean_input_embeddings(word_embeddings, input_ids, attention_mask, ignored_ids)
        return mean @ self.weight.float().T + self.bias.float()


def mean_input_embeddings(word_embeddings, input_ids, attention_mask, ignored_ids):
    """(batch, hidden) fp32 mean of the word embeddings of each text's real tokens, `ignored_ids` left out: the
    identifier's features, at fitting and at prediction alike."""
    keep = attention_mask.bool() & ~torch.isin(input_ids, ignored_ids)
    embedded = word_embeddings(input_ids).float() * keep.unsqueeze(-1)
    return embedded.sum(1) / keep.sum(1, keepdim=True).clamp(min=1)


@dataclass
class MoLLanguageIdentification:
    """What the language identifier found for each text: `codes` (its prediction, possibly a language the model
    lacks), `confidences` (softmax probability), `lang_ids` and `routed_codes` (the language of config.languages each
    text is routed by) and `fell_back` (True where the prediction was unknown to the model or under the threshold,
    so the text went to the fallback language)."""

    codes: list
    confidences: torch.Tensor
    lang_ids: torch.Tensor
    routed_codes: list
    fell_back: torch.Tensor
