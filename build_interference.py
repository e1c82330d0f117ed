"""The Interference Matrix (Sections 3 and 4 of the paper): train a small MLM model per language and per pair of
languages, build the loss matrix L and the interference matrix I = (L[A][A] - L[A][B]) / L[A][A], analyse it, and
write the dataset folder that `publish` uploads to the Hub.

    python build_interference.py                                  # the tiny preset on the shipped sample (CPU, minutes)
    python build_interference.py --preset paper --languages interference-83 --shard 3/16
    accelerate launch --num_processes 8 build_interference.py --preset paper   # one job list, split over 8 GPUs
    python build_interference.py publish --repo ORG/NAME          # upload the dataset folder
    python build_interference.py partners --matrix ORG/NAME --target ell_Grek --count 2 --output-dir runs/s5-ell
    python build_interference.py downstream --output-dir runs/s5-ell --evaluation runs/s5-ell/evaluation

partners and downstream are Section 5 (does the matrix predict downstream drops?): partners picks the target's
lowest- and highest-interference partners and groups (or, with --group, the additions friendliest and least
friendly to a group) and writes a run config per model; after training them and `evaluate_mol.py mteb --tasks
interference-massive` into one folder, downstream writes the high-minus-low difference table.

A killed sweep resumes where it stopped when started again with the same arguments.
"""

import argparse
import json
import sys
import time
from pathlib import Path


START = time.perf_counter()


def parse_args(argv):
    from mol_toolkit.run_config import config_key_help

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=config_key_help(sweep=True))
    parser.add_argument("command", nargs="?", default="run", choices=["run", "analyse", "publish", "partners",
                                                                      "downstream"],
                        help="run (default): the sweep, then the matrices, analyses and dataset folder; analyse: "
                             "only the latter, from the results so far; publish: upload the dataset folder; "
                             "partners / downstream: Section 5 (see above)")
    parser.add_argument("--preset", default="tiny", help="a sweep config: tiny (the shipped sample, CPU), paper "
                        "(Section 3.1), both in configs/interference/, or a path to a YAML file with the keys below")
    parser.add_argument("--languages", help="a preset (interference-83, mol-30, mol-90) or comma-separated FLORES "
                                            "codes (default: the preset's)")
    parser.add_argument("--output-dir", help="where results, matrices, plots and the dataset folder go "
                                             "(default: runs/interference-PRESET)")
    parser.add_argument("--shard", default="0/1", help="i/N: run every N-th job starting at i (default 0/1: all)")
    parser.add_argument("--max-steps", type=int, help="override the preset's training steps per model")
    parser.add_argument("--checkpoint-every", type=int, help="override how often a run saves a checkpoint (steps)")
    parser.add_argument("--seeds", help="override the config's seeds, comma-separated (e.g. 0,1,2)")
    parser.add_argument("--similarity-encoder", action="append", default=[],
                        help="a Hub encoder (or folder) for Section 4: embedding similarity of a parallel set, "
                        "rank-correlated with I; NAME:POOLING picks the pooling (mean, first; default auto: what the "
                        "encoder's card prescribes, e.g. MEXMA's first token); repeat to compare encoders")
    parser.add_argument("--parallel", default="data/udhr/udhr46_articles.jsonl",
                        help="the n-way parallel jsonl for --similarity-encoder (lang, id, text)")
    parser.add_argument("--allow-incomplete", action="store_true",
                        help="write/publish a matrix with missing runs (the card says so)")
    parser.add_argument("--matrix", help="partners: the interference matrix (a published dataset id, its folder, or "
                                         "a parquet/CSV of its rows)")
    parser.add_argument("--target", help="partners: the target language (Tables 1 and 2)")
    parser.add_argument("--group", help="partners: comma-separated languages, for the friendliest and least friendly "
                                        "additions to them (Table 3) instead of a target")
    parser.add_argument("--count", type=int, default=2, help="partners: low- and high-interference partners (or "
                                                             "additions) each (default 2)")
    parser.add_argument("--group-size", type=int, default=4, help="partners: languages in the low- and the high-"
                                                                  "interference group (default 4, as Table 2)")
    parser.add_argument("--scale", default="paper", choices=["paper", "tiny"], help="partners: the run configs' "
                        "base, Section 5.1's setting (paper) or the shipped sample's (tiny)")
    parser.add_argument("--evaluation", help="downstream: the evaluate_mol.py mteb --output-dir of the plan's models")
    parser.add_argument("--repo", help="publish: the Hub dataset repo, ORG/NAME")
    parser.add_argument("--private", action="store_true", help="publish: create the repo private")
    return parser.parse_args(argv)


def build_sweep(args):
    from mol_toolkit.interference.sweep import Sweep

    overrides = {key: value for key, value in (("max_steps", args.max_steps),
                                               ("checkpoint_every", args.checkpoint_every)) if value is not None}
    if args.seeds is not None:
        try:
            overrides["seeds"] = [int(seed) for seed in args.seeds.split(",")]
        except ValueError:
            raise ValueError(f"--seeds {args.seeds!r} is not a comma-separated list of integers (e.g. 0,1,2).") from None
    return Sweep(args.preset, args.languages, args.output_dir, overrides)


def load_similarity_inputs(args, codes):
    """The --similarity-encoder and its parallel set, loaded before any run (an unloadable one fails up front)."""
    if not args.similarity_encoder:
        return None
    from mol_toolkit.grouping import encoder_pooling, load_encoder, parse_encoder_spec, read_parallel_set

    if not Path(args.parallel).is_file():
        raise ValueError(f"--parallel {args.parallel!r} is not a file: give the n-way parallel jsonl (lang, id, text).")
    encoders = {}
    for spec in args.similarity_encoder:
        name, pooling = parse_encoder_spec(spec)
        pooling = encoder_pooling(name, pooling)
        encoders[f"{name} ({pooling} pooling)"] = (load_encoder(name), pooling)
    return encoders, read_parallel_set(args.parallel, codes)


def similarity_matrix(inputs, codes):
    """{encoder label: S} for every --similarity-encoder (None without one)."""
    if inputs is None:
        return None
    from mol_toolkit.interference.analysis import embedding_similarity

    encoders, texts = inputs
    return {label: embedding_similarity(codes, texts, encoder, pooling) for label, (encoder, pooling) in encoders.items()}


def write_outputs(sweep, args, similarity_inputs=None):
    """L, I, every analysis and the dataset folder from the results so far; missing runs are reported, not filled."""
    from mol_toolkit.interference.analysis import InterferenceResults, loss_matrix, missing_cells
    from mol_toolkit.interference.matrix import write_dataset_folder

    rows = sweep.result_rows()
    losses = loss_matrix(rows, sweep.languages)
    missing = missing_cells(losses)
    if missing:
        print(f"The matrix misses {len(missing)} cells ({len(sweep.missing_runs())} runs: "
              f"{', '.join(sweep.missing_runs()[:8])}{' ...' if len(sweep.missing_runs()) > 8 else ''}).")
        if not args.allow_incomplete:
            print("Not writing the dataset folder: finish the other shards, or pass --allow-incomplete.")
            return None
    computed = InterferenceResults.compute(losses, similarity_matrix(similarity_inputs, sweep.languages))  # once
    report = write_dataset_folder(sweep.output_dir / "dataset", losses, rows, sweep.settings,
                                  allow_incomplete=args.allow_incomplete, repo_id=args.repo, computed=computed)
    losses.to_csv(sweep.output_dir / "loss_matrix.csv")
    return report


def run(args):
    import torch
    from accelerate import PartialState

    from mol_toolkit.interference.sweep import parse_shard, select_jobs

    shard = parse_shard(args.shard)
    sweep = build_sweep(args)
    similarity_inputs = load_similarity_inputs(args, sweep.languages)
    # Without cpu=True a CPU launch of several processes would leave each believing it is alone.
    state = PartialState(cpu=not torch.cuda.is_available())
    with state.main_process_first():
        preparation = sweep.prepare(is_main=state.is_main_process)
    jobs = select_jobs(sweep.jobs, shard, (state.process_index, state.num_processes))
    label = f"{args.shard}:{state.process_index}/{state.num_processes}"
    if state.is_main_process:
        print(f"Interference sweep ({args.preset}): {len(sweep.languages)} languages, {len(sweep.jobs)} runs; this "
              f"shard {args.shard} runs {len(select_jobs(sweep.jobs, shard))} of them over {state.num_processes} "
              f"process(es). Output: {sweep.output_dir}")
    timing = sweep.run(jobs, label, show_progress=state.is_local_main_process)
    state.wait_for_everyone()
    if not state.is_main_process:
        return 0
    sweep_wall = time.perf_counter() - START
    report = write_outputs(sweep, args, similarity_inputs)
    # Overhead: all of the sweep (process start, data, tokenization, checkpoints, result files) but training steps and
    # evaluation forwards; the analyses and plots that follow are timed apart.
    overhead = {"sweep_wall_s": sweep_wall, "compute_s": timing["compute_s"],
                "overhead_s": sweep_wall - timing["compute_s"],
                "overhead_share": (sweep_wall - timing["compute_s"]) / sweep_wall,
                "analysis_s": time.perf_counter() - START - sweep_wall, "runs": timing["runs"],
                "skipped": timing["skipped"], "prepare_s": preparation["prepare_s"],
                "tokenizations": len(preparation["tokenized"]), "languages": len(sweep.languages)}
    (sweep.output_dir / "sweep_timing.json").write_text(json.dumps(overhead, indent=2))
    print(f"Sweep overhead (all but training steps and evaluation forwards): {overhead['overhead_s']:.1f} s of "
          f"{sweep_wall:.1f} s ({overhead['overhead_share']:.1%}); {len(preparation['tokenized'])} tokenizations; "
          f"analyses {overhead['analysis_s']:.1f} s.")
    if report is not None:
        print(f"Wrote the matrices, analyses and dataset folder to {sweep.output_dir} "
              f"(publish with: python build_interference.py publish --repo ORG/NAME --output-dir {sweep.output_dir})")
    state.destroy_process_group() if hasattr(state, "destroy_process_group") else None
    return 0


def analyse(args):
    sweep = build_sweep(args)
    sweep.check_output_dir(subset=True)
    report = write_outputs(sweep, args, load_similarity_inputs(args, sweep.languages))
    if report is not None:
        print(f"Wrote the matrices, analyses and dataset folder to {sweep.output_dir}")
    return 0


def publish(args):
    from mol_toolkit.interference.matrix import publish_dataset

    if not args.repo:
        raise ValueError("publish needs --repo ORG/NAME (the Hub dataset to create or update).")
    folder = Path(args.output_dir or f"runs/interference-{args.preset}") / "dataset"
    if not (folder / "README.md").is_file():
        raise ValueError(f"{folder} holds no dataset folder: run the sweep first (python build_interference.py "
                         f"--output-dir {folder.parent}).")
    publish_dataset(folder, args.repo, private=args.private, allow_incomplete=args.allow_incomplete)
    print(f"Published {folder} as the Hub dataset {args.repo}: "
          f"datasets.load_dataset({args.repo!r}, 'interference')")
    return 0


def partners(args):
    from mol_toolkit.interference.downstream import plan_experiment

    if not args.matrix or not args.output_dir:
        raise ValueError("partners needs --matrix (the interference matrix) and --output-dir (where the configs go).")
    plan = plan_experiment(args.matrix, args.output_dir, target=args.target, group=args.group, count=args.count,
                           group_size=args.group_size if args.group is None else args.group_size, scale=args.scale,
                           project=Path(__file__).resolve().parent)
    for role, values in plan["chosen"].items():
        print(f"{role}: " + ", ".join(f"{code} ({value:+.4f})" for code, value in values))
    print(f"Wrote {len(plan['models'])} run configs to {Path(args.output_dir) / 'configs'} and plan.json. Train each "
          "(train_mlm.py --config ...), evaluate them all into one folder (evaluate_mol.py mteb --tasks "
          "interference-massive --model ...), then: build_interference.py downstream --output-dir "
          f"{args.output_dir} --evaluation FOLDER")
    return 0


def downstream(args):
    from mol_toolkit.interference.downstream import write_downstream_table

    if not args.output_dir or not args.evaluation:
        raise ValueError("downstream needs --output-dir (the partners plan) and --evaluation (the evaluate_mol.py "
                         "mteb folder of its models).")
    rows = write_downstream_table(args.output_dir, args.evaluation)
    print(f"Wrote downstream.md/.csv/.json to {args.output_dir} ({len(rows)} rows).")
    return 0


def main(argv=None):
    from mol_toolkit.training.parallelism import die_with_launcher

    die_with_launcher()
    args = parse_args(argv)
    try:
        commands = {"run": run, "analyse": analyse, "publish": publish, "partners": partners, "downstream": downstream}
        return commands[args.command](args)
    except ValueError as error:
        print(f"build_interference.py: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
