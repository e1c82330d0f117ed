#!/usr/bin/env python
"""Group languages for a MoL model (Mixture of Languages, Section 3.4), or by a measured interference matrix.

    python group_languages.py --strategy linguistic --languages mol-30 --num-groups 5 --out groups.json
    python group_languages.py --strategy paper --languages mol-90
    python group_languages.py --strategy token-overlap --languages eng_Latn,deu_Latn,... --num-groups 2 \
        --tokenizer FacebookAI/xlm-roberta-base --balance optimal
    python group_languages.py --strategy interference --languages mol-30 --num-groups 5 --matrix ORG/interference
    python group_languages.py --strategy paper --languages mol-30 --swap spa_Latn:deu_Latn --out swapped.json

Writes {"strategy", "language_groups", "report"}; `language_groups` is what MoLConfig(language_groups=...) reads.
"""

import argparse
import json
import sys
from pathlib import Path

from mol_toolkit import grouping as g
from mol_toolkit.interference.matrix import load_interference_matrix
from mol_toolkit.languages import PRESETS, resolve_languages


STRATEGIES = ["linguistic", "paper", "script", "token-overlap", "embedding", "balanced-data", "random", "interference"]
DEFAULT_PARALLEL = Path(__file__).parent / "data" / "udhr" / "udhr46_articles.jsonl"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", required=True, choices=STRATEGIES)
    parser.add_argument("--languages", required=True, help=f"a preset {sorted(PRESETS)} or comma-separated FLORES codes")
    parser.add_argument("--num-groups", type=int, help="K; optional for linguistic, script and paper")
    parser.add_argument("--out", type=Path, help="where to write the groups JSON (default: print only)")
    parser.add_argument("--balance", default="dendrogram", choices=["none", "dendrogram", "optimal"],
                        help="token-overlap and embedding: plain UPGMA cut, cut then rebalance, or the exact program")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds for the integer programs")
    parser.add_argument("--parallel", type=Path, default=DEFAULT_PARALLEL, help="n-way parallel jsonl (lang, id, text, split)")
    parser.add_argument("--split", default="all", help="split of the parallel set to use (devtest, train or all)")
    parser.add_argument("--tokenizer", default="FacebookAI/xlm-roberta-base", help="token-overlap: Hub id or folder")
    parser.add_argument("--encoder", help="embedding: any Hub encoder id or local folder")
    parser.add_argument("--pooling", default="auto", choices=list(g.POOLINGS),
                        help="embedding: the sentence embedding, as the encoder's card prescribes (auto: its "
                        "sentence-transformers pooling config, MEXMA's first token, else the mean), or mean / first")
    parser.add_argument("--counts", type=Path, help="balanced-data: JSON {code: sentences}")
    parser.add_argument("--matrix", help="interference: a published interference dataset (Hub id, folder or file)")
    parser.add_argument("--seed", type=int, default=0, help="random: the seed")
    parser.add_argument("--plot", type=Path, help="dendrogram PNG for clustering strategies (default: beside --out)")
    parser.add_argument("--swap", action="append", default=[], metavar="A:B",
                        help="exchange two languages of different groups after grouping (Table 1 / Table 14: e.g. "
                        "spa_Latn:deu_Latn); repeat for several swaps, applied in order")
    args = parser.parse_args(argv)
    if args.num_groups is None and args.strategy not in ("linguistic", "script", "paper"):
        parser.error(f"--strategy {args.strategy} needs --num-groups")
    if args.strategy == "embedding" and not args.encoder:
        parser.error("--strategy embedding needs --encoder (a Hub id or a local folder)")
    if args.strategy == "balanced-data" and not args.counts:
        parser.error("--strategy balanced-data needs --counts (JSON {code: sentences})")
    if args.strategy == "interference" and not args.matrix:
        parser.error("--strategy interference needs --matrix (the dataset build_interference.py publishes)")
    check_paths(parser, args)
    return args


def check_paths(parser, args):
    """Every file named on the command line exists, and --out / --plot can be written, before any work."""
    for flag, path in (("--out", args.out), ("--plot", args.plot)):
        if path is not None and path.is_dir():
            parser.error(f"{flag} {str(path)!r} is a directory: give a file path (e.g. {path / 'groups.json'}).")
        if path is not None and path.parent.exists() and not path.parent.is_dir():
            parser.error(f"{flag} {str(path)!r}: {str(path.parent)!r} is a file, not a folder.")
    if args.counts is not None and not args.counts.is_file():
        parser.error(f"--counts {str(args.counts)!r} does not exist: give a JSON file {{code: sentences}}.")
    needs_parallel = args.strategy in ("token-overlap", "embedding")
    if needs_parallel and not args.parallel.is_file():
        parser.error(f"--parallel {str(args.parallel)!r} does not exist: give an n-way parallel jsonl (lang, id, text).")


def read_counts(path):
    """{code: sentences} with positive integer counts."""
    try:
        counts = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"--counts {str(path)!r} is not valid JSON: {error}.") from None
    if not isinstance(counts, dict):
        raise ValueError(f"--counts {str(path)!r} must hold a JSON object {{code: sentences}}, got {type(counts).__name__}.")
    for code, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"--counts {str(path)!r} gives {code} the count {count!r}: counts are integers >= 0.")
    return counts


def make_groups(args, codes, counts, matrix):
    k = args.num_groups
    if args.strategy == "linguistic":
        return g.by_attribute(codes, "family", k)
    if args.strategy == "script":
        return g.by_attribute(codes, "script", k)
    if args.strategy == "paper":
        return g.paper(codes, args.languages, k)
    if args.strategy == "random":
        return g.random_groups(codes, k, args.seed)
    if args.strategy == "balanced-data":
        return g.balanced_data(codes, counts, k, args.time_limit)
    if args.strategy == "interference":
        return g.interference_groups(codes, matrix, k, args.time_limit)
    g.check_k(codes, k, balanced=args.balance != "none")
    texts = g.read_parallel_set(args.parallel, codes, args.split)
    if args.strategy == "token-overlap":
        from transformers import AutoTokenizer

        distance = g.token_overlap_distance(codes, texts, AutoTokenizer.from_pretrained(args.tokenizer))
    else:
        distance = g.embedding_distance(codes, texts, args.encoder, g.encoder_pooling(args.encoder, args.pooling))
    return g.cluster(args.strategy, codes, distance, k, args.balance, args.time_limit)


def main(argv=None):
    args = parse_args(argv)
    try:
        codes = resolve_languages(args.languages)
        counts = read_counts(args.counts) if args.counts else None
        matrix = load_interference_matrix(args.matrix, codes) if args.matrix else None
        swaps = [g.parse_swap(swap) for swap in args.swap]  # malformed or unknown codes fail before any work
        grouping = make_groups(args, codes, counts, matrix)
        if swaps:
            grouping.language_groups = g.swap_languages(grouping.language_groups, swaps)
            grouping.strategy = f"{grouping.strategy}+swaps"
            grouping.notes["swaps"] = [f"{a}:{b}" for a, b in swaps]
    except (ValueError, RuntimeError) as error:
        print(f"group_languages.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    report = g.report(grouping, counts, matrix)
    if grouping.tree is not None and (args.plot or args.out):
        plot = args.plot or args.out.with_suffix(".png")
        plot.parent.mkdir(parents=True, exist_ok=True)
        g.plot_dendrogram(grouping, plot)
        report["dendrogram"] = str(plot)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(g.to_json(grouping, report) + "\n", encoding="utf-8")
    for name, members in grouping.language_groups.items():
        print(f"{name} ({len(members)}): {' '.join(members)}")
    print(json.dumps(report, indent=2))
    return grouping


if __name__ == "__main__":
    main()
