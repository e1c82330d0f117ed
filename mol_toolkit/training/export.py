"""Export: the trained model as a flat remote-code bundle (weights gathered from the shards, the tokenizer, the
sentence-transformers files, the model card), optionally pushed as a Hub model repo."""

import copy
import json
import shutil
from pathlib import Path

from model_cards import template_path


MODEL_CARD = template_path("model_card.md")


def full_state_dict(model, sharded):
    """Every parameter whole, on the CPU (gathered from the shards when `sharded`)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if sharded:
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def plain_model(state, model_config):
    """The trained MoLForMaskedLM, unsharded on the CPU, as users get it."""
    from modeling_mol import MoLForMaskedLM

    plain = MoLForMaskedLM(copy.deepcopy(model_config))
    plain.load_state_dict(state)
    plain.config.sparse_prediction = False  # users get transformers-shaped logits
    return plain.eval()


def export_bundle(plain, tokenizer, target, card_text, push_to_hub=None):
    """Write the bundle of `plain` into `target` (replacing an older export) and push it when asked; main process
    only."""
    target = Path(target)
    shutil.rmtree(target, ignore_errors=True)
    plain.save_pretrained(target, tokenizer=tokenizer)
    (target / "README.md").write_text(card_text, encoding="utf-8")
    if push_to_hub:
        push_folder(target, push_to_hub)
    return target


def push_folder(folder, repo_id):
    """Upload a bundle as a Hub model repo (upload_folder keeps our card; push_to_hub would write its own)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                             commit_message="Upload MoL checkpoint from train_mlm.py")


def check_hub_access(repo_id):
    """Before the first step: a token that can write `repo_id` (else an error naming the repo and the fix)."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        user = api.whoami()
    except Exception as error:  # no token, a refused token, no connection: all mean the push would fail at the end
        raise ValueError(f"push_to_hub={repo_id!r} needs a Hub token with write access: log in (hf auth login) or "
                         f"set HF_TOKEN ({type(error).__name__}: {error}).") from None
    namespace = repo_id.split("/")[0]
    allowed = {user.get("name")} | {org.get("name") for org in user.get("orgs", [])}
    if namespace not in allowed:
        raise ValueError(f"push_to_hub={repo_id!r}: the token's user {user.get('name')!r} cannot write to the "
                         f"namespace {namespace!r} (its namespaces: {sorted(n for n in allowed if n)}).")


def render_model_card(config, mol_config, devtest, train_sizes, language_id=None, batch=None):
    """The bundle's README.md: huggingface_hub's ModelCard from model_cards/model_card.md, with the metadata the Hub
    reads (license, languages, library, pipeline, tags, datasets) and the UDHR attribution when trained on it."""
    from huggingface_hub import ModelCard, ModelCardData

    sources = [config.train_data, config.devtest_data, config.supplementary_data,
               *(config.train_data_overrides or {}).values()]
    hub_datasets = sorted({source["dataset"] for source in sources if isinstance(source, dict) and source.get("dataset")})
    udhr = any("udhr" in json.dumps(source) for source in sources if source is not None)
    card_data = ModelCardData(
        license=config.license,
        language=sorted({code.split("_")[0] for code in mol_config.languages}),  # ISO 639-3, as FLORES codes begin
        library_name="transformers",
        pipeline_tag="fill-mask",
        tags=["mol", "mixture-of-languages", "multilingual", "custom_code", "masked-language-modeling",
              *(["moe", "mixture-of-experts"] if mol_config.is_moe else [])],
        datasets=hub_datasets or None,
    )
    values = {
        "run_name": config.run_name or "mol-mlm", "groups": mol_config.language_groups,
        "num_languages": len(mol_config.languages), "num_groups": mol_config.num_groups,
        "group_layout": mol_config.group_layout, "group_layers": mol_config.group_layers or "none",
        "hidden_size": mol_config.hidden_size, "num_hidden_layers": mol_config.num_hidden_layers,
        "intermediate_size": mol_config.intermediate_size, "vocab_size": mol_config.vocab_size,
        "losses": [{"code": code, "sentences": size, "loss": f"{devtest[code]:.4f}",
                    "floor": "none" if config.min_sentences is None else
                    f"{config.min_sentences}{' (below)' if size < config.min_sentences else ''}",
                    "cap": "none" if config.max_sentences is None else
                    f"{config.max_sentences}{' (capped)' if size >= config.max_sentences else ''}"}
                   for code, size in zip(mol_config.languages, train_sizes)],
        "global_batch": "" if batch is None else (
            f"{batch['sentences_per_device'] * batch['world_size'] * batch['accumulation']} "
            f"({batch['sentences_per_device']} per device x {batch['world_size']} process(es) x "
            f"{batch['accumulation']} accumulation step(s))"),
        "train_data": json.dumps(config.train_data), "devtest_data": json.dumps(config.devtest_data),
        "max_steps": config.max_steps, "learning_rate": config.peak_learning_rate,
        "warmup_steps": config.warmup_steps,
        "sentences_per_device": batch["sentences_per_device"] if batch else config.sentences_per_device,
        "deduplicate": "exact repeats dropped within each language (the project's choice; neither paper says it "
                       "deduplicates)" if config.deduplicate else "no",
        "max_length": config.max_length,
        "sampling": f"{config.sampling} (T={config.sampling_temperature})" if config.sampling == "temperature"
        else config.sampling, "mlm_probability": config.mlm_probability, "mixed_precision": config.mixed_precision,
        "first_language": mol_config.languages[0], "repo_id": config.push_to_hub or "path/to/this/folder",
        "udhr_notice": udhr, "license": config.license, "routing": mol_config.routing,
        "num_experts": mol_config.num_experts, "router_noise_std": mol_config.router_noise_std,
        "router_aux_loss_coef": mol_config.router_aux_loss_coef,
        "language_id": language_id, "language_identifier_threshold": mol_config.language_identifier_threshold,
    }
    return str(ModelCard.from_template(card_data, template_path=str(MODEL_CARD), **values))
