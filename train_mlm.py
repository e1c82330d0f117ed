"""MLM pretraining of dense, MoL and language-specific encoders (the Mixture of Languages paper's setup).

    accelerate launch train_mlm.py --config configs/tiny_udhr.yaml
    accelerate launch --config_file configs/accelerate/fsdp2_one_node.yaml train_mlm.py --config configs/mol30_lid.yaml

Every key of the run config can be overridden by a flag of the same name (see --help); --resume continues the
newest checkpoint of --output-dir.

    python train_mlm.py prepare-data --config configs/mol30_lid.yaml      # write the files the config trains on

prepare-data reads the config's train_corpus / supplementary_corpus / devtest_corpus (Hub datasets or local files)
into its train_data / devtest_data files, with its caps, top-up and deduplication (`prepare-data --help`).
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
    from mol_toolkit.data_preparation import prepare

    config_path, options, overrides = parse_prepare_args(argv)
    try:
        config = load_run_config(config_path, overrides)
        # --overwrite (the run key) prepares again a folder prepared under other settings.
        prepare(config, options["only"], config.overwrite, options["parallel"], not options["no_progress"])
    except ValueError as error:
        print(f"train_mlm.py prepare-data: error: {error}", file=sys.stderr)
        return 2
    return 0


def print_dry_run(plan):
    if plan["routing"] == "language":
        routing = (f"{len(plan['languages'])} languages in {max(1, len(plan['language_groups']))} group(s); "
                   f"group-specific blocks {plan['group_layers'] or 'none'}")
    else:
        routing = (f"{len(plan['languages'])} languages; {plan['num_experts']} experts per routed block, learned "
                   f"{plan['routing']}-level top-1 routing; routed blocks {plan['group_layers']}")
    print(f"Model: {plan['parameters']:,} parameters, {plan['active_parameters']:,} active per sentence; {routing}.")
    print(f"Batch: {plan['sentences_per_device']} sentences per device x {plan['world_size']} process(es) x "
          f"{plan['gradient_accumulation_steps']} accumulation step(s) = {plan['global_batch']} per step; "
          f"{plan['max_steps']} steps.")
    for role in ("train_data", "devtest_data"):
        for code, source in plan[role].items():
            print(f"{role} {code}: {json.dumps(source)}")


def main(argv=None):
    from mol_toolkit.training.parallelism import die_with_launcher

    die_with_launcher()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["prepare-data"]:
        return prepare_data(argv[1:])
    config_path, dry, overrides = parse_args(argv)
    try:
        config = load_run_config(config_path, overrides)
        from mol_toolkit.mlm_training import MLMTrainer, dry_run

        if dry:
            print_dry_run(dry_run(config, int(os.environ.get("WORLD_SIZE", 1))))
            return 0
        trainer = MLMTrainer(config)
    except ValueError as error:
        print(f"train_mlm.py: error: {error}", file=sys.stderr)
        return 2
    from mol_toolkit.mlm_training import TrainingDiverged

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
