"""How a MoL batch flows: padded sentences become packed token rows (no compute on padding), ordered by weight
group once, with the offsets every grouped GEMM reads; the batch's order and padding come back at the end.

A sibling of `modeling_mol.py`, copied with it into every exported checkpoint as remote code."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class MoLRowGroups:
    """Which weight copy each row of a block uses: what the group Linears and LayerNorms read.

    offsets: (copies,) int32 cumulative row ends, on the device; row_group: (rows,) the copy of every row;
    present_groups / present_offsets: the copies that have rows and their offsets, when the host knows them (the
    language groups, from the packing's one synchronisation), else None (learned routing decides on the device).
    order / restore: for a routed block, whose rows run in expert order: `order[i]` is the batch-order row of the
    i-th expert-order row, `restore` its inverse; None when the rows are in the batch's own order.
    """

    offsets: torch.Tensor
    row_group: torch.Tensor
    present_groups: torch.Tensor | None = None
    present_offsets: torch.Tensor | None = None
    order: torch.Tensor | None = None
    restore: torch.Tensor | None = None
    present_ids: tuple | None = None  # present_groups on the host (from the same synchronisation)

    def localised(self, held):
        """The same rows for a block that holds the copies of the groups `held` only (sorted global indices; what a
        rank of a group-parallel run keeps): copies numbered 0..len(held)-1. Rows of any other group are an error."""
        if self.present_ids is not None and not set(self.present_ids) <= set(held):
            raise ValueError(f"This block holds the weight copies of groups {list(held)} only, and the batch has rows "
                             f"of groups {sorted(set(self.present_ids) - set(held))}: in group-parallel training each "
                             "rank must be given sentences of its own groups only.")
        device = self.offsets.device
        index = torch.tensor(held, dtype=torch.long, device=device)
        lookup = torch.full((self.offsets.shape[0],), 0, dtype=torch.long, device=device)
        lookup[index] = torch.arange(len(held), device=device)
        present = None if self.present_groups is None else lookup[self.present_groups]
        present_ids = None if self.present_ids is None else tuple(held.index(g) for g in self.present_ids)
        # The other groups have no rows, so the held groups' cumulative ends are the local ones.
        return MoLRowGroups(self.offsets[index], lookup[self.row_group], present, self.present_offsets,
                            present_ids=present_ids)


@dataclass
class MoLPackedBatch:
    """Where the tokens of a padded batch went once packed and ordered by group.

    Two layouts, one interface:
    - packed (eager): only real tokens, ordered by group; `seq_lengths` (host list) and `group_tokens` (host list)
      come from the forward pass's one host synchronisation, which also carries the input range checks;
    - static (inside torch.compile / torch.export): every position of every sentence, sentences ordered by group;
      no host synchronisation, shapes fixed by the input's shape, padding rows masked out of attention and zeroed.

    token_index: (rows,) flat positions in the (batch * seq_len) padded grid, in row order.
    seq_lengths: host list of the rows of each sentence slot (packed only; None when static).
    cu_seqlens / max_seqlen: sentence slot boundaries (int32 device) and the widest slot (int).
    pad_index: (rows,) positions in a (sentences, max_seqlen) grid, for attention backends that re-pad.
    sentence_index: (sentences,) the batch index of every sentence slot.
    group_offsets: (groups,) int32 cumulative row ends of each group; all_rows: (1,) the one-group case.
    row_group: (rows,) the group of every row; real_rows: (rows,) bool, None when every row is a real token.
    row_sentence: (rows,) the sentence slot of every row.
    present_groups / present_offsets: the groups that have rows and their offsets (packed only; None when static).
    """

    token_index: torch.Tensor
    seq_lengths: list | None
    cu_seqlens: torch.Tensor
    max_seqlen: int
    pad_index: torch.Tensor
    sentence_index: torch.Tensor
    group_offsets: torch.Tensor
    all_rows: torch.Tensor
    row_group: torch.Tensor
    real_rows: torch.Tensor | None
    row_sentence: torch.Tensor
    present_groups: torch.Tensor | None
    present_offsets: torch.Tensor | None
    batch_size: int
    seq_len: int
    present_ids: tuple | None = None

    @classmethod
    def from_mask(cls, attention_mask, sentence_group, num_groups, host_values=None):
        """Pack a batch. `host_values`: a 1-D int64 tensor fetched to the host in the same synchronisation (the
        range checks); returns (batch, those values as a list)."""
        if torch.compiler.is_compiling():
            return cls._static(attention_mask, sentence_group, num_groups), None
        batch_size, seq_len = attention_mask.shape
        device = attention_mask.device
        # A stable sort keeps sentences of one group in batch order: an already sorted batch stays as it is.
        order = torch.sort(sentence_group, stable=True).indices
        real = attention_mask[order].bool()
        lengths = real.sum(dim=1)
        group_tokens = torch.zeros(num_groups, dtype=torch.long, device=device).index_add_(0, sentence_group[order], lengths)
        extra = host_values if host_values is not None else lengths.new_zeros(0)
        fetched = torch.cat([lengths, group_tokens, extra.to(device=device, dtype=torch.long)]).tolist()  # the one sync
        slot_lengths, group_sizes = fetched[:batch_size], fetched[batch_size : batch_size + num_groups]
        seq_lengths = [length for length in slot_lengths if length > 0]
        num_tokens = sum(seq_lengths)
        positions = order[:, None] * seq_len + torch.arange(seq_len, device=device)
        token_index = positions.masked_select(real)
        nonempty = torch.tensor(seq_lengths, device=device, dtype=torch.long)
        starts = torch.cumsum(nonempty, 0) - nonempty
        max_seqlen = max(seq_lengths, default=0)
        row_in_sentence = torch.arange(num_tokens, device=device) - torch.repeat_interleave(starts, nonempty)
        sentence_slot = torch.repeat_interleave(torch.arange(len(seq_lengths), device=device), nonempty)
        slots = torch.tensor([i for i, length in enumerate(slot_lengths) if length > 0], dtype=torch.long, device=device)
        group_offsets = torch.cumsum(group_tokens, 0).to(torch.int32)
        present = [g for g, size in enumerate(group_sizes) if size > 0]
        present_groups = torch.tensor(present, dtype=torch.long, device=device)
        batch = cls(
            token_index=token_index,
            seq_lengths=seq_lengths,
            cu_seqlens=F.pad(torch.cumsum(nonempty, 0), (1, 0)).to(torch.int32),
            max_seqlen=max_seqlen,
            pad_index=sentence_slot * max_seqlen + row_in_sentence,
            sentence_index=order[slots],
            group_offsets=group_offsets,
            all_rows=torch.tensor([num_tokens], dtype=torch.int32, device=device),
            row_group=torch.repeat_interleave(sentence_group[order], lengths, output_size=num_tokens),
            real_rows=None,
            row_sentence=sentence_slot,
            present_groups=present_groups,
            present_offsets=group_offsets[present_groups],
            batch_size=batch_size,
            seq_len=seq_len,
            present_ids=tuple(present),
        )
        return batch, fetched[batch_size + num_groups :]

    @classmethod
    def _static(cls, attention_mask, sentence_group, num_groups):
        batch_size, seq_len = attention_mask.shape
        device = attention_mask.device
        order = torch.sort(sentence_group, stable=True).indices
        rows = batch_size * seq_len
        width = torch.full((batch_size,), seq_len, dtype=torch.long, device=device)
        group_rows = torch.zeros(num_groups, dtype=torch.long, device=device).index_add_(0, sentence_group, width)
        return cls(
            token_index=(order[:, None] * seq_len + torch.arange(seq_len, device=device)).reshape(-1),
            seq_lengths=None,
            cu_seqlens=(torch.arange(batch_size + 1, device=device) * seq_len).to(torch.int32),
            max_seqlen=seq_len,
            pad_index=torch.arange(rows, device=device),
            sentence_index=order,
            group_offsets=torch.cumsum(group_rows, 0).to(torch.int32),
            all_rows=torch.tensor([rows], dtype=torch.int32, device=device),
            row_group=sentence_group[order][:, None].expand(batch_size, seq_len).reshape(-1),
            real_rows=attention_mask[order].bool().reshape(-1),
            row_sentence=torch.arange(batch_size, device=device).repeat_interleave(seq_len),
            present_groups=None,
            present_offsets=None,
            batch_size=batch_size,
            seq_len=seq_len,
        )

    @property
    def num_tokens(self):
        return self.token_index.shape[0]

    def row_groups(self):
        """The language groups' rows, for the group Linears and LayerNorms (rows in this batch's order)."""
        return MoLRowGroups(self.group_offsets, self.row_group, self.present_groups, self.present_offsets,
                            present_ids=self.present_ids)

    @property
    def num_sentences(self):
        return self.cu_seqlens.shape[0] - 1

    def key_mask(self):
        """(sentences, max_seqlen) bool: True at the real tokens of every sentence slot."""
        if self.real_rows is not None:
            return self.real_rows.view(self.num_sentences, self.max_seqlen)
        real = torch.zeros(self.num_sentences * self.max_seqlen, dtype=torch.bool, device=self.pad_index.device)
        return real.index_fill(0, self.pad_index, True).view(self.num_sentences, self.max_seqlen)

    def pack(self, padded):
        """(batch, seq_len, ...) -> (rows, ...) in row order."""
        return padded.reshape(self.batch_size * self.seq_len, *padded.shape[2:])[self.token_index]

    def unpack(self, rows, fill=0):
        """(rows, ...) -> (batch, seq_len, ...) in the batch's order, `fill` at padding."""
        if self.real_rows is not None:
            rows = rows.masked_fill(~self.real_rows.view(-1, *[1] * (rows.dim() - 1)), fill)
        padded = rows.new_full((self.batch_size * self.seq_len, *rows.shape[1:]), fill)
        padded = padded.index_copy(0, self.token_index, rows)
        return padded.view(self.batch_size, self.seq_len, *rows.shape[1:])

    def unpack_attention(self, probs):
        """(sentences, heads, max_seqlen, max_seqlen) per-slot probabilities -> (batch, heads, seq_len, seq_len) in the
        batch's order, zeros at padding queries and keys."""
        heads, width, seq_len = probs.shape[1], self.max_seqlen, self.seq_len
        # Each grid column's position in its sentence; padding columns go to a spare position seq_len, dropped below.
        column_position = torch.full((self.num_sentences * width,), seq_len, dtype=torch.long, device=probs.device)
        column_position = column_position.index_copy(0, self.pad_index, self.token_index % seq_len)
        column_position = column_position.view(self.num_sentences, 1, width)
        if self.real_rows is not None:  # static layout: padding rows of a sentence are padding too
            real = self.key_mask()
            column_position = column_position.masked_fill(~real[:, None, :], seq_len)
        wide = probs.new_zeros(self.num_sentences, heads, width, seq_len + 1)
        wide = wide.scatter(3, column_position[:, :, None, :].expand(-1, heads, width, -1), probs)
        full = probs.new_zeros(self.num_sentences, heads, seq_len + 1, seq_len + 1)
        full = full.scatter(2, column_position[..., None].expand(-1, heads, -1, seq_len + 1), wide)
        out = probs.new_zeros(self.batch_size, heads, seq_len, seq_len)
        return out.index_copy(0, self.sentence_index, full[:, :, :seq_len, :seq_len])
