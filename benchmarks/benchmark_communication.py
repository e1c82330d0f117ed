"""Bytes each rank all-gathers and reduce-scatters in one training step (forward + backward): dense under FSDP2,
MoL under FSDP2, MoL under HSDP (2 x 2) and MoL group-parallel, measured on 4 CPU processes (gloo) with
torch.profiler (the c10d all-gather / reduce-scatter calls FSDP2 makes, with their tensor shapes), split into the
group blocks' traffic and the rest; then projected to the papers' sizes from the parameter counts.

    python benchmarks/benchmark_communication.py                   # 4 processes, the tiny size, a table
    python benchmarks/benchmark_communication.py --out comm.json

Counting: a rank's all-gather bytes are the unsharded tensors it receives (what FSDP2 materialises), its
reduce-scatter bytes the unsharded gradients it sends; fp32 here, 2 bytes per element for the bf16 projection.
Goal: group-block traffic per rank under group_parallel at most 1/G of FSDP2's (G language groups).
"""

import argparse
import json
import os
import socket
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORLD = 4
GROUPS = {"a": ["eng_Latn", "deu_Latn"], "b": ["fra_Latn", "spa_Latn"]}
LAYOUTS = ("dense / FSDP2", "MoL / FSDP2", "MoL / HSDP 2x2", "MoL / group_parallel")
# The papers' sizes: XLM-R large (24 blocks, 1024, FFN 4096, 250k vocabulary), the 90-language MoL's 10 groups.
PAPER = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
         "vocab_size": 250002, "group_layers": "stacked"}


def tiny_config(dense=False, **sizes):
    from configuration_mol import MoLConfig

    values = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                  max_position_embeddings=130, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                  languages=[c for codes in GROUPS.values() for c in codes], language_groups=GROUPS,
                  group_layers="dense" if dense else "stacked", sparse_prediction=True)
    values.update(sizes)
    return MoLConfig(**values)


def build(layout, context):
    from modeling_mol import MoLForMaskedLM
    from mol_toolkit.training import group_parallel
    from mol_toolkit.training.parallelism import build_model

    config = tiny_config(dense=layout.startswith("dense"))
    if layout.endswith("group_parallel"):
        plan = group_parallel.plan_layout(WORLD, list(config.language_groups), [1.0] * config.num_groups)
        model, _ = group_parallel.build_group_parallel_model(MoLForMaskedLM, config, context, plan)
        return model, config, plan
    strategy = "hsdp" if "HSDP" in layout else "fsdp"
    model, _ = build_model(MoLForMaskedLM, config, context, strategy, shard_group_size=2 if strategy == "hsdp" else None)
    return model, config, None


def module_sizes(model):
    """local flat-shard numel -> 'group blocks' / 'other', for every FSDP module of this rank (how FSDP2's
    all-gather input is sized), to attribute each collective."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    kinds, claimed = {}, set()
    for name, module in reversed(list(model.named_modules())):  # inner FSDP modules first: each claims its own
        if not isinstance(module, FSDPModule):
            continue
        own = [p for p in module.parameters() if id(p) not in claimed]
        claimed.update(id(p) for p in own)
        local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in own)
        kind = "group blocks" if getattr(module, "is_group_block", False) else "other"
        kinds.setdefault(local, set()).add(kind)
    return kinds


def one_step(model, config, plan, rank):
    """Forward and backward of one batch: a group's sentences on a group-parallel rank, all languages otherwise."""
    generator = torch.Generator().manual_seed(rank)
    ids = torch.randint(5, config.vocab_size, (8, 24), generator=generator)
    labels = torch.where(torch.rand(ids.shape, generator=generator) < 0.15, ids, torch.full_like(ids, -100))
    labels[:, 1] = ids[:, 1]
    if plan is not None:
        group = plan.group_of_rank(rank)
        lang_ids = torch.tensor([config.language_to_group().index(group)] * 8)
    else:
        lang_ids = torch.arange(8) % len(config.languages)
    model(input_ids=ids, lang_ids=lang_ids, labels=labels).loss.backward()


def count(events, kinds):
    totals = {(op, kind): 0 for op in ("all_gather", "reduce_scatter") for kind in ("group blocks", "other")}
    for event in events:
        if event.name == "c10d::_allgather_base_":
            output, given = event.input_shapes[0], event.input_shapes[1]
            op, unsharded, local = "all_gather", output[0], given[0]
        elif event.name == "c10d::_reduce_scatter_base_":
            output, given = event.input_shapes[0], event.input_shapes[1]
            op, unsharded, local = "reduce_scatter", given[0], output[0]
        else:
            continue
        kind = kinds.get(local, {"other"})
        if len(kind) > 1:
            raise RuntimeError(f"two kinds of module shard {local} elements: the attribution would be a guess")
        totals[(op, next(iter(kind)))] += unsharded * 4  # fp32
    return {f"{op} {kind}": value for (op, kind), value in totals.items()}


def worker(rank, port, results_path):
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile

    from mol_toolkit.training.parallelism import ProcessContext

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    context = ProcessContext(world_size=WORLD, rank=rank, local_world_size=2, device=torch.device("cpu"),
                             collective=True)
    measured = {}
    for layout in LAYOUTS:
        model, config, plan = build(layout, context)
        one_step(model, config, plan, rank)  # warm-up: lazy initialisation of FSDP2's buffers
        model.zero_grad(set_to_none=True)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
            one_step(model, config, plan, rank)
        measured[layout] = count(profiler.events(), module_sizes(model))
        dist.barrier()
    everyone = [None] * WORLD
    dist.all_gather_object(everyone, measured)
    if rank == 0:
        Path(results_path).write_text(json.dumps(everyone))
    dist.destroy_process_group()


def parameter_split(config):
    """(group-block parameters, other parameters) of the unsharded model, counted on the meta device."""
    from modeling_mol import MoLForMaskedLM

    with torch.device("meta"):
        model = MoLForMaskedLM(config)
    group = sum(p.numel() for layer in model.mol.encoder.layer if layer.is_group_block for p in layer.parameters())
    total = sum(p.numel() for p in model.parameters())
    return group, total - group


PAPER_LANGUAGES = ["eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "arb_Arab", "hin_Deva", "jpn_Jpan",
                   "kor_Hang", "tha_Thai"]


def projection(num_groups=10):
    """Bytes per rank per step at the paper's size (bf16 all-gathers, fp32 reduce-scatters, the paper's mixed
    precision): every parameter gathered twice (forward, and backward after resharding) and its gradient
    reduce-scattered once. Under group_parallel a rank gathers and reduces one copy of each group block, not G."""
    from configuration_mol import MoLConfig

    codes = PAPER_LANGUAGES[:num_groups]
    config = MoLConfig(**PAPER, languages=codes, language_groups={f"g{i}": [code] for i, code in enumerate(codes)})
    group, other = parameter_split(config)

    def traffic(parameters):
        return 2 * parameters * 2 + parameters * 4

    return {"group_block_parameters": group, "other_parameters": other, "groups": num_groups,
            "fsdp_bytes_per_rank": {"group blocks": traffic(group), "other": traffic(other)},
            "group_parallel_bytes_per_rank": {"group blocks": traffic(group / num_groups), "other": traffic(other)}}


def free_port():
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def main(argv=None):
    import tempfile

    import torch.multiprocessing as mp

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the measured and projected figures as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder) / "results.json"
        mp.spawn(worker, args=(free_port(), str(results)), nprocs=WORLD, join=True)
        per_rank = json.loads(results.read_text())
    columns = ["all_gather group blocks", "all_gather other", "reduce_scatter group blocks", "reduce_scatter other"]
    print(f"Measured bytes per rank in one step, tiny MoL (4 blocks, 2 group blocks, 2 groups), {WORLD} gloo ranks:")
    print("| layout | rank | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for layout in LAYOUTS:
        for rank, measured in enumerate(per_rank):
            print(f"| {layout} | {rank} | " + " | ".join(f"{measured[layout][c]:,}" for c in columns) + " |")
    fsdp = per_rank[0]["MoL / FSDP2"]
    parallel = per_rank[0]["MoL / group_parallel"]
    ratio = (parallel["all_gather group blocks"] + parallel["reduce_scatter group blocks"]) / \
        (fsdp["all_gather group blocks"] + fsdp["reduce_scatter group blocks"])
    print(f"group-block traffic per rank, group_parallel / FSDP2: {ratio:.3f} (goal <= 1/G = {1 / len(GROUPS):.3f})")
    projected = projection()
    f, g = projected["fsdp_bytes_per_rank"], projected["group_parallel_bytes_per_rank"]
    print(f"Projected, XLM-R large MoL with 10 groups (stacked), per rank per step: FSDP2 group blocks "
          f"{f['group blocks'] / 2**30:.2f} GiB + other {f['other'] / 2**30:.2f} GiB; group_parallel group blocks "
          f"{g['group blocks'] / 2**30:.2f} GiB + other {g['other'] / 2**30:.2f} GiB "
          f"({(g['group blocks'] + g['other']) / (f['group blocks'] + f['other']):.2f} of the total).")
    if args.out:
        args.out.write_text(json.dumps({"measured": per_rank, "group_block_ratio": ratio, "projected": projected},
                                       indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
