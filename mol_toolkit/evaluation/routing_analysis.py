"""The router analysis of the Mixture of Languages paper's MoE baselines (Section 5.1, Figure 4, Appendix A):

- the histogram of experts chosen per language at inference (no noise, top-1) over N random batches of each
  language's sentences, per routed block and over all of them (Figure 4: English, French, Khmer), checking for
  routing collapse;
- learned vs random routing (Table 7): the devtest MLM loss per language with the learned router and with uniformly
  random experts, and, when tasks are given, MTEB scores of both through `evaluate_mol.py mteb`'s machinery.

Output folder: routing.json (everything), expert_histogram.csv / .md / .png, learned_vs_random.csv / .md, and
mteb-learned/ and mteb-random/ (the evaluation folders) when MTEB tasks are given.
"""

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mol_toolkit.training import mlm_data
from mol_toolkit.training.expert_load import ExpertLoad

from mol_toolkit.text_sources import flores_plus_source, read_probe_texts, udhr_sources


FIGURE4_LANGUAGES = ["eng_Latn", "fra_Latn", "khm_Khmr"]  # highest, high and low resource in the paper
# Section 5.1: the histogram is taken "during the evaluation on the MassiveIntentClassification MTEB dataset";
# Table 7: the loss on FLORES in every language of the model, the accuracy on MassiveIntent in English.
MASSIVE_INTENT = {"mteb_task": "MassiveIntentClassification", "split": "test"}
PRESETS = {
    # The paper's setting: the histogram from MassiveIntent test sentences (English, French; Khmer where the model has
    # it), 500 batches; the MLM loss on FLORES-200 devtest (FLORES+ on the Hub, gated); MTEB: MassiveIntent, English.
    "paper": {"data": flores_plus_source("devtest"), "batches": 500, "histogram_data": MASSIVE_INTENT,
              "mteb_tasks": "MassiveIntentClassification", "mteb_languages": "eng_Latn"},
    # A labelled variant: the histogram from FLORES-200 devtest too (every language of the model), 500 batches.
    "paper-flores": {"data": flores_plus_source("devtest"), "batches": 500},
    # The shipped UDHR sample's devtest split, offline.
    "udhr": {"data": udhr_sources("devtest"), "batches": 50},
}
RESULT_FILE = "routing.json"


def load_moe(source, device, dtype):
    """(MoLForMaskedLM of a MoE bundle or Hub repo, its tokenizer), loaded as users load it (trust_remote_code)."""
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    from .encoder import EncoderLoadError, check_model_source

    check_model_source(source)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=True)
    except (OSError, ValueError) as error:
        raise EncoderLoadError(f"Cannot load model {source!r}: {error}") from None
    if getattr(config, "model_type", None) != "mol" or getattr(config, "routing", "language") == "language":
        what = f"routing={config.routing!r}" if getattr(config, "model_type", None) == "mol" else \
            f"model_type={getattr(config, 'model_type', None)!r}"
        raise ValueError(f"{source!r} is not a MoE ({what}): the router analysis needs a MoL-family model with learned "
                         "routing (routing 'token' or 'sentence', e.g. trained from configs/moe30_token.yaml).")
    model = AutoModelForMaskedLM.from_pretrained(source, trust_remote_code=True, dtype=dtype).to(device).eval()
    return model, AutoTokenizer.from_pretrained(source, trust_remote_code=True)


def check_languages(codes, model):
    unknown = [code for code in codes if code not in model.config.languages]
    if unknown:
        raise ValueError(f"The model was not trained on {unknown}: its languages are {model.config.languages}.")
    if not codes:
        raise ValueError("No languages to analyse.")
    return codes


@torch.inference_mode()
def expert_histogram(model, tokenized, batches, batch_size, seed, pad_token_id, progress=None):
    """ExpertLoad over `batches` random batches per language (sentences drawn without replacement within a batch,
    all of them when a language has fewer than batch_size)."""
    device = next(model.parameters()).device
    load = ExpertLoad.for_model(model.config)
    generator = np.random.default_rng(seed)
    for code, sequences in tokenized.items():
        lang_id = model.config.languages.index(code)
        for _ in range(batches):
            chosen = generator.choice(len(sequences), size=min(batch_size, len(sequences)), replace=False)
            input_ids, mask = mlm_data.pad_batch([sequences[i] for i in chosen], pad_token_id)
            logits = model.mol(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                               output_router_logits=True).router_logits
            load.add(logits, mask, torch.full((len(chosen),), lang_id))
            if progress is not None:
                progress.update(1)
    return load


@torch.inference_mode()
def mlm_loss_per_language(model, masked_batches, progress=None):
    """language -> the devtest MLM loss: summed token cross-entropy over the masked tokens / their number."""
    device = next(model.parameters()).device
    losses = {}
    for code, batches in masked_batches.items():
        total, count = 0.0, 0
        for batch in batches:
            logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
            labels = batch["labels"].to(device)
            total += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                     reduction="sum").item()
            count += int((labels != -100).sum())
            if progress is not None:
                progress.update(1)
        losses[code] = total / count
    return losses


def masked_devtest(tokenized, tokenizer, model, batch_size, mlm_probability=0.15):
    """Every language's devtest sentences masked once (a generator fixed by the language code, as train_mlm.py's
    evaluation), so that learned and random routing see the same masked tokens."""
    spec = mlm_data.MaskingSpec.from_tokenizer(tokenizer, mlm_probability)
    return {code: mlm_data.eval_batches(code, model.config.languages.index(code), sequences, spec, batch_size)
            for code, sequences in tokenized.items()}


def learned_vs_random(model, masked, seed, progress=None):
    """{language: {"learned": loss, "random": loss}}; the model's learned routing is restored afterwards."""
    learned = mlm_loss_per_language(model, masked, progress)
    model.set_random_routing(seed)
    try:
        random = mlm_loss_per_language(model, masked, progress)
    finally:
        model.set_random_routing(None)
    return {code: {"learned": learned[code], "random": random[code]} for code in masked}


# -- outputs ------------------------------------------------------------------------------------------------------

def histogram_rows(load):
    """One row per (language, block) and one per language over all routed blocks ("all")."""
    rows = []
    counts = load.counts.cpu()
    for j, code in enumerate(load.languages):
        if counts[:, j].sum() == 0:
            continue
        for i, block in enumerate(load.blocks):
            rows.append({"language": code, "block": block, "tokens": int(counts[i, j].sum()),
                         "shares": (counts[i, j] / counts[i, j].sum()).tolist()})
        total = counts[:, j].sum(0)
        rows.append({"language": code, "block": "all", "tokens": int(total.sum()), "shares": (total / total.sum()).tolist()})
    return rows


def collapsed_languages(rows, threshold=0.9):
    """Languages whose tokens, over all routed blocks, go to one expert at >= threshold: routing collapse."""
    return [row["language"] for row in rows if row["block"] == "all" and max(row["shares"]) >= threshold]


def write_outputs(out, result, figure_languages):
    import csv

    out.mkdir(parents=True, exist_ok=True)
    experts = result["num_experts"]
    rows = result["histogram"]
    with open(out / "expert_histogram.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["language", "block", "tokens", *[f"expert{e}" for e in range(experts)]])
        for row in rows:
            writer.writerow([row["language"], row["block"], row["tokens"], *[f"{s:.6f}" for s in row["shares"]]])
    header = "| language | tokens | " + " | ".join(f"expert {e}" for e in range(experts)) + " |"
    lines = [f"Share of each language's tokens routed to each expert at inference (no noise, top-1), over "
             f"{result['batches']} batches of up to {result['batch_size']} sentences, all {len(result['routed_blocks'])} "
             f"routed blocks together (per block: expert_histogram.csv).", "", header,
             "|" + "---|" * (experts + 2)]
    lines += [f"| {row['language']} | {row['tokens']} | " + " | ".join(f"{s:.3f}" for s in row["shares"]) + " |"
              for row in rows if row["block"] == "all"]
    (out / "expert_histogram.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    plot_histogram(out / "expert_histogram.png", rows, figure_languages, experts, result["routed_blocks"])

    losses = result["learned_vs_random"]
    with open(out / "learned_vs_random.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["language", "learned_mlm_loss", "random_mlm_loss"])
        for code, pair in losses.items():
            writer.writerow([code, f"{pair['learned']:.6f}", f"{pair['random']:.6f}"])
    table = ["| routing | devtest MLM loss (mean over languages) |" +
             (" MTEB average |" if result.get("mteb") else ""), "|---|---|" + ("---|" if result.get("mteb") else "")]
    for routing in ("learned", "random"):
        cell = f" {result['mteb'][routing]:.2f} |" if result.get("mteb") and result["mteb"][routing] is not None else \
            (" n/a |" if result.get("mteb") else "")
        table.append(f"| {routing} | {result['mean_loss'][routing]:.4f} |{cell}")
    if result.get("mteb"):
        table += ["", f"MTEB: {result['mteb_tasks']} on {result['mteb_languages']}."]
    table += [f"Histogram: {result['histogram_data']}, languages {result['histogram_languages']}."]
    table += [f"Note: {note}." for note in result["notes"]]
    table += ["", "| language | learned | random |", "|---|---|---|"]
    table += [f"| {code} | {pair['learned']:.4f} | {pair['random']:.4f} |" for code, pair in losses.items()]
    (out / "learned_vs_random.md").write_text("\n".join(table) + "\n", encoding="utf-8")
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2), encoding="utf-8")


def plot_histogram(path, rows, languages, experts, blocks):
    """Figure 4: one panel per language, each expert's share of its tokens (bars: all routed blocks; dots: each
    routed block)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [code for code in languages if any(row["language"] == code for row in rows)]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), squeeze=False, sharey=True)
    for axis, code in zip(axes[0], panels):
        overall = next(row for row in rows if row["language"] == code and row["block"] == "all")
        axis.bar(range(experts), overall["shares"], color="#4c72b0")
        for row in rows:
            if row["language"] == code and row["block"] != "all":
                axis.scatter(range(experts), row["shares"], s=8, color="#dd8452", zorder=3)
        axis.axhline(1 / experts, color="grey", linewidth=0.8, linestyle="--")
        axis.set_title(code)
        axis.set_xticks(range(experts))
        axis.set_xlabel("expert")
    axes[0][0].set_ylabel("share of tokens")
    figure.suptitle(f"Expert routing at inference ({len(blocks)} routed blocks; dots: per block)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def figure_languages(codes, requested=None):
    """The histogram's panels: those asked for, else the paper's English, French and Khmer where analysed, else
    the first three languages."""
    if requested:
        missing = [code for code in requested if code not in codes]
        if missing:
            raise ValueError(f"--figure-languages {missing} are not among the analysed languages {codes}.")
        return list(requested)
    paper = [code for code in FIGURE4_LANGUAGES if code in codes]
    return paper if paper else list(codes[:3])


def missing_figure_languages(codes):
    """A note for each of Figure 4's languages the model does not have (Khmer is not among the 30 of Table 8)."""
    return [f"{code} (a Figure 4 panel) is not among the model's languages: not analysed (the paper's MoE baselines "
            "are trained on the 30 languages of Table 8, which do not include Khmer)"
            for code in FIGURE4_LANGUAGES if code not in codes]


def mteb_task_texts(spec, codes, max_sentences=None):
    """code -> the sentences of an mteb task's subset in that language (`spec`: mteb_task, split), loaded by mteb
    itself from the task's pinned dataset revision."""
    import copy

    from mol_toolkit.languages import resolve_language_code

    from .mteb_encoder import subset_languages
    from .tasks import resolve_tasks

    [task] = resolve_tasks([spec["mteb_task"]])
    subsets = {}
    for code in codes:
        matching = [subset for subset in task.hf_subsets if len(subset_languages(task.metadata, subset)) == 1 and
                    resolve_language_code(subset_languages(task.metadata, subset)[0], [code],
                                          macrolanguage="standard") == code]
        if not matching:
            raise ValueError(f"{spec['mteb_task']} has no subset in {code}: its subsets are {task.hf_subsets}.")
        subsets[code] = matching[0]
    task = copy.copy(task).filter_languages(None, hf_subsets=list(subsets.values()))
    task.load_data()
    texts = {code: list(task.dataset[subset][spec["split"]]["text"]) for code, subset in subsets.items()}
    return {code: values[:max_sentences] if max_sentences else values for code, values in texts.items()}


def check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return value


def analyse(model_source, output_dir, *, preset="udhr", data=None, languages=None, figure=None, batches=None,
            batch_size=32, max_sentences=None, max_length=None, seed=0, mteb_tasks=None, overwrite=False,
            device=None, dtype="auto", show_progress=True, log=print):
    """The whole analysis; every input is checked before the model runs. Returns the result written to routing.json."""
    from tqdm.auto import tqdm

    from mol_toolkit.languages import resolve_languages

    from .encoder import resolve_dtype

    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r} is unknown: use one of {sorted(PRESETS)}.")
    batches = check_positive("batches", PRESETS[preset]["batches"] if batches is None else batches)
    check_positive("batch_size", batch_size)
    if max_sentences is not None:
        check_positive("max_sentences", max_sentences)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}.")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {str(out)!r} is a file, not a folder.")
    if (out / RESULT_FILE).exists() and not overwrite:
        raise ValueError(f"{out} already holds a routing analysis ({RESULT_FILE}): pass --overwrite or another "
                         "--output-dir.")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, tokenizer = load_moe(model_source, device, resolve_dtype(dtype, device))
    codes = check_languages(resolve_languages(languages) if languages else list(model.config.languages), model)
    panels = figure_languages(codes, resolve_languages(figure) if figure else None)
    limit = model.config.max_position_embeddings - model.config.pad_token_id - 1
    max_length = min(limit, 512) if max_length is None else max_length
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not 3 <= max_length <= limit:
        raise ValueError(f"max_length must be an integer in 3..{limit} (the model's position table), got {max_length!r}.")
    if mteb_tasks:
        from .tasks import resolve_tasks

        resolve_tasks(mteb_tasks)  # unknown tasks fail now, not after the analysis
    settings = PRESETS[preset]
    mteb_languages = None
    if mteb_tasks is None and "mteb_tasks" in settings:
        mteb_tasks, mteb_languages = settings["mteb_tasks"], settings["mteb_languages"]
        check_languages(resolve_languages(mteb_languages), model)
    histogram_data = settings.get("histogram_data")
    notes = missing_figure_languages(codes) if preset != "udhr" else []
    texts = read_probe_texts(data if data is not None else settings["data"], codes, "devtest data", max_sentences)
    tokenized = {code: tokenizer(texts[code], truncation=True, max_length=max_length)["input_ids"] for code in codes}
    if histogram_data is None:
        histogram_tokens = tokenized
    else:  # the paper's histogram: the figure's languages, on the task's sentences
        histogram_texts = mteb_task_texts(histogram_data, panels, max_sentences)
        histogram_tokens = {code: tokenizer(histogram_texts[code], truncation=True, max_length=max_length)["input_ids"]
                            for code in panels}
    masked = masked_devtest(tokenized, tokenizer, model, batch_size)
    total = batches * len(histogram_tokens) + 2 * sum(len(b) for b in masked.values())
    with tqdm(total=total, desc="Routing analysis", unit="batch", disable=not show_progress) as progress:
        load = expert_histogram(model, histogram_tokens, batches, batch_size, seed, tokenizer.pad_token_id, progress)
        losses = learned_vs_random(model, masked, seed, progress)
    rows = histogram_rows(load)
    for note in notes:
        log(f"note: {note}")
    result = {
        "model": model_source, "preset": preset, "routing": model.config.routing,
        "num_experts": model.config.num_experts, "routed_blocks": list(model.config.group_layers), "languages": codes,
        "batches": batches, "batch_size": batch_size, "seed": seed, "max_length": max_length,
        "data": data if data is not None else settings["data"],
        "histogram_data": histogram_data or "the devtest data (the MLM loss's)",
        "histogram_languages": list(histogram_tokens), "notes": notes, "histogram": rows,
        "collapsed_languages": collapsed_languages(rows), "learned_vs_random": losses,
        "mean_loss": {routing: float(np.mean([pair[routing] for pair in losses.values()]))
                      for routing in ("learned", "random")},
    }
    if mteb_tasks:
        result["mteb"] = mteb_learned_vs_random(model_source, mteb_tasks, out, seed, device, dtype, batch_size,
                                                show_progress, log, languages=mteb_languages)
        result["mteb_tasks"] = mteb_tasks if isinstance(mteb_tasks, str) else [
            t if isinstance(t, str) else t.metadata.name for t in mteb_tasks]
        result["mteb_languages"] = mteb_languages or "every subset the model can be routed on"
    write_outputs(out, result, panels)
    return result


def mteb_learned_vs_random(model_source, tasks, out, seed, device, dtype, batch_size, show_progress, log,
                           languages=None):
    """MTEB averages (the papers' aggregation) with the learned router and with random experts, each in its own
    evaluation folder (mteb-learned/, mteb-random/), through `evaluate_mol.py mteb`'s machinery; `languages`
    restricts the subsets (Table 7: English)."""
    from .run import evaluate_models

    averages = {}
    for routing, routing_seed in (("learned", None), ("random", seed)):
        summary = evaluate_models([model_source], tasks, out / f"mteb-{routing}", languages=languages,
                                  show_progress=show_progress,
                                  log=log, device=str(device), dtype=dtype, batch_size=batch_size,
                                  random_routing_seed=routing_seed)
        (model,) = summary["models"].values()
        averages[routing] = model["average"]
    return averages
