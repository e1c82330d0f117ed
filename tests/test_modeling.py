import pytest
import torch
import torch.nn.functional as F
from conftest import LANGUAGE_GROUPS, LANGUAGES, tiny_config_kwargs
from transformers import (
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
)

from configuration_mol import MoLConfig
from modeling_mol import MoLForMaskedLM, MoLForSequenceClassification, MoLModel


PAD = 1


def xlmr_config(**overrides):
    kwargs = dict(
        vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3,
    )
    kwargs.update(overrides)
    return XLMRobertaConfig(**kwargs)


def random_batch(batch_size=5, seq_len=12, seed=0, left_padding=False):
    """Token ids in 3..98 with sentences of different lengths, padded with PAD; at least one full sentence."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (batch_size, seq_len), generator=generator)
    lengths = torch.randint(2, seq_len + 1, (batch_size,), generator=generator)
    lengths[0] = seq_len
    positions = torch.arange(seq_len)
    real = positions >= (seq_len - lengths[:, None]) if left_padding else positions < lengths[:, None]
    return ids.masked_fill(~real, PAD), real.long()


def batch_languages(batch_size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [LANGUAGES[i] for i in torch.randint(0, len(LANGUAGES), (batch_size,), generator=generator)]


def tiny_mol(model_class=MoLForMaskedLM, seed=0, **overrides):
    torch.manual_seed(seed)
    return model_class(MoLConfig(**tiny_config_kwargs(**overrides))).eval()


def dense_from_group(model, group):
    """The dense model a sentence of `group` sees: group `group`'s copy of every group-specific block."""
    config = MoLConfig(**{**model.config.to_dict(), "group_layers": "dense", "group_layout": None})
    dense = type(model)(config).eval()
    state = {}
    for key, tensor in model.state_dict().items():
        target = dense.state_dict()[key]
        state[key] = tensor[group : group + 1] if tensor.shape != target.shape else tensor
    dense.load_state_dict(state)
    return dense


# ---- parity with transformers' XLM-R ------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["dense", "stacked", "interleaved", "lid:1-2-1", "all"])
def test_masked_lm_matches_xlm_roberta(layout):
    torch.manual_seed(0)
    xlmr = XLMRobertaForMaskedLM(xlmr_config()).eval()
    mol = MoLForMaskedLM.from_xlm_roberta(xlmr, languages=LANGUAGES, language_groups=LANGUAGE_GROUPS, group_layers=layout).eval()
    ids, mask = random_batch(6, 12)
    expected = xlmr(input_ids=ids, attention_mask=mask).logits
    for languages in (batch_languages(6, seed=1), batch_languages(6, seed=2), "arb_Arab"):
        got = mol(input_ids=ids, attention_mask=mask, languages=languages).logits
        torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=0)


@pytest.mark.parametrize("xlmr_class, mol_class", [(XLMRobertaModel, MoLModel), (XLMRobertaForSequenceClassification, MoLForSequenceClassification)])
def test_base_model_and_classifier_match_xlm_roberta(xlmr_class, mol_class):
    torch.manual_seed(0)
    xlmr = xlmr_class(xlmr_config()).eval()
    mol = mol_class.from_xlm_roberta(xlmr, languages=LANGUAGES, language_groups=LANGUAGE_GROUPS, group_layers="stacked").eval()
    ids, mask = random_batch(4, 10, left_padding=False)
    languages = batch_languages(4)
    expected, got = xlmr(input_ids=ids, attention_mask=mask), mol(input_ids=ids, attention_mask=mask, languages=languages)
    if mol_class is MoLModel:
        torch.testing.assert_close(got.last_hidden_state[mask.bool()], expected.last_hidden_state[mask.bool()], atol=1e-5, rtol=0)
        torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("head", ["token", "qa", "choice"])
def test_token_qa_and_multiple_choice_heads_match_xlm_roberta(head):
    from transformers import XLMRobertaForMultipleChoice, XLMRobertaForQuestionAnswering, XLMRobertaForTokenClassification

    from modeling_mol import MoLForMultipleChoice, MoLForQuestionAnswering, MoLForTokenClassification

    xlmr_class, mol_class, fields = {
        "token": (XLMRobertaForTokenClassification, MoLForTokenClassification, ["logits"]),
        "qa": (XLMRobertaForQuestionAnswering, MoLForQuestionAnswering, ["start_logits", "end_logits"]),
        "choice": (XLMRobertaForMultipleChoice, MoLForMultipleChoice, ["logits"]),
    }[head]
    torch.manual_seed(0)
    xlmr = xlmr_class(xlmr_config(num_labels=2)).eval()
    mol = mol_class.from_xlm_roberta(xlmr, languages=LANGUAGES, language_groups=LANGUAGE_GROUPS, group_layers="stacked").eval()
    ids, mask = random_batch(4, 10)
    if head == "choice":  # 2 examples of 2 choices, one language per example
        ids, mask, languages = ids.view(2, 2, 10), mask.view(2, 2, 10), batch_languages(2)
    else:
        languages = batch_languages(4)
    expected, got = xlmr(input_ids=ids, attention_mask=mask), mol(input_ids=ids, attention_mask=mask, languages=languages)
    real = mask.bool() if head != "choice" else slice(None)
    for field in fields:
        torch.testing.assert_close(getattr(got, field)[real], getattr(expected, field)[real], atol=1e-5, rtol=0)


# ---- group blocks ---------------------------------------------------------------------------------------------------
def test_group_block_with_identical_copies_equals_shared_block():
    shared = tiny_mol(group_layers="dense")
    grouped = tiny_mol(group_layers="all", seed=1)
    state = {key: tensor.expand_as(grouped.state_dict()[key]).clone() for key, tensor in shared.state_dict().items()}
    grouped.load_state_dict(state)
    ids, mask = random_batch()
    expected = shared(input_ids=ids, attention_mask=mask).logits
    got = grouped(input_ids=ids, attention_mask=mask, languages=batch_languages(len(ids))).logits
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_group_linears_and_norms_hold_one_copy_per_group():
    model = tiny_mol(group_layers=[1])
    shared_block, group_block = model.mol.encoder.layer
    assert group_block.attention.query.weight.shape == (3, 32, 32)
    assert group_block.intermediate.weight.shape == (3, 32, 64) and group_block.intermediate.bias.shape == (3, 64)
    assert group_block.LayerNorm.weight.shape == (3, 32)
    assert shared_block.attention.query.weight.shape == (1, 32, 32)
    assert type(shared_block) is type(group_block)


@pytest.mark.parametrize("backend", ["loop", "grouped_mm"])
def test_sentence_output_is_its_group_dense_model_whatever_the_batch(backend):
    model = tiny_mol(grouped_gemm_backend=backend)
    ids, mask = random_batch(6, 12, seed=3)
    languages = ["rus_Cyrl", "eng_Latn", "spa_Latn", "arb_Arab", "deu_Latn", "fra_Latn"]
    group_of = dict(zip(LANGUAGES, model.config.language_to_group()))
    dense = {g: dense_from_group(model, g) for g in range(model.config.num_groups)}
    alone = [dense[group_of[lang]](input_ids=ids[i : i + 1, : int(mask[i].sum())]).logits[0] for i, lang in enumerate(languages)]

    unsorted = model(input_ids=ids, attention_mask=mask, languages=languages).logits
    order = sorted(range(6), key=lambda i: group_of[languages[i]])
    sorted_batch = model(input_ids=ids[order], attention_mask=mask[order], languages=[languages[i] for i in order]).logits
    for i in range(6):
        n = int(mask[i].sum())
        torch.testing.assert_close(unsorted[i, :n], alone[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(sorted_batch[order.index(i), :n], alone[i], atol=1e-5, rtol=0)

    # The same sentence among other sentences in other languages gives the same output.
    other_ids, other_mask = random_batch(3, 12, seed=4)
    mixed_ids = torch.cat([other_ids, ids[:1]])
    mixed_mask = torch.cat([other_mask, mask[:1]])
    mixed = model(input_ids=mixed_ids, attention_mask=mixed_mask, languages=["fra_Latn", "eng_Latn", "arb_Arab", "rus_Cyrl"]).logits
    torch.testing.assert_close(mixed[3], unsorted[0], atol=1e-5, rtol=0)


def test_different_groups_give_different_outputs():
    model = tiny_mol()
    ids, mask = random_batch(1, 8)
    eng = model(input_ids=ids, attention_mask=mask, languages="eng_Latn").logits
    deu = model(input_ids=ids, attention_mask=mask, languages="deu_Latn").logits
    rus = model(input_ids=ids, attention_mask=mask, languages="rus_Cyrl").logits
    torch.testing.assert_close(eng, deu)  # same group
    assert (eng - rus).abs().max() > 1e-3  # another group's weights


@pytest.mark.parametrize("backend", ["loop", "grouped_mm"])
def test_gradients_reach_only_groups_in_the_batch(backend):
    model = tiny_mol(grouped_gemm_backend=backend).train()
    ids, mask = random_batch(4, 10)
    labels = ids.masked_fill(~mask.bool(), -100)
    model(input_ids=ids, attention_mask=mask, languages=["eng_Latn", "rus_Cyrl", "deu_Latn", "arb_Arab"], labels=labels).loss.backward()
    present = {model.config.group_names.index("germanic"), model.config.group_names.index("other")}
    absent = model.config.group_names.index("romance")
    grouped = [(name, p) for name, p in model.named_parameters() if p.dim() >= 2 and p.shape[0] == 3 and "encoder" in name]
    assert len(grouped) == 2 * 16  # per block: weight and bias of q, k, v, attention out, FFN in, FFN out, 2 LayerNorms
    for name, param in grouped:
        assert torch.count_nonzero(param.grad[absent]) == 0, name
        for g in present:
            assert param.grad[g].abs().sum() > 0, name


# ---- padding and the sparse MLM head ------------------------------------------------------------------------------
@pytest.mark.parametrize("left_padding", [False, True])
def test_padded_and_unpadded_inputs_agree_on_real_tokens(left_padding):
    model = tiny_mol(model_class=MoLModel)
    ids, mask = random_batch(5, 12, seed=5, left_padding=left_padding)
    languages = batch_languages(5, seed=5)
    padded = model(input_ids=ids, attention_mask=mask, languages=languages).last_hidden_state
    extra_ids = F.pad(ids, (0, 7), value=PAD)
    extra = model(input_ids=extra_ids, attention_mask=F.pad(mask, (0, 7)), languages=languages).last_hidden_state
    for i in range(5):
        real = mask[i].bool()
        single = model(input_ids=ids[i : i + 1, real], languages=languages[i]).last_hidden_state[0]
        torch.testing.assert_close(padded[i, real], single, atol=1e-5, rtol=0)
        torch.testing.assert_close(extra[i, :12][real], single, atol=1e-5, rtol=0)
        assert torch.count_nonzero(padded[i, ~real]) == 0


def test_sparse_mlm_loss_equals_dense_loss():
    model = tiny_mol()
    ids, mask = random_batch(6, 12, seed=6)
    generator = torch.Generator().manual_seed(0)
    chosen = (torch.rand(ids.shape, generator=generator) < 0.3) & mask.bool()
    labels = ids.masked_fill(~chosen, -100)
    languages = batch_languages(6, seed=6)
    full = model(input_ids=ids, attention_mask=mask, languages=languages, labels=labels)
    full_logits = model(input_ids=ids, attention_mask=mask, languages=languages).logits
    assert full.logits.shape == full_logits.shape == (6, 12, 99)  # the transformers shape, with or without labels
    torch.testing.assert_close(full.logits, full_logits, atol=0, rtol=0)
    model.config.sparse_prediction = True
    sparse = model(input_ids=ids, attention_mask=mask, languages=languages, labels=labels)
    assert sparse.logits.shape == (int(chosen.sum()), 99)
    torch.testing.assert_close(sparse.logits, full_logits[chosen], atol=1e-5, rtol=0)
    dense_loss = F.cross_entropy(full_logits.view(-1, 99), labels.view(-1), ignore_index=-100)
    torch.testing.assert_close(sparse.loss, dense_loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(full.loss, dense_loss, atol=1e-6, rtol=0)


def test_mlm_decoder_is_tied_and_its_bias_registered_once(tmp_path):
    model = tiny_mol()
    names = [name for name, _ in model.named_parameters()]
    assert "lm_head.bias" in names and not any("decoder.bias" in name for name in names)
    assert model.lm_head.decoder.weight is model.mol.embeddings.word_embeddings.weight
    model.save_pretrained(tmp_path)
    reloaded = MoLForMaskedLM.from_pretrained(tmp_path)
    assert reloaded.lm_head.decoder.weight is reloaded.mol.embeddings.word_embeddings.weight
    torch.testing.assert_close(reloaded.lm_head.decoder.weight, model.lm_head.decoder.weight, atol=0, rtol=0)


def test_init_weights_covers_every_parameter():
    model = tiny_mol(model_class=MoLForSequenceClassification)
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(float("nan"))
            param._is_hf_initialized = False
    model.apply(model._init_weights)
    for name, param in model.named_parameters():
        assert not param.isnan().any(), f"{name} was not initialised"
    query = model.mol.encoder.layer[0].attention.query.weight
    assert abs(query.std().item() - model.config.initializer_range) < 0.005
    assert not torch.equal(query[0], query[1])  # each group copy drawn on its own
    assert torch.equal(model.mol.encoder.layer[0].LayerNorm.weight, torch.ones(3, 32))


def test_sequence_classification_loss_and_mean_pooling():
    model = tiny_mol(model_class=MoLForSequenceClassification, num_labels=4, classifier_pooling="mean")
    ids, mask = random_batch(3, 9)
    out = model(input_ids=ids, attention_mask=mask, languages="eng_Latn", labels=torch.tensor([0, 3, 1]))
    assert out.logits.shape == (3, 4)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, torch.tensor([0, 3, 1])))


def test_gradient_checkpointing_gives_the_same_gradients():
    ids, mask = random_batch(3, 9)
    labels = ids.masked_fill(~mask.bool(), -100)
    grads = []
    for checkpointing in (False, True):
        model = tiny_mol().train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(input_ids=ids, attention_mask=mask, languages="rus_Cyrl", labels=labels).loss.backward()
        grads.append(model.mol.encoder.layer[0].attention.query.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


# ---- attention backends ----------------------------------------------------------------------------------------------
def test_attention_backends_agree_with_the_eager_reference():
    from modeling_mol.mol_packing import MoLPackedBatch
    from modeling_mol.mol_attention import eager_attention, sdpa_nested, sdpa_padded, sdpa_per_sentence

    _, mask = random_batch(5, 11, seed=7)
    batch, _ = MoLPackedBatch.from_mask(mask, torch.tensor([2, 0, 1, 0, 2]), 3)
    q, k, v = torch.randn(3, batch.num_tokens, 4, 8).unbind(0)
    expected = eager_attention(q, k, v, batch)
    torch.testing.assert_close(sdpa_per_sentence(q, k, v, batch), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(sdpa_nested(q, k, v, batch), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(sdpa_padded(q, k, v, batch), expected, atol=1e-5, rtol=0)


def test_eager_attn_implementation_gives_the_same_model_outputs():
    ids, mask = random_batch(4, 10)
    default = tiny_mol()(input_ids=ids, attention_mask=mask, languages="spa_Latn").logits
    torch.manual_seed(0)
    eager = MoLForMaskedLM(MoLConfig(**tiny_config_kwargs(), attn_implementation="eager")).eval()
    assert eager.config._attn_implementation == "eager"
    torch.testing.assert_close(eager(input_ids=ids, attention_mask=mask, languages="spa_Latn").logits, default, atol=1e-5, rtol=0)


# ---- bad inputs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(languages=["eng_Latn", "xxx_Latn"]), "Unknown language 'xxx_Latn': this model knows"),
        (dict(languages=["eng_Latn"]), "`languages` has 1 codes but the batch has 2 sentences"),
        (dict(lang_ids=torch.tensor([0, 6])), r"`lang_ids` contains 6, out of range: valid ids are 0..5"),
        (dict(lang_ids=torch.tensor([-1, 0])), r"contains -1, out of range"),
        (dict(lang_ids=torch.tensor([0, 1, 2])), r"`lang_ids` has shape \(3,\) but the batch has 2 sentences"),
        (dict(lang_ids=torch.tensor([0.0, 1.0])), "must hold integer indices"),
        (dict(languages="eng_Latn", lang_ids=torch.tensor([0, 1])), "not both"),
        (dict(), "routes every sentence by its language, and none was given"),
    ],
)
def test_bad_routing_inputs_raise_clear_errors(kwargs, message):
    model = tiny_mol()
    with pytest.raises(ValueError, match=message):
        model(input_ids=torch.tensor([[0, 5, 6, 2], [0, 7, 8, 2]]), **kwargs)


def test_default_language_serves_calls_without_a_language():
    model = tiny_mol()
    ids = torch.tensor([[0, 5, 6, 2]])
    with pytest.raises(ValueError, match="Unknown language 'xx'"):
        model.set_default_language("xx")
    model.set_default_language("rus_Cyrl")
    torch.testing.assert_close(model(input_ids=ids).logits, model(input_ids=ids, lang_ids=torch.tensor([4])).logits)


def test_dense_model_needs_no_language():
    model = tiny_mol(group_layers="dense")
    assert model(input_ids=torch.tensor([[0, 5, 6, 2]])).logits.shape == (1, 4, 99)
