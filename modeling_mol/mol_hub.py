"""A MoL bundle on the Hub: the pipeline tags and card of `save_pretrained`, the sentence-transformers files, the
remote-code files that travel with the weights, and the conversion of an XLM-R checkpoint's weights.

A sibling of `modeling_mol.py`, copied with it into every exported checkpoint as remote code."""

import inspect
import json
import os
import re

from transformers.dynamic_module_utils import get_relative_imports


try:  # in an exported checkpoint the configuration is a sibling file
    from .configuration_mol import MoLConfig
except ImportError:  # in this project it is the `configuration_mol` package beside `modeling_mol`
    from configuration_mol.configuration_mol import MoLConfig


_PIPELINE_TAGS = {
    "MoLModel": "feature-extraction",
    "MoLForMaskedLM": "fill-mask",
    "MoLForSequenceClassification": "text-classification",
    "MoLForTokenClassification": "token-classification",
    "MoLForQuestionAnswering": "question-answering",
}

_MODEL_CARD = """---
{{ card_data }}
---

# MoL (Mixture of Languages) encoder: `{{ model_class }}`

{% if routing == "language" %}A multilingual XLM-R-style encoder whose group-specific blocks hold one weight copy per language group; every token
of a sentence runs through the copy of its language's group.{% else %}A Mixture-of-Experts baseline of the Mixture of
Languages paper: its routed blocks hold {{ num_experts }} experts each, and a learned top-1 gate sends every
{{ routing }} to one of them (`output_router_logits=True` returns the gate logits).{% endif %}{% if base_model %} Converted from `{{ base_model }}`:
every group copy starts from that model's weights.{% endif %}

```python
from transformers import AutoModel, AutoTokenizer

model = AutoModel.from_pretrained("REPO", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("REPO")
outputs = model(**tokenizer(["..."], return_tensors="pt"), languages=["{{ first_language }}"])  # one code per text
```

{{ "Routed" if routing != "language" else "Group-specific" }} blocks: {{ layers if layers else "none (dense)" }} (layout `{{ layout }}`).
{% if routing == "language" %}
| group | languages |
|---|---|
{% for name, codes in groups.items() %}| {{ name }} | {{ codes | join(", ") }} |
{% else %}| (dense) | every language shares every block |
{% endfor %}{% endif %}
The model code is Apache-2.0 (the MoL project); the weights are released under `{{ license }}`.
"""


def position_limit(config):
    """The most tokens a sentence may have: XLM-R's positions start at pad_token_id + 1."""
    return config.max_position_embeddings - config.pad_token_id - 1


def sentence_transformers_module():
    """sentence-transformers' input module for this bundle. Only sentence-transformers' loader imports it; the import
    is named here so that transformers copies `mol_sentence_transformers.py` with the rest of the remote code."""
    from .mol_sentence_transformers import MoLSentenceTransformer

    return MoLSentenceTransformer


def write_sentence_transformers_config(folder, config):
    """What `SentenceTransformer(folder, trust_remote_code=True)` reads: MoL's input module (which routes each text
    by its language), then mean pooling over real tokens (the papers' sentence representation)."""
    limit = position_limit(config)
    files = {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "mol_sentence_transformers.MoLSentenceTransformer",
             "kwargs": ["languages"]},
            {"idx": 1, "name": "1", "path": "1_Pooling",
             "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
        ],
        "sentence_bert_config.json": {
            "max_seq_length": min(limit, 512), "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
            "module_output_name": "token_embeddings",
        },
        "1_Pooling/config.json": {"embedding_dimension": config.hidden_size, "pooling_mode": "mean",
                                  "include_prompt": True},
        "config_sentence_transformers.json": {"model_type": "SentenceTransformer", "similarity_fn_name": "cosine",
                                              "prompts": {}, "default_prompt_name": None},
    }
    for name, value in files.items():
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=2)


def remote_code_files():
    """modeling_mol.py, the configuration file and every sibling helper they import as `from .name import X`."""
    roots = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "modeling_mol.py"),
             os.path.abspath(inspect.getfile(MoLConfig))]
    folders = [os.path.dirname(path) for path in roots]
    found, queue = set(), list(roots)
    while queue:
        path = queue.pop()
        if path not in found:
            found.add(path)
            for name in get_relative_imports(path):
                queue += [p for p in (os.path.join(f, f"{name}.py") for f in folders) if os.path.isfile(p)][:1]
    return sorted(found)


_XLMR_LAYER_KEY = re.compile(r"^(.*encoder\.layer\.)(\d+)\.(.+)\.(weight|bias)$")
# XLM-R's module path inside a layer -> MoL's.
_XLMR_LAYER_NAMES = {
    "attention.self.query": "attention.query",
    "attention.self.key": "attention.key",
    "attention.self.value": "attention.value",
    "attention.output.dense": "attention.output",
    "attention.output.LayerNorm": "attention.LayerNorm",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    "output.LayerNorm": "LayerNorm",
}


def convert_xlm_roberta_state_dict(state, model):
    """XLM-R weights under MoL's names and shapes: Linear weights transposed to (in, out), block weights copied
    to every group of the block."""
    config, heads = model.config, dict(model.named_children())
    converted = {}
    for key, tensor in state.items():
        if key.endswith(("position_ids", "token_type_ids")) or key == "lm_head.decoder.bias":
            continue  # buffers, and the decoder bias XLM-R registers a second time as lm_head.bias
        key = key.removeprefix("roberta.")
        layer = _XLMR_LAYER_KEY.match(key)
        if layer:
            start, index, module, kind = layer.groups()
            key = f"{start}{index}.{_XLMR_LAYER_NAMES[module]}.{kind}"
            tensor = tensor.t() if tensor.dim() == 2 else tensor
            groups = config.num_groups if int(index) in config.group_layers else 1
            tensor = tensor.unsqueeze(0).expand(groups, *tensor.shape).contiguous()
        if key.split(".")[0] not in heads:
            key = f"{model.base_model_prefix}.{key}"
        converted[key] = tensor
    return converted
