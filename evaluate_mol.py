"""The papers' evaluation of any encoder: MTEB with mean pooling, each text routed by its language, the papers'
averaging, several models side by side; and the LID probe that chooses the group-specific blocks.

    python evaluate_mol.py mteb --model runs/tiny_udhr/model --model FacebookAI/xlm-roberta-large \
        --model google-bert/bert-base-multilingual-cased --tasks mol-table11 --output-dir runs/eval
    python evaluate_mol.py lid-probe --model runs/dense/model --languages eng_Latn,fra_Latn,rus_Cyrl --output-dir runs/lid
    python evaluate_mol.py lid-probe --preset paper --model my-org/dense-baseline --output-dir runs/lid-paper
    python evaluate_mol.py routing --model runs/moe30_token/model --preset paper --output-dir runs/routing
"""

import argparse
import sys
from pathlib import Path


def add_mteb_arguments(parser):
    from mol_toolkit.evaluation.tasks import PRESETS

    parser.add_argument("--model", action="append", required=True,
                        help="A MoL bundle folder, a Hub repo id or any transformers encoder; repeat to compare.")
    parser.add_argument("--tasks", required=True,
                        help=f"A preset ({', '.join(sorted(PRESETS))}) or mteb task names, comma-separated.")
    parser.add_argument("--languages", help="The comparison's language set: a named set (mol-30, mol-90, table12: "
                        "the paper's Table 12, interference-83) or codes in any form (fra_Latn, fra-Latn, fra, fr); "
                        "every model that routes by language must know each. Default: Table 12 for mol-table11 when "
                        "every model covers it, else the subsets every model can be routed on.")
    parser.add_argument("--allow-different-languages", action="store_true",
                        help="Score each model on the subsets it can be routed on, even where they differ (every "
                        "table then marks it); without it every model is scored on the same subsets.")
    parser.add_argument("--default-language", help="Route subsets in languages the model does not know to this "
                        "language (recorded in the results) instead of skipping them.")
    parser.add_argument("--routing", choices=["subset", "auto"], default="subset",
                        help="subset (default, the papers' way): every text by its subset's language; auto: every "
                        "text by the language the model's identifier finds (what identification costs).")
    parser.add_argument("--output-dir", required=True, help="Results folder (created; reruns skip finished work).")
    parser.add_argument("--batch-size", type=int, default=32, help="Texts per forward pass (default 32).")
    parser.add_argument("--max-length", type=int, help="Tokens per text, the same for every model (default: the "
                        "shortest position table among the models, at most 512).")
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
        update_card=args.update_card, allow_different_languages=args.allow_different_languages,
        show_progress=not args.no_progress, batch_size=args.batch_size,
        max_length=args.max_length, device=args.device, dtype=args.dtype, routing=args.routing,
    )
    comparison = summary["comparison"]
    print(f"Language set {comparison['language_set']}: {len(comparison['languages'])} languages"
          f"{'' if comparison['same_languages'] else ', DIFFERENT per model (--allow-different-languages)'}; "
          f"max length {comparison['max_length']} tokens for every model.")
    for name, model in summary["models"].items():
        average = "n/a" if model["average"] is None else f"{model['average']:.2f}"
        print(f"{name}: average {average} over {len(model['scores'])} subsets")
    print(f"Results in {args.output_dir} (results.md, summary.json)")


def add_lid_probe_arguments(parser):
    parser.add_argument("--model", required=True, help="The (dense) encoder to probe: a MoL bundle folder, a Hub repo "
                        "id or any transformers encoder.")
    parser.add_argument("--preset", choices=["udhr", "paper"], default="udhr",
                        help="udhr (default): the shipped UDHR sample's train and devtest splits, offline; paper: "
                        "Section 3.5's study: the 30 languages of Table 8 (mol-30) on the 30-language dense baseline, "
                        "FLORES-200 devtest to score, 92.3%%; fitted on FLORES-200 dev with a logistic regression "
                        "(the project's choices: the paper states neither) (FLORES+ on the Hub, gated).")
    parser.add_argument("--languages", help="A preset (mol-30, mol-90, interference-83) or comma-separated codes "
                        "(default: the preset's; for udhr, the model's languages or the tiny demo's six).")
    parser.add_argument("--train-data", help="The split the classifiers are fitted on: a path or a mapping as in "
                        "train_mlm.py ('{lang}' is the code, '{flores_plus}' its FLORES+ name), YAML flow syntax.")
    parser.add_argument("--test-data", help="The split they are scored on (same form).")
    parser.add_argument("--threshold", type=float, help="LID accuracy at or above which a block is group-specific "
                        "(default: the paper's 0.923).")
    parser.add_argument("--max-sentences", type=int, help="At most this many sentences per language and split.")
    parser.add_argument("--base-config", help="A train_mlm.py run config the YAML snippet inherits (`base:`), so that "
                        "`train_mlm.py --config D/lid_probe.yaml` trains the chosen layout.")
    parser.add_argument("--output-dir", required=True, help="Where lid_probe.json, lid_probe.png and lid_probe.yaml go.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an earlier probe in --output-dir.")
    parser.add_argument("--batch-size", type=int, default=32, help="Texts per forward pass (default 32).")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available).")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")


def add_routing_arguments(parser):
    parser.add_argument("--model", required=True, help="A MoE baseline (routing token or sentence): a bundle folder "
                        "or a Hub repo id.")
    parser.add_argument("--preset", choices=["udhr", "paper", "paper-flores"], default="udhr",
                        help="udhr (default): the shipped UDHR sample's devtest split, offline, 50 batches; paper "
                        "(Section 5.1, Figure 4, Table 7): the histogram from MassiveIntent test sentences in English "
                        "and French (Khmer is not among the 30 languages), 500 batches, the MLM loss on FLORES-200 "
                        "devtest (FLORES+ on the Hub, gated), MTEB accuracy on English MassiveIntent; paper-flores: "
                        "the histogram from FLORES-200 devtest instead (a labelled variant).")
    parser.add_argument("--data", help="The devtest text instead of the preset's: a path or a mapping as in "
                        "train_mlm.py ('{lang}' is the code, '{flores_plus}' its FLORES+ name), YAML flow syntax.")
    parser.add_argument("--languages", help="A preset (mol-30, ...) or comma-separated codes (default: every language "
                        "the model was trained on).")
    parser.add_argument("--figure-languages", help="The histogram's panels (default: English, French and Khmer where "
                        "analysed, as Figure 4; else the first three).")
    parser.add_argument("--batches", type=int, help="Random batches per language for the histogram (default: the "
                        "preset's).")
    parser.add_argument("--batch-size", type=int, default=32, help="Sentences per batch (default 32).")
    parser.add_argument("--max-sentences", type=int, help="At most this many devtest sentences per language.")
    parser.add_argument("--max-length", type=int, help="Tokens per sentence (default: the position table's, <= 512).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the batches and of the random routing (default 0).")
    parser.add_argument("--mteb-tasks", help="Also score these mteb tasks (or a preset) with learned and with random "
                        "routing (default with --preset paper: MassiveIntentClassification in English, Table 7).")
    parser.add_argument("--output-dir", required=True, help="Where routing.json, expert_histogram.* and "
                        "learned_vs_random.* go.")
    parser.add_argument("--overwrite", action="store_true", help="Replace an earlier analysis in --output-dir.")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available).")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16.")
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")


def run_routing(args):
    import yaml

    from mol_toolkit.evaluation.routing_analysis import analyse

    try:
        data = yaml.safe_load(args.data) if args.data else None
    except yaml.YAMLError as error:
        raise ValueError(f"--data {args.data!r} is not a path or a YAML mapping: {error}") from None
    result = analyse(args.model, args.output_dir, preset=args.preset, data=data, languages=args.languages,
                     figure=args.figure_languages, batches=args.batches, batch_size=args.batch_size,
                     max_sentences=args.max_sentences, max_length=args.max_length, seed=args.seed,
                     mteb_tasks=args.mteb_tasks, overwrite=args.overwrite, device=args.device, dtype=args.dtype,
                     show_progress=not args.no_progress)
    losses = result["mean_loss"]
    print(f"{result['routing']}-level MoE, {result['num_experts']} experts, routed blocks {result['routed_blocks']}: "
          f"devtest MLM loss {losses['learned']:.4f} learned vs {losses['random']:.4f} random routing "
          f"(mean over {len(result['languages'])} languages).")
    if "mteb" in result:
        print(f"MTEB average: learned {result['mteb']['learned']}, random {result['mteb']['random']}.")
    collapsed = result["collapsed_languages"]
    print(f"Routing collapse (>= 90% of a language's tokens on one expert): {collapsed or 'none'}.")
    print(f"Histogram from {result['histogram_data']} in {', '.join(result['histogram_languages'])}.")
    print(f"Wrote {Path(args.output_dir) / 'routing.json'}, expert_histogram.md/.csv/.png, learned_vs_random.md/.csv.")


def run_lid_probe(args):
    import yaml

    from mol_toolkit.evaluation import lid_probe
    from mol_toolkit.evaluation.encoder import SentenceEncoder
    from mol_toolkit.languages import resolve_languages
    from mol_toolkit.text_sources import read_probe_texts

    preset = lid_probe.PRESETS[args.preset]
    threshold = lid_probe.check_threshold(preset["threshold"] if args.threshold is None else args.threshold)
    if args.max_sentences is not None and args.max_sentences < 1:
        raise ValueError(f"--max-sentences must be at least 1, got {args.max_sentences}.")
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {args.output_dir!r} is a file, not a folder.")
    if (out / "lid_probe.json").exists() and not args.overwrite:
        raise ValueError(f"{out} already holds a probe (lid_probe.json): pass --overwrite or another --output-dir.")
    if args.base_config is not None and not Path(args.base_config).is_file():
        raise ValueError(f"--base-config {args.base_config!r} does not exist.")
    encoder = SentenceEncoder(args.model, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                              show_progress_bar=not args.no_progress)
    spec = args.languages or preset["languages"] or encoder.languages or \
        ["eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "arb_Arab"]
    codes = resolve_languages(spec)
    if len(codes) < 2:
        raise ValueError(f"A language-identification probe needs at least two languages, got {codes}.")
    if encoder.routes:
        unknown = [code for code in codes if code not in encoder.languages]
        if unknown:
            raise ValueError(f"{args.model!r} routes by language and does not know {unknown}: it knows {encoder.languages}.")
        print(f"warning: {args.model!r} has group-specific blocks; the paper probes the dense baseline, whose layers "
              "carry no routing by language.", file=sys.stderr)
    sources = {}
    for split, given in (("train", args.train_data), ("test", args.test_data)):
        try:
            sources[split] = yaml.safe_load(given) if given else preset[f"{split}_data"]
        except yaml.YAMLError as error:
            raise ValueError(f"--{split}-data {given!r} is not a path or a YAML mapping: {error}") from None
    texts = {split: read_probe_texts(source, codes, f"{split} data", args.max_sentences)
             for split, source in sources.items()}
    accuracy, seconds = lid_probe.run_probe(encoder, codes, texts["train"], texts["test"])
    group_layers, layout = lid_probe.choose_group_layers(accuracy, threshold)
    choices = dict(preset["choices"])
    if args.languages:
        choices["languages"] = "given with --languages"
    for split in ("train", "test"):
        if getattr(args, f"{split}_data"):
            choices[f"{split}_data"] = f"given with --{split}-data"
    if args.threshold is not None:
        choices["threshold"] = "given with --threshold"
    result = lid_probe.ProbeResult(codes, accuracy, threshold, group_layers, layout, seconds, args.preset, choices)
    lid_probe.write_outputs(result, out, encoder.config.num_hidden_layers, args.base_config)
    print(f"One forward pass per sentence for all {len(accuracy)} layer outputs: {seconds['sentences']} sentences in "
          f"{seconds['forward']:.1f} s; {len(accuracy)} classifiers in {seconds['classifiers']:.1f} s.")
    print("LID accuracy per layer output (emb, then blocks 0..): " + " ".join(f"{a:.3f}" for a in accuracy))
    for what, choice in choices.items():
        print(f"  {what}: {choice}")
    print(f"Group-specific blocks at >= {threshold:.3f}: {group_layers or 'none'} (layout {layout}). "
          f"Wrote {out / 'lid_probe.json'}, lid_probe.png, lid_probe.yaml.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add_mteb_arguments(commands.add_parser("mteb", help="MTEB tasks, the papers' way."))
    add_lid_probe_arguments(commands.add_parser("lid-probe", help="The LID probe that chooses the group-specific "
                                                "blocks (Mixture of Languages, Section 3.5, Figure 3)."))
    add_routing_arguments(commands.add_parser("routing", help="The router analysis of the MoE baselines (Mixture of "
                                              "Languages, Section 5.1, Figure 4, Appendix A)."))
    args = parser.parse_args(argv)
    commands = {"lid-probe": run_lid_probe, "mteb": run_mteb, "routing": run_routing}
    try:
        commands[args.command](args)
    except ValueError as error:
        print(f"evaluate_mol.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
