import re

import pytest
from conftest import LANGUAGE_GROUPS, LANGUAGES, tiny_config_kwargs

from configuration_mol import MoLConfig, resolve_group_layers


@pytest.mark.parametrize(
    "layout, layers, expected",
    [
        ("stacked", 24, list(range(6)) + list(range(18, 24))),  # the paper's 6-12-6
        ("lid", 24, list(range(6)) + list(range(15, 24))),  # the paper's LID-based 6-9-9: blocks 0-5 and 15-23
        ("lid:6-9-9", 24, list(range(6)) + list(range(15, 24))),
        ("lid:9-9-6", 24, list(range(9)) + list(range(18, 24))),
        ("interleaved", 24, list(range(0, 24, 2))),
        ("interleaved", 2, [0]),
        ("stacked", 2, [0, 1]),
        ("dense", 24, []),
        ("all", 3, [0, 1, 2]),
        ([3, 1], 4, [1, 3]),
    ],
)
def test_layouts_resolve_to_block_indices(layout, layers, expected):
    assert resolve_group_layers(layout, layers) == expected


def test_config_keeps_layout_name_and_resolved_layers():
    config = MoLConfig(**tiny_config_kwargs(num_hidden_layers=24, group_layers="lid:6-9-9"))
    assert config.group_layout == "lid:6-9-9"
    assert config.group_layers == list(range(6)) + list(range(15, 24))
    assert config.num_groups == 3
    reloaded = MoLConfig.from_dict(config.to_dict())
    assert reloaded.group_layers == config.group_layers and reloaded.group_layout == "lid:6-9-9"


def test_group_order_is_sorted_names_and_survives_json(tmp_path):
    groups = {"zeta": ["eng_Latn"], "alpha": ["deu_Latn"], "mid": ["fra_Latn", "spa_Latn", "rus_Cyrl", "arb_Arab"]}
    config = MoLConfig(**tiny_config_kwargs(language_groups=groups))
    assert config.group_names == ["alpha", "mid", "zeta"]
    assert config.language_to_group() == [2, 0, 1, 1, 1, 1]
    config.save_pretrained(tmp_path)
    assert MoLConfig.from_pretrained(tmp_path).language_to_group() == config.language_to_group()


def test_xlmr_field_names_and_defaults():
    config = MoLConfig()
    for field, value in dict(
        vocab_size=250002, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        hidden_act="gelu", max_position_embeddings=514, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
        eos_token_id=2, tie_word_embeddings=True, type_vocab_size=1,
    ).items():
        assert getattr(config, field) == value, field
    assert config.model_type == "mol"
    assert set(config.auto_map) == {
        "AutoConfig", "AutoModel", "AutoModelForMaskedLM", "AutoModelForSequenceClassification",
        "AutoModelForTokenClassification", "AutoModelForQuestionAnswering", "AutoModelForMultipleChoice",
    }


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(language_groups={"a": ["eng_Latn", "deu_Latn"], "b": ["deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "arb_Arab"]}),
         "'deu_Latn' is in two language groups"),
        (dict(language_groups={"a": ["eng_Latn", "deu_Latn"], "b": ["fra_Latn"]}), "belong to no group"),
        (dict(language_groups={**LANGUAGE_GROUPS, "x": ["xxx_Latn"]}), "'xxx_Latn', which is not in languages"),
        (dict(group_layers=[0, 2]), "contains 2, which is not a block index: valid indices are 0..1"),
        (dict(group_layers=[-1]), "contains -1"),
        (dict(group_layers="sandwich"), "Unknown group layout 'sandwich'"),
        (dict(group_layers="lid:1-1-1"), "describes 1+1+1=3 blocks but num_hidden_layers=2"),
        (dict(group_layers="lid"), "describes 6+9+9=24 blocks"),
        (dict(default_language="xxx_Latn"), "default_language 'xxx_Latn' is not in languages"),
        (dict(grouped_gemm_backend="cublas"), "grouped_gemm_backend 'cublas' is unknown"),
        (dict(language_groups=None), "needs language_groups"),
        (dict(languages=LANGUAGES + ["eng_Latn"]), "lists ['eng_Latn'] more than once"),
        (dict(hidden_size=30), "not a multiple of num_attention_heads"),
        (dict(classifier_pooling="max"), "classifier_pooling 'max' is unknown"),
    ],
)
def test_invalid_configs_name_the_bad_value(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        MoLConfig(**tiny_config_kwargs(**overrides))
