"""Sentences/s of `mol_toolkit.evaluation.mteb_encoder` on a MoL model vs sentence-transformers' own mean-pooled
XLM-R of the same size, on the same FLORES-like length mix, side by side (goal: at least 1.5x).

    python benchmarks/benchmark_encoder.py                                  # CPU, small size, 1 thread
    python benchmarks/benchmark_encoder.py --size base --device cuda --sentences 4096

Both encoders get the same texts in the same shuffled order and the same batch size. The MoL model (stacked
layout, 3 language groups, 6 languages) has the active size of the XLM-R model; its encoder packs each batch's
real tokens (no compute on padding), batches by language group and length, and computes the mean over real tokens.
sentence-transformers sorts by length and pads each batch. Texts are UDHR words cut to token lengths drawn like
FLORES-200's under XLM-R's tokenizer (log-normal, mean ~30, clipped to [6, 90]), tokenized by the shipped UDHR
tokenizer. Prints a table and writes JSON (--out).
"""

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
from benchmarks.benchmark_training import SIZES, flores_like_lengths  # noqa: E402


LANGUAGES = ["eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "arb_Arab"]
GROUPS = {"germanic": LANGUAGES[:2], "romance": LANGUAGES[2:4], "other": LANGUAGES[4:]}


def flores_like_texts(tokenizer, count, seed=0):
    """(texts, languages): UDHR words of each language, cut to a FLORES-like token length."""
    words = {}
    with open(PROJECT / "data" / "udhr" / "udhr46_articles.jsonl", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["lang"] in LANGUAGES:
                words.setdefault(row["lang"], []).extend(row["text"].split())
    rng = random.Random(seed)
    texts, codes = [], []
    for target in flores_like_lengths(count, seed):
        code = rng.choice(LANGUAGES)
        start = rng.randrange(len(words[code]))
        pool = words[code][start:] + words[code][:start]
        text = " ".join(pool[: int(target)])
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: int(target) - 2]
        texts.append(tokenizer.decode(ids))
        codes.append(code)
    return texts, codes


def save_models(size, tokenizer, folder):
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from configuration_mol import MoLConfig
    from modeling_mol import MoLModel

    hidden, layers, heads, ffn, _ = SIZES[size]
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=ffn, max_position_embeddings=514)
    torch.manual_seed(0)
    MoLModel(MoLConfig(**common, languages=LANGUAGES, language_groups=GROUPS, group_layers="stacked"),
             add_pooling_layer=False).save_pretrained(folder / "mol", tokenizer=tokenizer)
    XLMRobertaModel(XLMRobertaConfig(**common), add_pooling_layer=False).save_pretrained(folder / "xlmr")
    tokenizer.save_pretrained(folder / "xlmr")


def time_runs(encode, runs):
    encode()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        encode()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3, help="Timed runs per encoder (the median is reported).")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1).")
    parser.add_argument("--out", help="Write the figures as JSON here.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer

    from mol_toolkit.evaluation import mteb_encoder

    tokenizer = AutoTokenizer.from_pretrained(PROJECT / "data" / "udhr-tokenizer")
    texts, codes = flores_like_texts(tokenizer, args.sentences)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_models(args.size, tokenizer, folder)
        mol = mteb_encoder(str(folder / "mol"), device=args.device, batch_size=args.batch_size,
                           show_progress_bar=False).encoder
        transformer = models.Transformer(str(folder / "xlmr"), max_seq_length=512)
        st = SentenceTransformer(modules=[transformer, models.Pooling(transformer.get_embedding_dimension(), "mean")],
                                 device=args.device)
        mol_time = time_runs(lambda: mol.encode(texts, codes), args.runs)
        st_time = time_runs(lambda: st.encode(texts, batch_size=args.batch_size, show_progress_bar=False), args.runs)
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    result = {
        "size": args.size, "device": args.device, "threads": args.threads, "sentences": args.sentences,
        "batch_size": args.batch_size, "mean_tokens": statistics.fmean(lengths), "max_tokens": max(lengths),
        "mol_sentences_per_s": args.sentences / mol_time, "st_xlmr_sentences_per_s": args.sentences / st_time,
        "speedup": st_time / mol_time, "torch": torch.__version__, "machine": platform.machine(),
    }
    print(f"{args.sentences} FLORES-like sentences (mean {result['mean_tokens']:.1f} tokens, max "
          f"{result['max_tokens']}), size {args.size}, {args.device}, {args.threads} thread(s), batch {args.batch_size}")
    print("| encoder | sentences/s |\n|---|---|")
    print(f"| mteb_encoder, MoL (stacked, 3 groups) | {result['mol_sentences_per_s']:.1f} |")
    print(f"| sentence-transformers, XLM-R mean pooling | {result['st_xlmr_sentences_per_s']:.1f} |")
    print(f"speedup: {result['speedup']:.2f}x (goal: at least 1.5x)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
