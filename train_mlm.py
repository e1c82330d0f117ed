"""MLM pretraining of dense, MoL and language-specific encoders (the Mixture of Languages paper's setup).

    accelerate launch train_mlm.py --config configs/tiny_udhr.yaml
    accelerate launch --config_file configs/accelerate/fsdp2_one_node.yaml train_mlm.py --config configs/mol30_lid.yaml

Every key of the run config can be overridden by a flag of the same name (see --help); --resume continues the
newest checkpoint of --output-dir.

    python train_mlm.py prepare-data --config configs/mol30_lid.yaml      # write the files the config trains on

prepare-data reads the config's train_corpus / supplementary_corpus / devtest_corpus (Hub datasets or local files)
into its train_data / devtest_data files, with its caps, top-up and deduplication (`prepare-data --help`).

    python train_mlm.py fit-language-id --model runs/converted --output-dir runs/converted-lid

fit-language-id gives any MoL bundle (a converted XLM-R included) the language identifier that `languages="auto"`
uses; train_mlm.py fits it itself on the models it exports.
"""

import argparse
import json
import os
import sys

from mol_toolkit.run_config import add_config_arguments, load_run_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run config (configs/*.yaml); flags below override its keys.")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the config, build the model on the meta device, print its total and active "
                             "parameters, the data sources, world size and global batch, and exit (offline, without "
                             "tokenizer or data when the config gives vocab_size)")
    add_config_arguments(parser)
    args = vars(parser.parse_args(argv))
    return args.pop("config"), args.pop("dry_run"), args


def parse_prepare_args(argv):
    parser = argparse.ArgumentParser(prog="train_mlm.py prepare-data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run config; its *_corpus keys are read, its *_data files written.")
    parser.add_argument("--only", help="Only these languages (comma-separated codes; default: the config's).")
    parser.add_argument("--parallel", help="Also write the devtest sentences as an n-way parallel jsonl (for "
                        "group_languages.py --parallel).")
    parser.add_argument("--no-progress", action="store_true", help="No progress bars.")
    add_config_arguments(parser)
    args = vars(parser.parse_args(argv))
    options = {key: args.pop(key) for key in ("only", "parallel", "no_progress")}
    return args.pop("config"), options, args


def prepare_data(argv):
    from mol_toolkit.training.data_preparation import prepare

    config_path, options, overrides = parse_prepare_args(argv)
    try:
        config = load_run_config(config_path, overrides)
        # --overwrite (the run key) prepares again a folder prepared under other settings.
        prepare(config, options["only"], config.overwrite, options["parallel"], not options["no_progress"])
    except ValueError as error:
        print(f"train_mlm.py prepare-data: error: {error}", file=sys.stderr)
        return 2
    return 0


def parse_fit_language_id_args(argv):
    from mol_toolkit.training.language_identification import DEFAULT_SENTENCES

    parser = argparse.ArgumentParser(prog="train_mlm.py fit-language-id",
                                     description="Fit the language identifier of a MoL bundle (languages='auto'): a "
                                     "linear model over mean-pooled input embeddings, scored on devtest text.")
    parser.add_argument("--model", required=True, help="A MoL bundle folder or Hub repo id.")
    parser.add_argument("--output-dir", required=True, help="Where the bundle with its identifier is written (new).")
    parser.add_argument("--train-data", help="Text to fit on: a path or a mapping as train_mlm.py's train_data "
                        "(`{lang}` is the code); default: the shipped UDHR sample, articles 1-24.")
    parser.add_argument("--devtest-data", help="Text to score on (same form); default: UDHR articles 25-30.")
    parser.add_argument("--languages", help="The languages it tells apart (comma-separated codes or a preset; "
                        "default: the model's). Languages the model lacks go to the fallback when predicted.")
    parser.add_argument("--sentences", type=int, default=DEFAULT_SENTENCES,
                        help=f"Sentences per language to fit on (default {DEFAULT_SENTENCES}).")
    parser.add_argument("--threshold", type=float, default=0.5, help="Confidence under which a prediction is not "
                        "trusted (default 0.5).")
    parser.add_argument("--fallback", help="Where unidentified texts go: a code of the model's, or 'error' (default: "
                        "the model's default_language, else an error).")
    parser.add_argument("--overwrite", action="store_true", help="Replace an earlier --output-dir.")
    return parser.parse_args(argv)


def fit_language_id(argv):
    from mol_toolkit.text_sources import udhr_sources
    from mol_toolkit.training.language_identification import fit_bundle, parse_text_source

    args = parse_fit_language_id_args(argv)
    try:
        train = parse_text_source(args.train_data, "--train-data") if args.train_data else udhr_sources("train")
        devtest = parse_text_source(args.devtest_data, "--devtest-data") if args.devtest_data else udhr_sources("devtest")
        result = fit_bundle(args.model, args.output_dir, train, devtest, args.languages, args.sentences,
                            args.threshold, args.fallback, args.overwrite)
    except ValueError as error:
        print(f"train_mlm.py fit-language-id: error: {error}", file=sys.stderr)
        return 2
    print(f"language identifier of {args.model}: devtest accuracy {result['accuracy']:.3f} over "
          f"{result['sentences']} texts; bundle written to {args.output_dir}")
    return 0


def print_dry_run(plan):
    if plan["routing"] == "language":
        routing = (f"{len(plan['languages'])} languages in {max(1, len(plan['language_groups']))} group(s); "
                   f"group-specific blocks {plan['group_layers'] or 'none'}")
    else:
        routing = (f"{len(plan['languages'])} languages; {plan['num_experts']} experts per routed block, learned "
                   f"{plan['routing']}-level top-1 routing; routed blocks {plan['group_layers']}")
    print(f"Model: {plan['parameters']:,} parameters, {plan['active_parameters']:,} active per sentence; {routing}.")
    pinned = " (pinned by the preset: global_batch_size)" if plan["global_batch_pinned"] else ""
    print(f"Global batch: {plan['global_batch']} sentences per step{pinned} = {plan['sentences_per_device']} "
          f"sentences per device x {plan['world_size']} process(es) x {plan['gradient_accumulation_steps']} "
          f"accumulation step(s); {plan['max_steps']} steps.")
    epochs = plan["epochs"]
    if epochs["known"]:
        print("Epochs per language: " + ", ".join(f"{code} {value:.2f}" for code, value in epochs["per_language"].items()))
    else:
        print(f"Epochs per language: {epochs['rule']}.")
    if plan["routing"] == "language":
        print(f"Group-specific block indices (0 = the block next to the embeddings): {plan['group_layers'] or 'none'}.")
    for role in ("train_data", "devtest_data"):
        for code, source in plan[role].items():
            print(f"{role} {code}: {json.dumps(source)}")


def main(argv=None):
    from mol_toolkit.training.parallelism import die_with_launcher

    die_with_launcher()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["prepare-data"]:
        return prepare_data(argv[1:])
    if argv[:1] == ["fit-language-id"]:
        return fit_language_id(argv[1:])
    config_path, dry, overrides = parse_args(argv)
    try:
        config = load_run_config(config_path, overrides)
        from mol_toolkit.training.trainer import MLMTrainer, dry_run

        if dry:
            print_dry_run(dry_run(config, int(os.environ.get("WORLD_SIZE", 1))))
            return 0
        trainer = MLMTrainer(config)
    except ValueError as error:
        print(f"train_mlm.py: error: {error}", file=sys.stderr)
        return 2
    from mol_toolkit.training.trainer import TrainingDiverged

    try:
        result = trainer.train()
    except (ValueError, TrainingDiverged) as error:  # a checkpoint that cannot be written or read, a NaN loss
        print(f"train_mlm.py: error: {error}", file=sys.stderr)
        return 2 if isinstance(error, ValueError) else 3
    if trainer.is_main:
        losses = ", ".join(f"{k} {v:.3f}" for k, v in result["devtest_loss"].items())
        print(f"Done: {result['steps']} steps; devtest MLM loss {losses}; outputs in {config.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
