"""Tokens/s of one MLM training step (forward, backward, AdamW step), and inference latency:

1. dense vs MoL vs the paper's MoE baselines (token- and sentence-level routing, as many experts as MoL has groups,
   the same routed blocks) at equal active parameters (each token uses one copy of every block), goals: MoL step
   time at most 1.05x dense, MoE at most 1.15x;
2. MoL's padding-free path vs transformers' XLMRobertaForMaskedLM (padded batch, logits at every position) on
   the same FLORES-like length mix, goal: at least 2x;
3. inference latency of dense, MoL and the MoEs on --inference-sentences sentences of one language (the paper's
   Table 13: 1k FLORES sentences in English, MoE far slower than MoL and dense).

    python benchmarks/benchmark_training.py                      # CPU-sized defaults
    python benchmarks/benchmark_training.py --size large --sentences 256 --dtype bf16   # on a GPU

Prints a table and writes JSON (--out). Lengths: FLORES-200 sentences under XLM-R's tokenizer average about 32
tokens with a long tail (max ~90 here); they are drawn from a log-normal with that mean, clipped to [6, 90].
"""

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the model packages, from any working directory


SIZES = {  # hidden, layers, heads, ffn, vocab
    "tiny": (128, 4, 4, 512, 8000),
    "small": (256, 4, 4, 1024, 32000),
    "base": (768, 12, 12, 3072, 250002),
    "large": (1024, 24, 16, 4096, 250002),
}


def flores_like_lengths(count, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=np.log(28), sigma=0.5, size=count), 6, 90).astype(int)


def make_batch(lengths, vocab, num_languages, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    longest = int(lengths.max())
    input_ids = torch.full((len(lengths), longest), 1, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = torch.randint(5, vocab - 1, (int(length),), generator=generator)
        attention_mask[row, :length] = 1
    labels = torch.where((torch.rand(input_ids.shape, generator=generator) < 0.15) & attention_mask.bool(),
                         input_ids, torch.full_like(input_ids, -100))
    lang_ids = torch.arange(len(lengths)) % num_languages
    return {k: v.to(device) for k, v in dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                                             lang_ids=lang_ids).items()}


def mol_model(size, num_groups, layout, device, dtype, routing="language"):
    """Dense (layout 'dense'), MoL (one group per language) or a MoE (routing token/sentence, num_groups experts)."""
    from configuration_mol import MoLConfig
    from modeling_mol import MoLForMaskedLM

    hidden, layers, heads, ffn, vocab = SIZES[size]
    languages = [f"l{g:02d}_Latn" for g in range(num_groups)]
    groups = {f"g{g:02d}": [code] for g, code in enumerate(languages)} if layout != "dense" and routing == "language" else {}
    moe = {"num_experts": num_groups} if routing != "language" else {}
    config = MoLConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       intermediate_size=ffn, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                       languages=languages, language_groups=groups, group_layers=layout, routing=routing, **moe,
                       sparse_prediction=True)  # as train_mlm.py trains: MLM logits at the masked positions only
    return MoLForMaskedLM(config).to(device=device, dtype=dtype)


def xlmr_model(size, device, dtype):
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    hidden, layers, heads, ffn, vocab = SIZES[size]
    config = XLMRobertaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                              intermediate_size=ffn, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                              max_position_embeddings=514)
    return XLMRobertaForMaskedLM(config).to(device=device, dtype=dtype)


def _synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_steps(model, batch, steps, warmup):
    """Median seconds of forward+backward and of the AdamW step (which touches every parameter, active or not)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    inputs = batch if hasattr(model, "mol") else {k: v for k, v in batch.items() if k != "lang_ids"}
    forward_backward, optimizer_step = [], []
    for index in range(warmup + steps):
        _synchronize()
        start = time.perf_counter()
        model(**inputs).loss.backward()
        _synchronize()
        middle = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _synchronize()
        if index >= warmup:
            forward_backward.append(middle - start)
            optimizer_step.append(time.perf_counter() - middle)
    return float(np.median(forward_backward)), float(np.median(optimizer_step))


@torch.inference_mode()
def time_inference(model, lengths, vocab, batch_size, repeats, device):
    """Median seconds to encode every sentence of `lengths` (one language, batches of `batch_size`) with the bare
    encoder in eval mode, over `repeats` runs after one warm-up."""
    encoder = model.mol.eval() if hasattr(model, "mol") else model.roberta.eval()
    batches = [make_batch(lengths[start:start + batch_size], vocab, 1, device, seed=start)
               for start in range(0, len(lengths), batch_size)]
    times = []
    for index in range(repeats + 1):
        _synchronize()
        start = time.perf_counter()
        for batch in batches:
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            if hasattr(model, "mol"):
                inputs["lang_ids"] = batch["lang_ids"]
            encoder(**inputs)
        _synchronize()
        if index:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--sentences", type=int, default=64, help="sentences per step")
    parser.add_argument("--groups", type=int, default=5)
    parser.add_argument("--layout", default="stacked", help="MoL layout (stacked, lid:a-b-c, interleaved, all)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--inference-sentences", type=int, default=1000, help="sentences encoded for the latency "
                        "rows (the paper's Table 13: 1k)")
    parser.add_argument("--inference-batch-size", type=int, default=64)
    parser.add_argument("--inference-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: on a shared "
                        "2-core machine torch's default is many times slower when the machine is busy)")
    parser.add_argument("--out", default="benchmark_training.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    lengths = flores_like_lengths(args.sentences)
    batch = make_batch(lengths, SIZES[args.size][4], args.groups, device)
    real_tokens = int(lengths.sum())
    padded_tokens = int(len(lengths) * lengths.max())

    mol_name = f"mol-{args.layout}-{args.groups}g"
    builds = [("dense", lambda: mol_model(args.size, args.groups, "dense", device, dtype)),
              (mol_name, lambda: mol_model(args.size, args.groups, args.layout, device, dtype)),
              (f"moe-token-{args.groups}e", lambda: mol_model(args.size, args.groups, args.layout, device, dtype, "token")),
              (f"moe-sentence-{args.groups}e", lambda: mol_model(args.size, args.groups, args.layout, device, dtype,
                                                                  "sentence")),
              ("xlmr-padded", lambda: xlmr_model(args.size, device, dtype))]
    inference_lengths = flores_like_lengths(args.inference_sentences, seed=1)
    rows = {}
    for name, build in builds:
        model = build().train()
        forward_backward, optimizer_step = time_steps(model, batch, args.steps, args.warmup)
        seconds = forward_backward + optimizer_step
        rows[name] = {"step_s": seconds, "forward_backward_s": forward_backward, "optimizer_s": optimizer_step,
                      "tokens_per_s": real_tokens / seconds,
                      "parameters": sum(p.numel() for p in model.parameters()),
                      "inference_s": time_inference(model, inference_lengths, SIZES[args.size][4],
                                                    args.inference_batch_size, args.inference_repeats, device)}
        del model
    dense, mol, xlmr = rows["dense"], rows[mol_name], rows["xlmr-padded"]
    moe = {level: rows[f"moe-{level}-{args.groups}e"] for level in ("token", "sentence")}
    summary = {
        "mol_over_dense_step_time": mol["step_s"] / dense["step_s"],
        "mol_over_dense_forward_backward": mol["forward_backward_s"] / dense["forward_backward_s"],
        **{f"moe_{level}_over_dense_step_time": row["step_s"] / dense["step_s"] for level, row in moe.items()},
        **{f"{name}_over_dense_inference": rows[key]["inference_s"] / dense["inference_s"]
           for name, key in (("mol", mol_name), ("moe_token", f"moe-token-{args.groups}e"),
                             ("moe_sentence", f"moe-sentence-{args.groups}e"))},
        "padding_free_speedup_vs_xlmr": xlmr["step_s"] / dense["step_s"],
        "padding_share": 1 - real_tokens / padded_tokens,
    }
    print(f"{args.size} model, {args.sentences} sentences ({real_tokens} real tokens, "
          f"{summary['padding_share']:.0%} of the padded batch is padding), {args.dtype} on {device}, "
          f"{args.threads} intra-op thread(s); inference: {args.inference_sentences} sentences of one language")
    print(f"{'model':<24}{'parameters':>12}{'fwd+bwd (ms)':>14}{'AdamW (ms)':>12}{'step (ms)':>12}{'tokens/s':>12}"
          f"{'inference (s)':>15}")
    for name, row in rows.items():
        print(f"{name:<24}{row['parameters'] / 1e6:>11.1f}M{row['forward_backward_s'] * 1e3:>14.1f}"
              f"{row['optimizer_s'] * 1e3:>12.1f}{row['step_s'] * 1e3:>12.1f}{row['tokens_per_s']:>12,.0f}"
              f"{row['inference_s']:>15.3f}")
    print(f"MoL / dense step time: {summary['mol_over_dense_step_time']:.3f}x (goal <= 1.05x); forward+backward "
          f"alone {summary['mol_over_dense_forward_backward']:.3f}x")
    for level in ("token", "sentence"):
        print(f"MoE ({level}) / dense step time: {summary[f'moe_{level}_over_dense_step_time']:.3f}x (goal <= 1.15x); "
              f"inference {summary[f'moe_{level}_over_dense_inference']:.3f}x")
    print(f"MoL / dense inference: {summary['mol_over_dense_inference']:.3f}x")
    print(f"padding-free speed-up over XLMRobertaForMaskedLM: {summary['padding_free_speedup_vs_xlmr']:.2f}x "
          "(goal >= 2x)")
    environment = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device == "cuda" else
                   platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    with open(args.out, "w") as handle:
        json.dump({"args": vars(args), "environment": environment, "results": rows, "summary": summary}, handle,
                  indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
