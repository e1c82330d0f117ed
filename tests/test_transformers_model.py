"""MoL as a first-class transformers model: the checks of transformers' common model tests that apply to a
language-routed encoder (save/load, tied weights, resizing, inputs_embeds, batching, return flags, attention
implementations, gradient checkpointing, every head's training), pipelines, Trainer with gradient accumulation,
bf16 autocast, torch.compile / torch.export, LoRA through peft, and clear errors for bad inputs.

A tiny model tester in transformers' style (hidden 32, 3 blocks, vocab 99) runs every check on a dense and on a
grouped config."""

import pytest
import torch
from conftest import LANGUAGES, tiny_config_kwargs
from torch.utils._python_dispatch import TorchDispatchMode

from configuration_mol import MoLConfig
from modeling_mol.mol_packing import MoLPackedBatch
from modeling_mol import (
    MoLForMaskedLM,
    MoLForMultipleChoice,
    MoLForQuestionAnswering,
    MoLForSequenceClassification,
    MoLForTokenClassification,
    MoLModel,
)


PAD = 1
LAYOUTS = {"dense": "dense", "grouped": [0, 2]}  # 3 blocks; the grouped model keeps block 1 shared
HEAD_CLASSES = [MoLModel, MoLForMaskedLM, MoLForSequenceClassification, MoLForTokenClassification,
                MoLForQuestionAnswering, MoLForMultipleChoice]


class MoLModelTester:
    """Configs and inputs of transformers' model testers: batch 5, seq 9 with right padding, one language each."""

    def __init__(self, layout, batch_size=5, seq_len=9, **overrides):
        self.layout, self.batch_size, self.seq_len = layout, batch_size, seq_len
        self.overrides = overrides

    def config(self, **overrides):
        kwargs = tiny_config_kwargs(num_hidden_layers=3, group_layers=LAYOUTS[self.layout], num_labels=2)
        kwargs.update(self.overrides)
        kwargs.update(overrides)
        return MoLConfig(**kwargs)

    def inputs(self, seed=0):
        generator = torch.Generator().manual_seed(seed)
        ids = torch.randint(3, 99, (self.batch_size, self.seq_len), generator=generator)
        lengths = torch.randint(3, self.seq_len + 1, (self.batch_size,), generator=generator)
        lengths[0] = self.seq_len
        mask = (torch.arange(self.seq_len) < lengths[:, None]).long()
        lang_ids = torch.randint(0, len(LANGUAGES), (self.batch_size,), generator=generator)
        return dict(input_ids=ids.masked_fill(mask == 0, PAD), attention_mask=mask, lang_ids=lang_ids)

    def model(self, model_class=MoLForMaskedLM, seed=0, **overrides):
        torch.manual_seed(seed)
        return model_class(self.config(**overrides)).eval()


@pytest.fixture(params=list(LAYOUTS))
def tester(request):
    return MoLModelTester(request.param)


def head_inputs(model_class, inputs):
    """Multiple choice takes (batch, choices, seq_len): the batch as 1 example with 5 choices, one language."""
    if model_class is MoLForMultipleChoice:
        return dict(input_ids=inputs["input_ids"][None], attention_mask=inputs["attention_mask"][None],
                    lang_ids=inputs["lang_ids"][:1])
    return inputs


def first_output(output):
    return output[0] if isinstance(output, tuple) else output.to_tuple()[0]


# ---- save / load, tied weights, resizing -----------------------------------------------------------------------------
@pytest.mark.parametrize("model_class", HEAD_CLASSES)
def test_save_and_load_give_identical_outputs(tester, model_class, tmp_path):
    model, inputs = tester.model(model_class), head_inputs(model_class, tester.inputs())
    model.save_pretrained(tmp_path)
    reloaded = model_class.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        # Equal weights, but not always bitwise-equal outputs: a loaded weight's memory alignment can send a small
        # matmul down another CPU kernel (seen on AMD EPYC: 1e-9 apart for the multiple-choice head).
        torch.testing.assert_close(first_output(model(**inputs)), first_output(reloaded(**inputs)), atol=1e-6, rtol=1e-6)
    for name, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[name]), name
    missing = set(model.state_dict()) ^ set(reloaded.state_dict())
    assert not missing, missing


def test_mlm_decoder_stays_tied_after_loading(tester, tmp_path):
    model = tester.model()
    model.save_pretrained(tmp_path)
    reloaded = MoLForMaskedLM.from_pretrained(tmp_path)
    assert reloaded.lm_head.decoder.weight is reloaded.mol.embeddings.word_embeddings.weight


@pytest.mark.parametrize("new_size", [120, 80])
def test_resize_token_embeddings_resizes_the_decoder_bias_too(tester, new_size):
    model, inputs = tester.model(), tester.inputs()
    old_bias = model.lm_head.bias.detach().clone()
    with torch.no_grad():
        model.lm_head.bias.normal_()
        old_bias = model.lm_head.bias.detach().clone()
    model.resize_token_embeddings(new_size)
    assert model.config.vocab_size == new_size
    assert model.lm_head.bias.shape == (new_size,) and model.lm_head.decoder.weight.shape == (new_size, 32)
    assert model.lm_head.decoder.weight is model.mol.embeddings.word_embeddings.weight
    keep = min(new_size, 99)
    assert torch.equal(model.lm_head.bias[:keep], old_bias[:keep])
    ids = inputs["input_ids"].clamp(max=new_size - 1)
    output = model(**{**inputs, "input_ids": ids}, labels=ids.masked_fill(inputs["attention_mask"] == 0, -100))
    assert output.logits.shape == (5, 9, new_size) and torch.isfinite(output.loss)


# ---- inputs, batching, return flags ---------------------------------------------------------------------------------
def test_inputs_embeds_give_the_same_outputs_as_input_ids(tester):
    model, inputs = tester.model(MoLModel), tester.inputs()
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    with torch.no_grad():
        from_ids = model(**inputs).last_hidden_state
        from_embeds = model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"],
                            lang_ids=inputs["lang_ids"]).last_hidden_state
    torch.testing.assert_close(from_embeds, from_ids, atol=1e-6, rtol=0)


def test_batching_equivalence(tester):
    model, inputs = tester.model(), tester.inputs()
    with torch.no_grad():
        batched = model(**inputs).logits
        for i in range(5):
            length = int(inputs["attention_mask"][i].sum())
            alone = model(input_ids=inputs["input_ids"][i : i + 1, :length], lang_ids=inputs["lang_ids"][i : i + 1]).logits
            torch.testing.assert_close(batched[i, :length], alone[0], atol=1e-5, rtol=0)
            assert not batched[i, length:].any()  # zeros at padding


def test_hidden_states_and_return_flags(tester):
    model, inputs = tester.model(MoLModel), tester.inputs()
    output = model(**inputs, output_hidden_states=True)
    assert len(output.hidden_states) == 4 and all(h.shape == (5, 9, 32) for h in output.hidden_states)
    assert torch.equal(output.hidden_states[-1], output.last_hidden_state)
    model.config.output_hidden_states = True
    assert model(**inputs, output_hidden_states=False).hidden_states is None  # an explicit False wins
    assert len(model(**inputs).hidden_states) == 4
    model.config.return_dict = False
    as_tuple = model(**inputs)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], output.last_hidden_state)
    assert not isinstance(model(**inputs, return_dict=True), tuple)
    for model_class in HEAD_CLASSES[1:]:
        head = tester.model(model_class, return_dict=False)
        assert isinstance(head(**head_inputs(model_class, inputs)), tuple), model_class.__name__


# ---- attention implementations --------------------------------------------------------------------------------------
def registered_sdpa(module, query, key, value, attention_mask, **kwargs):
    """A user's attention function: transformers' own SDPA function, registered under a new name."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    registered_sdpa.calls += 1
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


registered_sdpa.calls = 0


def test_every_attention_implementation_matches_eager(tester):
    from transformers import AttentionInterface

    AttentionInterface.register("mol_test_sdpa", registered_sdpa)
    registered_sdpa.calls = 0
    model, inputs = tester.model(), tester.inputs()
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    with torch.no_grad():
        eager = model(**inputs).logits
        for name in ("sdpa", "mol_test_sdpa"):
            model.set_attn_implementation(name)
            assert model.config._attn_implementation == name
            torch.testing.assert_close(model(**inputs).logits, eager, atol=1e-5, rtol=0)
    assert registered_sdpa.calls == 3  # once per block: the user's function really ran


def test_output_attentions_with_eager_attention(tester):
    model, inputs = tester.model(MoLModel, attn_implementation="eager"), tester.inputs()
    attentions = model(**inputs, output_attentions=True).attentions
    assert len(attentions) == 3 and all(a.shape == (5, 4, 9, 9) for a in attentions)
    mask = inputs["attention_mask"].bool()
    for probs in attentions:
        rows = probs.sum(-1)  # every real query's probabilities sum to 1, padding queries and keys are 0
        torch.testing.assert_close(rows[mask[:, None, :].expand(-1, 4, -1)], torch.ones(int(mask.sum()) * 4))
        assert not rows[~mask[:, None, :].expand(-1, 4, -1)].any()
        assert not probs.masked_select(~mask[:, None, None, :].expand_as(probs)).any()
    # The same probabilities as one sentence alone, in the batch's order.
    length = int(mask[3].sum())
    alone = model(input_ids=inputs["input_ids"][3:4, :length], lang_ids=inputs["lang_ids"][3:4], output_attentions=True)
    torch.testing.assert_close(attentions[0][3, :, :length, :length], alone.attentions[0][0], atol=1e-6, rtol=0)


def test_output_attentions_with_a_kernel_that_never_forms_them_is_a_clear_error(tester):
    model = tester.model(MoLModel)
    with pytest.raises(ValueError, match="output_attentions=True needs attn_implementation='eager'"):
        model(**tester.inputs(), output_attentions=True)


# ---- training ---------------------------------------------------------------------------------------------------------
def test_gradient_checkpointing_recomputes_the_same_gradients(tester):
    inputs = tester.inputs()
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    grads = []
    for checkpointing in (False, True):
        model = tester.model().train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert model.is_gradient_checkpointing
        model(**inputs, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=0, msg=name)


def head_labels(model_class, inputs):
    real = inputs["attention_mask"].bool()
    if model_class is MoLForMaskedLM:
        return dict(labels=inputs["input_ids"].masked_fill(~real, -100))
    if model_class is MoLForTokenClassification:
        return dict(labels=(inputs["input_ids"] % 2).masked_fill(~real, -100))
    if model_class is MoLForSequenceClassification:
        return dict(labels=torch.tensor([0, 1, 1, 0, 1]))
    if model_class is MoLForQuestionAnswering:
        return dict(start_positions=torch.tensor([1, 0, 2, 1, 0]), end_positions=torch.tensor([3, 2, 2, 1, 2]))
    return dict(labels=torch.tensor([2]))


@pytest.mark.parametrize("model_class", HEAD_CLASSES[1:])
def test_every_head_trains(tester, model_class):
    model = tester.model(model_class).train()
    inputs = tester.inputs()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(**head_inputs(model_class, inputs), **head_labels(model_class, inputs)).loss
        optimizer.zero_grad()
        loss.backward()
        head_grads = [p.grad for n, p in model.named_parameters() if not n.startswith("mol.") and p.requires_grad]
        assert head_grads and all(g is not None for g in head_grads), model_class.__name__
        assert sum(g.abs().sum() for g in head_grads) > 0, model_class.__name__
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


# ---- pipelines --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


def test_pipelines(tester, tokenizer, tmp_path):
    from transformers import pipeline

    sentences = ["All human beings are born free and equal.", "Everyone has the right to life."]
    vocab = len(tokenizer)

    def build(model_class, **overrides):
        model = tester.model(model_class, vocab_size=vocab, default_language="eng_Latn", **overrides)
        model.save_pretrained(tmp_path / model_class.__name__, tokenizer=tokenizer)  # limits the tokenizer's length
        return model

    fill = pipeline("fill-mask", model=build(MoLForMaskedLM), tokenizer=tokenizer, device="cpu")
    predictions = fill(f"All human beings are born {tokenizer.mask_token}.", top_k=3)
    assert len(predictions) == 3 and all(0 <= p["token"] < vocab for p in predictions)

    features = pipeline("feature-extraction", model=build(MoLModel), tokenizer=tokenizer, device="cpu")
    assert torch.tensor(features(sentences[0])).shape[-1] == 32

    classify = pipeline("text-classification", model=build(MoLForSequenceClassification), tokenizer=tokenizer)
    assert {r["label"] for r in classify(sentences)} <= {"LABEL_0", "LABEL_1"}

    tag = pipeline("token-classification", model=build(MoLForTokenClassification), tokenizer=tokenizer)
    tagged = tag(sentences[0])
    assert all(t["entity"] in ("LABEL_0", "LABEL_1") and sentences[0][t["start"] : t["end"]] for t in tagged)

    # transformers 5 removed the question-answering pipeline; what it did: the best span of the context, by offsets.
    with pytest.raises(KeyError, match="question-answering has been removed"):
        pipeline("question-answering", model=build(MoLForQuestionAnswering), tokenizer=tokenizer)
    qa = build(MoLForQuestionAnswering)
    encoded = tokenizer("Who is born free?", sentences[0], return_offsets_mapping=True, return_tensors="pt")
    offsets = encoded.pop("offset_mapping")[0]
    with torch.no_grad():
        output = qa(**encoded)
    in_context = torch.tensor([i == 1 for i in encoded.sequence_ids(0)])
    start = int(output.start_logits[0].masked_fill(~in_context, float("-inf")).argmax())
    end_logits = output.end_logits[0].masked_fill(~in_context | (torch.arange(len(in_context)) < start), float("-inf"))
    end = int(end_logits.argmax())
    answer = sentences[0][int(offsets[start, 0]) : int(offsets[end, 1])]
    assert answer and answer in sentences[0]

    # A text longer than the position table is truncated to what the model can take, not an IndexError.
    long_text = " ".join(sentences * 40)
    assert len(tokenizer(long_text)["input_ids"]) > 62
    assert classify(long_text, truncation=True)[0]["label"] in ("LABEL_0", "LABEL_1")


# ---- Trainer ----------------------------------------------------------------------------------------------------------
def train_one_step(tester, tmp_path, batch_size, accumulation, **arguments):
    """One optimizer step over the same 16 sentences; returns Trainer's logged loss and gradient norm."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    data = MoLModelTester(tester.layout, batch_size=16, seq_len=12).inputs(seed=3)
    generator = torch.Generator().manual_seed(4)
    chosen = (torch.rand(data["input_ids"].shape, generator=generator) < 0.4) & data["attention_mask"].bool()
    chosen[:, 1] = True  # every sentence has a masked token, but not the same number
    rows = dict(input_ids=data["input_ids"].tolist(), attention_mask=data["attention_mask"].tolist(),
                lang_ids=data["lang_ids"].tolist(), labels=data["input_ids"].masked_fill(~chosen, -100).tolist())
    args = TrainingArguments(
        output_dir=str(tmp_path / f"trainer-{batch_size}x{accumulation}"), per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=1e-3, logging_steps=1,
        report_to=[], use_cpu=True, save_strategy="no", dataloader_num_workers=0, seed=0, **arguments,
    )
    trainer = Trainer(model=tester.model().train(), args=args, train_dataset=Dataset.from_dict(rows))
    trainer.train()
    logged = next(entry for entry in trainer.state.log_history if "loss" in entry)
    return logged["loss"], logged["grad_norm"]


def test_trainer_gradient_accumulation_gives_the_same_loss_and_gradient_norm(tester, tmp_path):
    loss_16, norm_16 = train_one_step(tester, tmp_path, 16, 1)
    loss_4, norm_4 = train_one_step(tester, tmp_path, 4, 4)
    assert loss_4 == pytest.approx(loss_16, rel=1e-4) and norm_4 == pytest.approx(norm_16, rel=1e-4)


def test_trainer_bf16(tester, tmp_path):
    loss, norm = train_one_step(tester, tmp_path, 8, 2, bf16=True)
    assert loss == loss and norm == norm and loss > 0  # finite and logged


# ---- mixed precision ------------------------------------------------------------------------------------------------
class CastLog(TorchDispatchMode):
    """Records the shapes of the fp32 tensors cast to bf16 (a real torch dispatch mode, no patching)."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.ops.aten._to_copy.default,) and kwargs.get("dtype") == torch.bfloat16:
            self.shapes.append(tuple(args[0].shape))
        return func(*args, **kwargs)


def test_bf16_autocast_forward_and_backward(tester):
    model, inputs = tester.model(), tester.inputs()
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    reference = model(**inputs, labels=labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(**inputs, labels=labels)
    output.loss.backward()
    torch.testing.assert_close(output.logits.float(), reference.logits, atol=0.05, rtol=0.05)
    assert abs(output.loss.item() - reference.loss.item()) < 0.05
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_autocast_casts_only_the_weight_copies_of_groups_in_the_batch():
    tester = MoLModelTester("grouped")
    model, inputs = tester.model(), tester.inputs()
    inputs["lang_ids"] = torch.tensor([0, 1, 0, 1, 0])  # eng and deu: one group of three
    with CastLog() as log, torch.autocast("cpu", dtype=torch.bfloat16):
        model(**inputs).logits.sum().backward()
    weight_shapes = {(32, 32), (32, 64), (64, 32)}  # (groups, in, out) of the projections and the FFN
    group_weights = [shape for shape in log.shapes if len(shape) == 3 and shape[1:] in weight_shapes]
    assert group_weights and all(shape[0] == 1 for shape in group_weights), group_weights
    copies = model.mol.encoder.layer[0].intermediate.weight.grad
    assert copies[0].abs().sum() > 0 and not copies[1:].any()  # gradients only for the group that was present


def test_autocast_casts_each_group_copy_once_per_step_and_again_after_the_optimizer_step():
    from modeling_mol.modeling_mol import MoLGroupedLinear

    tester = MoLModelTester("grouped")
    first = dict(tester.inputs(), lang_ids=torch.tensor([0, 1, 0, 1, 0]))  # eng, deu: the first group
    second = dict(tester.inputs(seed=1), lang_ids=torch.tensor([2, 3, 2, 3, 2]))  # fra, spa: the second
    weight_shapes = {(32, 32), (32, 64), (64, 32)}

    def run(model, batches, fresh_casts=False):
        with CastLog() as log, torch.autocast("cpu", dtype=torch.bfloat16):
            for batch in batches:
                if fresh_casts:  # what casting at every call gives: the reference numbers
                    for module in model.modules():
                        if isinstance(module, MoLGroupedLinear):
                            module._cast_cache = None
                model(**batch).logits.float().sum().backward()
        return [shape for shape in log.shapes if len(shape) == 3 and shape[1:] in weight_shapes]

    model = tester.model().train()
    casts = run(model, [first, first, second])  # three micro-batches of one step
    # 2 group blocks x 6 Linears x 2 groups, each cast once, and the shared block's 6 Linears once: 30 casts of one
    # copy, where casting at every call would make 54.
    assert len(casts) == 2 * 6 * 2 + 6 and all(shape[0] == 1 for shape in casts), casts
    reference = tester.model().train()
    assert len(run(reference, [first, first, second], fresh_casts=True)) == 3 * 18
    for (name, parameter), expected in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(parameter.grad, expected.grad), name
    torch.optim.SGD(model.parameters(), lr=0.1).step()  # new weights: the copies are cast again
    assert len(run(model, [first])) == 2 * 6 + 6


class OpCount(TorchDispatchMode):
    def __init__(self, *ops):
        super().__init__()
        self.ops, self.count = ops, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in self.ops
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("layout", ["dense", "grouped"])
def test_q_k_and_v_run_as_one_gemm_with_the_numbers_of_three(layout):
    tester = MoLModelTester(layout, grouped_gemm_backend="loop")
    torch.manual_seed(0)
    model = MoLModel(tester.config(), add_pooling_layer=False).eval()
    inputs = dict(tester.inputs(), lang_ids=torch.tensor([0, 2, 0, 2, 0]))  # two groups: eng and fra
    with torch.no_grad(), OpCount(torch.ops.aten.addmm.default, torch.ops.aten.mm.default) as gemms:
        model(**inputs)
    # Per block: Q/K/V, the attention output, the FFN in and out = 4 GEMMs (6 with Q, K and V apart), once per
    # group in a group block (the per-group loop backend runs every group, empty ones too).
    group_blocks = len(model.config.group_layers)
    assert gemms.count == 4 * (3 - group_blocks) + 4 * model.config.num_groups * group_blocks
    attention = model.encoder.layer[0].attention
    batch, _ = MoLPackedBatch.from_mask(inputs["attention_mask"], torch.tensor([0, 1, 0, 1, 0]) if group_blocks else
                                        torch.zeros(5, dtype=torch.long), model.config.num_groups)
    rows = torch.randn(batch.num_tokens, 32)
    with torch.no_grad():
        fused = attention.project_qkv(rows, batch.row_groups())
        apart = torch.cat([p(rows, batch.row_groups()) for p in (attention.query, attention.key, attention.value)], -1)
    torch.testing.assert_close(fused, apart, atol=1e-6, rtol=1e-6)
    assert [k for k in model.state_dict() if "layer.0.attention" in k and "weight" in k] == [
        "encoder.layer.0.attention.query.weight", "encoder.layer.0.attention.key.weight",
        "encoder.layer.0.attention.value.weight", "encoder.layer.0.attention.output.weight",
        "encoder.layer.0.attention.LayerNorm.weight"]  # the checkpoint layout is unchanged


# ---- torch.compile and torch.export ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_blocks_compile_with_fullgraph_and_give_the_same_outputs(tester):
    model = tester.model()
    expected = [model(**tester.inputs(seed)).logits for seed in range(3)]
    for layer in model.mol.encoder.layer:
        layer.compile(fullgraph=True, dynamic=True)
    for seed in range(3):  # new lengths and languages: no re-specialisation on a batch's lengths
        torch.testing.assert_close(model(**tester.inputs(seed)).logits, expected[seed], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_whole_model_compiles_without_graph_breaks(tester):
    model, inputs = tester.model(), tester.inputs()
    explanation = torch._dynamo.explain(model)(**inputs)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=0)


def test_inference_model_exports_with_torch_export(tester):
    model, inputs = tester.model(MoLModel), tester.inputs()
    exported = torch.export.export(model, args=(), kwargs=inputs)
    other = tester.inputs(seed=1)
    if other["input_ids"].shape == inputs["input_ids"].shape:
        torch.testing.assert_close(exported.module()(**other).last_hidden_state, model(**other).last_hidden_state,
                                   atol=1e-5, rtol=0)


# ---- LoRA ---------------------------------------------------------------------------------------------------------------
def test_lora_adapts_every_group_copy_and_merges_exactly(tester):
    from peft import LoraConfig, get_peft_model

    model, inputs = tester.model(MoLForSequenceClassification), tester.inputs()
    with torch.no_grad():
        base = model(**inputs).logits
    lora = LoraConfig(r=4, lora_alpha=8, target_parameters=["attention.query.weight", "attention.value.weight"],
                      modules_to_save=["classifier"])
    peft_model = get_peft_model(model, lora)
    adapted = [n for n, _ in peft_model.named_parameters() if "lora_A" in n]
    assert len(adapted) == 6  # query and value of each of the 3 blocks
    groups = model.config.num_groups if tester.layout == "grouped" else 1
    first_block = peft_model.base_model.model.mol.encoder.layer[0].attention.query
    assert first_block.lora_A["default"].weight.shape[0] == 4 * groups  # one rank-4 adapter per group copy
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "classifier" in n for n in trainable)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.3)
        unmerged = peft_model(**inputs).logits
    assert (unmerged - base).abs().max() > 1e-3  # the adapters change the model
    merged = peft_model.merge_and_unload()
    assert type(merged) is MoLForSequenceClassification
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, unmerged, atol=1e-5, rtol=0)


# ---- bad inputs ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x: {**x, "input_ids": x["input_ids"].masked_fill(x["input_ids"] == x["input_ids"][0, 0], 99)},
         r"input_ids contains 99, outside the vocabulary: valid ids are 0..98"),
        (lambda x: {**x, "input_ids": x["input_ids"] - 100}, "input_ids contains -9[0-9], outside the vocabulary"),
        (lambda x: {**x, "input_ids": x["input_ids"][0], "attention_mask": None, "lang_ids": x["lang_ids"][:1]},
         r"input_ids must have shape \(batch, seq_len\), got \(9,\) \(one sentence: use input_ids\[None\]\)"),
        (lambda x: {**x, "input_ids": x["input_ids"].float()}, "input_ids must be an integer tensor"),
        (lambda x: {**x, "input_ids": x["input_ids"].repeat(1, 8), "attention_mask": None},
         r"A sentence has 72 tokens but this model takes at most 62 .*max_length=62"),
        (lambda x: {**x, "position_ids": torch.full_like(x["input_ids"], 64)}, "position_ids contains 64"),
        (lambda x: {**x, "token_type_ids": torch.ones_like(x["input_ids"])}, "token_type_ids contains 1"),
        (lambda x: {**x, "labels": x["input_ids"][:, :4]}, r"labels has shape \(5, 4\); it must match input_ids"),
        (lambda x: {**x, "labels": x["input_ids"] + 99}, "labels contains 1[0-9][0-9]: valid labels are -100"),
        (lambda x: {**x, "input_ids": x["input_ids"][:, :0], "attention_mask": None}, "The inputs have no tokens"),
        (lambda x: {**x, "lang_ids": torch.tensor([0, 1, 2, 3, 6])}, "`lang_ids` contains 6, out of range"),
    ],
)
def test_bad_model_inputs_are_clear_errors(change, message):
    tester = MoLModelTester("grouped")
    model = tester.model()
    with pytest.raises(ValueError, match=message):
        model(**change(tester.inputs()))


def test_an_empty_batch_and_all_padding_rows_give_zeros():
    tester = MoLModelTester("grouped")
    model, inputs = tester.model(MoLModel), tester.inputs()
    empty = model(input_ids=inputs["input_ids"][:0], lang_ids=inputs["lang_ids"][:0])
    assert empty.last_hidden_state.shape == (0, 9, 32)
    padding_only = model(input_ids=torch.full((2, 4), PAD), attention_mask=torch.zeros(2, 4, dtype=torch.long),
                         lang_ids=torch.tensor([0, 3]), output_hidden_states=True)
    assert padding_only.last_hidden_state.shape == (2, 4, 32) and not padding_only.last_hidden_state.any()
    mixed = inputs["attention_mask"].clone()
    mixed[2] = 0
    output = model(**{**inputs, "attention_mask": mixed}).last_hidden_state
    assert not output[2].any() and output[0].any()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(languages="eng_Latn,deu_Latn", language_groups=None, group_layers="dense"),
         r"languages must be a list of language codes .* got 'eng_Latn,deu_Latn'"),
        (dict(num_hidden_layers=0, group_layers="stacked"), "names a layout but num_hidden_layers=0"),
        (dict(hidden_size=0), "hidden_size must be an integer >= 1, got 0"),
        (dict(vocab_size="99"), "vocab_size must be an integer >= 1, got '99'"),
        (dict(sparse_prediction="yes"), "sparse_prediction must be True or False"),
        (dict(language_groups={"a": "eng_Latn"}), "language_groups must map group names to lists of codes"),
    ],
)
def test_bad_config_values_are_errors_naming_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        MoLConfig(**tiny_config_kwargs(**overrides))


def test_question_answering_needs_two_labels():
    with pytest.raises(ValueError, match="num_labels must be 2, got 3"):
        MoLForQuestionAnswering(MoLConfig(**tiny_config_kwargs(num_labels=3)))


# ---- model cards --------------------------------------------------------------------------------------------------------
def test_saved_bundles_carry_a_card_with_hub_metadata(tmp_path):
    from huggingface_hub import ModelCard
    from transformers import XLMRobertaConfig, XLMRobertaForTokenClassification

    torch.manual_seed(0)
    xlmr = XLMRobertaForTokenClassification(XLMRobertaConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64, num_labels=5))
    xlmr.config._name_or_path = "FacebookAI/xlm-roberta-base"  # as after from_pretrained of that Hub id
    converted = MoLForTokenClassification.from_xlm_roberta(
        xlmr, languages=LANGUAGES, language_groups={"all": LANGUAGES}, group_layers="stacked")
    converted.save_pretrained(tmp_path / "converted", license="cc-by-4.0")
    data = ModelCard.load(tmp_path / "converted" / "README.md").data
    assert data.base_model == "FacebookAI/xlm-roberta-base" and data.license == "cc-by-4.0"
    assert data.pipeline_tag == "token-classification" and data.library_name == "transformers"
    assert data.language == sorted(code.split("_")[0] for code in LANGUAGES) and "custom_code" in data.tags
    trained = MoLModelTester("dense").model(MoLModel)
    trained.save_pretrained(tmp_path / "trained")
    data = ModelCard.load(tmp_path / "trained" / "README.md").data
    assert data.base_model is None and data.pipeline_tag == "feature-extraction" and data.license == "apache-2.0"
