"""The papers' evaluation of any encoder: MTEB with mean pooling, each text routed by its language, the papers'
averaging, several models side by side.

    python evaluate_mol.py mteb --model runs/tiny_udhr/model --model FacebookAI/xlm-roberta-large \
        --model google-bert/bert-base-multilingual-cased --tasks mol-table11 --output-dir runs/eval
"""

import argparse
import sys


def add_mteb_arguments(parser):
    from mol_toolkit.evaluation.tasks import PRESETS

    parser.add_argument("--model", action="append", required=True,
                        help="A MoL bundle folder, a Hub repo id or any transformers encoder; repeat to compare.")
    parser.add_argument("--tasks", required=True,
                        help=f"A preset ({', '.join(sorted(PRESETS))}) or mteb task names, comma-separated.")
    parser.add_argument("--languages", help="Only these languages (a comma-separated list of codes in any form: "
                        "fra_Latn, fra-Latn, fra, fr); each must be one the model knows.")
    parser.add_argument("--default-language", help="Route subsets in languages the model does not know to this "
                        "language (recorded in the results) instead of skipping them.")
    parser.add_argument("--output-dir", required=True, help="Results folder (created; reruns skip finished work).")
    parser.add_argument("--batch-size", type=int, default=32, help="Texts per forward pass (default 32).")
    parser.add_argument("--max-length", type=int, help="Tokens per text (default: what the position table allows, "
                        "at most 512).")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available).")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16.")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice).")
    parser.add_argument("--update-card", action="store_true",
                        help="Write the scores into each evaluated local bundle's README.md as model-index results.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")


def run_mteb(args):
    import torch

    from mol_toolkit.evaluation.run import evaluate_models

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    summary = evaluate_models(
        args.model, args.tasks, args.output_dir, languages=args.languages, default_language=args.default_language,
        update_card=args.update_card, show_progress=not args.no_progress, batch_size=args.batch_size,
        max_length=args.max_length, device=args.device, dtype=args.dtype,
    )
    for name, model in summary["models"].items():
        average = "n/a" if model["average"] is None else f"{model['average']:.2f}"
        print(f"{name}: average {average} over {len(model['scores'])} subsets")
    print(f"Results in {args.output_dir} (results.md, summary.json)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add_mteb_arguments(commands.add_parser("mteb", help="MTEB tasks, the papers' way."))
    args = parser.parse_args(argv)
    try:
        run_mteb(args)
    except ValueError as error:
        print(f"evaluate_mol.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
