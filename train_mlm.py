"""MLM pretraining of dense, MoL and language-specific encoders (the Mixture of Languages paper's setup).

    accelerate launch train_mlm.py --config configs/tiny_udhr.yaml
    accelerate launch --config_file configs/accelerate/fsdp2_one_node.yaml train_mlm.py --config configs/mol30_lid.yaml

Every key of the run config can be overridden by a flag of the same name (see --help); --resume continues the
newest checkpoint of --output-dir.
"""

import argparse
import sys

from mol_toolkit.run_config import add_config_arguments, load_run_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run config (configs/*.yaml); flags below override its keys.")
    add_config_arguments(parser)
    args = vars(parser.parse_args(argv))
    return args.pop("config"), args


def main(argv=None):
    config_path, overrides = parse_args(argv)
    try:
        config = load_run_config(config_path, overrides)
        from mol_toolkit.mlm_training import MLMTrainer

        trainer = MLMTrainer(config)
    except ValueError as error:
        print(f"train_mlm.py: error: {error}", file=sys.stderr)
        return 2
    result = trainer.train()
    if trainer.is_main:
        losses = ", ".join(f"{k} {v:.3f}" for k, v in result["devtest_loss"].items())
        print(f"Done: {result['steps']} steps; devtest MLM loss {losses}; outputs in {config.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
