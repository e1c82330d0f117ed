"""What languages="auto" adds to encoding: 1,000 FLORES-like sentences of mixed languages encoded with their
languages given, and with each one identified first by the checkpoint's language identifier, side by side.

    python benchmarks/benchmark_language_id.py                 # small model, 1 thread, CPU
    python benchmarks/benchmark_language_id.py --size base --threads 2

The sentences are the shipped UDHR sample's devtest articles split into sentences (46 languages), cycled to
--sentences; the model is a random-weight MoL of --size with the shipped UDHR tokenizer, its identifier fitted on
the sample's training articles (what is timed does not depend on the weights). Both runs go through the project's
SentenceEncoder (tokenize, batch by group, mean-pool); each is timed --repeats times and the median reported.
Goal: identification adds at most 5% to the encode time.
"""

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the model packages, from any working directory

SIZES = {"tiny": (128, 2, 4, 512), "small": (256, 4, 4, 1024), "base": (768, 12, 12, 3072)}  # hidden, layers, heads, ffn
UDHR = ROOT / "data" / "udhr" / "udhr46_articles.jsonl"
TOKENIZER = ROOT / "data" / "udhr-tokenizer"


def udhr_sentences(split):
    """(sentence, language) pairs of the sample's `split`, its articles cut at sentence ends."""
    pairs = []
    for line in UDHR.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["split"] == split:
            pairs += [(s.strip(), row["lang"]) for s in re.split(r"(?<=[.!?。।])\s+", row["text"]) if s.strip()]
    return pairs


def build_bundle(size, folder):
    from transformers import AutoTokenizer

    from configuration_mol import MoLConfig
    from modeling_mol import MoLForMaskedLM
    from mol_toolkit.training import language_identification as lid

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    codes = sorted({code for _, code in udhr_sentences("train")})
    groups = {f"g{i}": codes[i::4] for i in range(4)}
    hidden, layers, heads, ffn = SIZES[size]
    torch.manual_seed(0)
    model = MoLForMaskedLM(MoLConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=ffn, languages=codes,
                                     language_groups=groups, group_layers="stacked")).eval()
    train = {}
    for text, code in udhr_sentences("train"):
        train.setdefault(code, []).append(tokenizer(text, truncation=True, max_length=128)["input_ids"])
    lid.fit_language_identifier(model, train, lid.special_token_ids(tokenizer))
    model.save_pretrained(folder, tokenizer=tokenizer)
    return codes


def median_seconds(function, repeats):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.sentences < 1 or args.repeats < 1 or args.threads < 1 or args.batch_size < 1:
        parser.error("--sentences, --repeats, --threads and --batch-size must be at least 1")
    torch.set_num_threads(args.threads)

    from mol_toolkit.evaluation.encoder import SentenceEncoder

    pairs = udhr_sentences("devtest")
    pairs = [pairs[i % len(pairs)] for i in range(args.sentences)]
    texts, codes = [t for t, _ in pairs], [c for _, c in pairs]
    with tempfile.TemporaryDirectory() as folder:
        build_bundle(args.size, folder)
        # Sentences under the identifier's threshold go to English rather than stopping the run.
        encoder = SentenceEncoder(folder, device="cpu", batch_size=args.batch_size, max_length=128,
                                  show_progress_bar=False, identifier_fallback="eng_Latn")
        encoder.encode(texts[:args.batch_size], codes[:args.batch_size])  # load and warm up
        given = median_seconds(lambda: encoder.encode(texts, codes), args.repeats)
        auto = median_seconds(lambda: encoder.encode(texts, "auto"), args.repeats)
        encoded = encoder.tokenizer(texts, truncation=True, max_length=128)["input_ids"]
        identify = median_seconds(lambda: encoder.identify(encoded), args.repeats)
        accuracy = sum(found == code for found, code in zip(encoder.last_identified, codes)) / len(codes)
    overhead = auto / given - 1
    result = {"size": args.size, "sentences": args.sentences, "languages": len(set(codes)), "threads": args.threads,
              "batch_size": args.batch_size, "languages_given_s": given, "auto_s": auto, "identification_s": identify,
              "overhead": overhead, "sentence_accuracy": accuracy, "goal": "overhead <= 5%",
              "torch": torch.__version__}
    print(f"{args.sentences} sentences, {result['languages']} languages, model {args.size}, {args.threads} thread(s):")
    print(f"  languages given   {given:8.3f} s")
    print(f"  languages='auto'  {auto:8.3f} s   (identification alone {identify:.3f} s; "
          f"{accuracy:.1%} of sentences identified right)")
    print(f"  overhead          {overhead:+8.1%}   goal <= +5%: {'met' if overhead <= 0.05 else 'NOT met'}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
