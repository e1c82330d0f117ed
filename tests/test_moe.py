"""The paper's Mixture-of-Experts baselines (Section 5, Appendix A) in the MoL classes: routed blocks against a
per-token reference, the noise, the GShard loss, the gradients, the conventions of transformers' MoE models, the
warm start from XLM-R, the presets, and the bad configs."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import XLMRobertaForMaskedLM

from configuration_mol import MoLConfig
from conftest import PROJECT, tiny_config_kwargs
from modeling_mol import MoLForMaskedLM, MoLModel
from modeling_mol.mol_routing import load_balancing_loss
from test_modeling import random_batch, xlmr_config

ROUTINGS = ["token", "sentence"]


def moe_config(routing, **overrides):
    kwargs = tiny_config_kwargs(language_groups=None, routing=routing, num_experts=3, group_layers="all")
    kwargs.update(overrides)
    return MoLConfig(**kwargs)


def diverse_moe(routing, seed=0, **overrides):
    """A tiny MoE whose experts differ everywhere (LayerNorms too) and whose gates are sharp enough to use
    several experts on a small batch."""
    torch.manual_seed(seed)
    model = MoLForMaskedLM(moe_config(routing, **overrides)).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "LayerNorm" in name and "encoder" in name:
                parameter.add_(torch.randn_like(parameter) * 0.3)
            if name.endswith("router.gate.weight"):
                parameter.normal_(0, 1.0)
    return model


# -- a routed block equals a per-token reference ------------------------------------------------------------------

def layer_norm(x, weight, bias, eps):
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def reference_block(layer, x, mask, routing, eps):
    """A loop over sentences and tokens: each token's expert chosen by the gate (its own input, or its sentence's
    mean), then that expert's dense block applied token by token; attention spans the whole sentence, each key and
    value computed by its own token's expert."""
    attention, heads = layer.attention, layer.attention.num_heads
    gate = layer.router.gate.weight
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        real = mask[b].nonzero().squeeze(1)
        tokens = x[b, real]
        if routing == "token":
            experts = [int(torch.argmax(gate @ token)) for token in tokens]
        else:
            experts = [int(torch.argmax(gate @ tokens.mean(0)))] * len(tokens)

        def linear(module, t, rows):
            return torch.stack([rows[i] @ module.weight[experts[i]] + module.bias[experts[i]] for i in range(len(rows))])

        q, k, v = (linear(module, None, tokens) for module in (attention.query, attention.key, attention.value))
        q, k, v = (t.view(len(tokens), heads, -1).transpose(0, 1) for t in (q, k, v))
        scores = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
        context = (scores.softmax(-1) @ v).transpose(0, 1).reshape(len(tokens), -1)
        for i, e in enumerate(experts):
            h = layer_norm(context[i] @ attention.output.weight[e] + attention.output.bias[e] + tokens[i],
                           attention.LayerNorm.weight[e], attention.LayerNorm.bias[e], eps)
            f = F.gelu(h @ layer.intermediate.weight[e] + layer.intermediate.bias[e])
            y = f @ layer.output.weight[e] + layer.output.bias[e] + h
            out[b, real[i]] = layer_norm(y, layer.LayerNorm.weight[e], layer.LayerNorm.bias[e], eps)
    return out, experts


@pytest.mark.parametrize("routing", ROUTINGS)
def test_a_routed_block_equals_a_per_token_reference_in_a_mixed_padded_batch(routing):
    model = diverse_moe(routing)
    ids, mask = random_batch(batch_size=5, seq_len=9, seed=1)
    assert (mask == 0).any()  # padding in the batch
    with torch.no_grad():
        output = model.mol(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_router_logits=True)
    chosen = set()
    for block, layer in enumerate(model.mol.encoder.layer):
        expected, _ = reference_block(layer, output.hidden_states[block], mask, routing, model.config.layer_norm_eps)
        torch.testing.assert_close(output.hidden_states[block + 1], expected, atol=2e-5, rtol=1e-5)
        chosen |= set(output.router_logits[block].view(*mask.shape, -1)[mask.bool()].argmax(-1).tolist())
    assert len(chosen) >= 2, "the batch should exercise several experts"


def test_sentence_routing_sends_every_token_of_a_sentence_to_one_expert_also_with_noise():
    model = diverse_moe("sentence", num_experts=4)
    ids, mask = random_batch(batch_size=6, seq_len=10, seed=2)
    for training in (False, True):
        model.train(training)
        with torch.no_grad():
            logits = model.mol(input_ids=ids, attention_mask=mask, output_router_logits=True).router_logits
        for block_logits in logits:
            experts = block_logits.view(*mask.shape, -1).argmax(-1)
            for b in range(ids.shape[0]):
                assert len(set(experts[b][mask[b].bool()].tolist())) == 1, (training, b)


@pytest.mark.parametrize("routing", ROUTINGS)
def test_the_noise_is_applied_in_training_only(routing):
    model = diverse_moe(routing)
    ids, mask = random_batch(seed=3)
    real = mask.bool().reshape(-1)

    def logits_and_noiseless():
        with torch.no_grad():
            output = model.mol(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_router_logits=True)
            gate = model.mol.encoder.layer[0].router.gate
            x = output.hidden_states[0]
            if routing == "sentence":
                x = ((x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))[:, None].expand_as(x)
        return output.router_logits[0][real], gate(x).reshape(-1, 3)[real]

    logits, noiseless = logits_and_noiseless()
    torch.testing.assert_close(logits, noiseless, atol=1e-6, rtol=1e-6)
    assert torch.equal(logits, logits_and_noiseless()[0])  # inference is deterministic

    model.train()  # no dropout in the tiny config: only the noise differs
    first, noiseless = logits_and_noiseless()
    second, _ = logits_and_noiseless()
    assert not torch.allclose(first, noiseless, atol=1e-3) and not torch.allclose(first, second, atol=1e-3)
    noise = first - noiseless
    assert 0.5 < noise.std().item() < 1.5  # router_noise_std defaults to 1.0

    model.config.router_noise_std = 0.0
    quiet = diverse_moe(routing, router_noise_std=0.0).train()
    with torch.no_grad():
        a = quiet.mol(input_ids=ids, attention_mask=mask, output_router_logits=True).router_logits[0]
        b = quiet.mol(input_ids=ids, attention_mask=mask, output_router_logits=True).router_logits[0]
    assert torch.equal(a, b)


# -- the auxiliary loss -------------------------------------------------------------------------------------------

def test_the_load_balancing_loss_is_the_gshard_formula_computed_by_hand():
    probs = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8], [0.9, 0.1]])
    experts = probs.argmax(-1)  # 0, 0, 1, 0: f = (3/4, 1/4), P = (0.6, 0.4)
    assert load_balancing_loss(probs, experts, None, 2).item() == pytest.approx(2 * (0.75 * 0.6 + 0.25 * 0.4))
    # Padding rows count for nothing: without the last row f = (2/3, 1/3), P = (0.5, 0.5).
    real = torch.tensor([True, True, True, False])
    assert load_balancing_loss(probs, experts, real, 2).item() == pytest.approx(2 * (2 / 3 * 0.5 + 1 / 3 * 0.5))
    # Perfect balance gives 1, one expert taking everything with certainty gives E.
    assert load_balancing_loss(torch.full((6, 3), 1 / 3), torch.tensor([0, 1, 2, 0, 1, 2]), None, 3).item() == \
        pytest.approx(1.0)
    assert load_balancing_loss(F.one_hot(torch.zeros(5, dtype=torch.long), 3).float(), torch.zeros(5, dtype=torch.long),
                               None, 3).item() == pytest.approx(3.0)


@pytest.mark.parametrize("routing", ROUTINGS)
def test_the_model_adds_the_aux_loss_as_transformers_moe_models_do(routing):
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    model = diverse_moe(routing, group_layers=[1], router_aux_loss_coef=0.25)
    ids, mask = random_batch(seed=4)
    labels = ids.masked_fill(torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) > 0.4, -100)
    labels = labels.masked_fill(mask == 0, -100)
    with torch.no_grad():
        output = model(input_ids=ids, attention_mask=mask, labels=labels, output_router_logits=True)
    (logits,) = output.router_logits
    assert logits.shape == (ids.numel(), 3)
    assert torch.equal(logits.view(*ids.shape, 3)[mask == 0], torch.zeros(int((mask == 0).sum()), 3))
    # By hand from the returned logits: softmax, top-1, shares over the real tokens.
    real = mask.reshape(-1).bool()
    probs = logits[real].softmax(-1)
    shares = F.one_hot(probs.argmax(-1), 3).float().mean(0)
    assert output.aux_loss.item() == pytest.approx(3 * (shares * probs.mean(0)).sum().item(), rel=1e-5)
    assert output.aux_loss.item() == pytest.approx(load_balancing_loss_func((logits,), 3, 1, mask).item(), rel=1e-5)
    mlm = F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits.reshape(-1, 99), labels.reshape(-1))
    assert output.loss.item() == pytest.approx(mlm.item() + 0.25 * output.aux_loss.item(), rel=1e-5)
    # Without output_router_logits (the config's default) the logits are not returned; aux_loss always is.
    plain = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert plain.router_logits is None and plain.aux_loss is not None
    assert plain.loss.item() == pytest.approx(output.loss.item(), rel=1e-6)


def test_the_aux_loss_is_the_mean_over_routed_blocks():
    model = diverse_moe("token")  # both blocks routed
    ids, mask = random_batch(seed=5)
    with torch.no_grad():
        output = model.mol(input_ids=ids, attention_mask=mask, output_router_logits=True)
    real = mask.reshape(-1).bool()
    per_block = []
    for logits in output.router_logits:
        probs = logits[real].softmax(-1)
        per_block.append(3 * (F.one_hot(probs.argmax(-1), 3).float().mean(0) * probs.mean(0)).sum().item())
    assert output.aux_loss.item() == pytest.approx(sum(per_block) / 2, rel=1e-5)


# -- gradients ------------------------------------------------------------------------------------------------------

EXPERT_PARAMETERS = ["attention.query.weight", "attention.query.bias", "attention.key.weight", "attention.value.weight",
                     "attention.output.weight", "attention.LayerNorm.weight", "attention.LayerNorm.bias",
                     "intermediate.weight", "output.weight", "output.bias", "LayerNorm.weight", "LayerNorm.bias"]


@pytest.mark.parametrize("routing", ROUTINGS)
def test_gradients_reach_the_gate_and_only_the_experts_that_received_tokens(routing):
    model = diverse_moe(routing, num_experts=4).train()
    model.config.router_noise_std = 0.0
    for layer in model.mol.encoder.layer:
        layer.router.noise_std = 0.0
    with torch.no_grad():
        # Block 0 reads the embeddings' LayerNorm output: shifted by +1 in every dimension, a gate row of -1s gives
        # expert 3 a logit of about -hidden_size: it never receives a token.
        model.mol.embeddings.LayerNorm.bias.fill_(1.0)
        model.mol.encoder.layer[0].router.gate.weight[3] = -1.0
    ids, mask = random_batch(batch_size=6, seed=6)
    labels = ids.masked_fill(mask == 0, -100)
    output = model(input_ids=ids, attention_mask=mask, labels=labels, output_router_logits=True)
    output.loss.backward()
    block = model.mol.encoder.layer[0]
    used = set(output.router_logits[0][mask.reshape(-1).bool()].argmax(-1).tolist())
    assert 3 not in used and len(used) >= 2
    gate_grad = block.router.gate.weight.grad
    assert gate_grad is not None and gate_grad[sorted(used)].abs().sum() > 0
    parameters = dict(block.named_parameters())
    for name in EXPERT_PARAMETERS:
        grad = parameters[name].grad
        for expert in range(4):
            if expert in used:
                assert grad[expert].abs().sum() > 0, (name, expert)
            else:
                assert torch.count_nonzero(grad[expert]) == 0, (name, expert)


def test_the_gate_learns_from_the_mlm_loss_alone():
    """With the auxiliary loss off, the gate's gradient comes only through the p / p.detach() weighting."""
    model = diverse_moe("token", router_aux_loss_coef=0.0, router_noise_std=0.0).train()
    ids, mask = random_batch(seed=7)
    model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
    for layer in model.mol.encoder.layer:
        assert layer.router.gate.weight.grad.abs().sum() > 0


def test_the_expert_weighting_leaves_the_forward_value_unchanged():
    """The block's output is the chosen expert's output itself: identical with and without gradients."""
    model = diverse_moe("token", router_noise_std=0.0).train()
    ids, mask = random_batch(seed=8)
    with torch.no_grad():
        frozen = model.mol(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.equal(model.mol(input_ids=ids, attention_mask=mask).last_hidden_state.detach(), frozen)


@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_recomputes_the_same_routing_and_gradients(reentrant):
    """The noise is redrawn identically in the recomputation (the RNG state is kept) and the aux loss keeps its
    graph through reentrant checkpointing (the layer returns tensors only)."""
    ids, mask = random_batch(seed=14)
    labels = ids.masked_fill(mask == 0, -100)
    grads = []
    for checkpointing in (False, True):
        model = diverse_moe("sentence").train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        torch.manual_seed(1)
        output = model(input_ids=ids, attention_mask=mask, labels=labels)
        output.loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("router" in name for name in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("routing", ROUTINGS)
def test_bf16_autocast_trains_a_moe(routing):
    model = diverse_moe(routing).train()
    ids, mask = random_batch(seed=15)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    output.loss.backward()
    assert torch.isfinite(output.loss) and torch.isfinite(output.aux_loss)
    assert model.mol.encoder.layer[0].router.gate.weight.grad.abs().sum() > 0
    assert model.mol.encoder.layer[0].intermediate.weight.grad.dtype == torch.float32


# -- conventions, warm start, random routing -------------------------------------------------------------------------

def test_languages_are_optional_and_change_nothing_for_a_moe():
    model = diverse_moe("token")
    ids, mask = random_batch(seed=9)
    with torch.no_grad():
        without = model(input_ids=ids, attention_mask=mask).logits
        routed = model(input_ids=ids, attention_mask=mask, languages="rus_Cyrl").logits
    assert torch.equal(without, routed)


def test_language_groups_on_a_moe_config_are_kept_but_never_route():
    """A config carrying language groups (e.g. a tester's tiny MoL config with routing='token') is a MoE all the
    same: num_experts copies, routing by the gate, no language needed, the groups unused."""
    config = MoLConfig(**tiny_config_kwargs(routing="token", num_experts=4))
    assert config.language_groups and config.num_groups == 4 and config.is_moe
    torch.manual_seed(0)
    model = MoLForMaskedLM(config).eval()
    assert model.mol.encoder.layer[0].intermediate.weight.shape[0] == 4
    ids, mask = random_batch(seed=16)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        routed = model(input_ids=ids, attention_mask=mask, languages=["rus_Cyrl"] * ids.shape[0]).logits
    assert torch.equal(plain, routed)


def test_return_dict_false_keeps_the_tuple_order_and_adds_the_moe_fields_at_the_end():
    model = diverse_moe("token")
    ids, mask = random_batch(seed=10)
    with torch.no_grad():
        as_tuple = model(input_ids=ids, attention_mask=mask, labels=ids, output_router_logits=True, return_dict=False)
        as_dict = model(input_ids=ids, attention_mask=mask, labels=ids, output_router_logits=True)
    assert torch.equal(as_tuple[0], as_dict.loss) and torch.equal(as_tuple[1], as_dict.logits)
    assert torch.equal(as_tuple[2], as_dict.aux_loss) and len(as_tuple[3]) == 2


@pytest.mark.parametrize("routing", ROUTINGS)
def test_from_xlm_roberta_starts_a_moe_with_copied_experts_that_computes_what_xlmr_computes(routing):
    torch.manual_seed(0)
    xlmr = XLMRobertaForMaskedLM(xlmr_config()).eval()
    moe = MoLForMaskedLM.from_xlm_roberta(xlmr, group_layers="stacked", routing=routing, num_experts=3).eval()
    assert moe.config.routing == routing and moe.config.num_experts == 3
    query = moe.mol.encoder.layer[0].attention.query.weight
    assert query.shape[0] == 3 and all(torch.equal(query[e], query[0]) for e in range(3))
    torch.testing.assert_close(query[0], xlmr.roberta.encoder.layer[0].attention.self.query.weight.t())
    gate = moe.mol.encoder.layer[0].router.gate.weight
    assert gate.shape == (3, 32) and 0 < gate.std().item() < 0.1  # initialised (std initializer_range), not zero
    assert moe.mol.encoder.layer[1].router is None  # a shared block of the stacked 1-2-1 layout
    ids, mask = random_batch(seed=11)
    with torch.no_grad():
        expected = xlmr(input_ids=ids, attention_mask=mask).logits
        got = moe(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


def test_random_routing_draws_uniform_experts_reproducibly_and_can_be_undone():
    model = diverse_moe("token", num_experts=4)
    ids, mask = random_batch(batch_size=8, seq_len=12, seed=12)
    with torch.no_grad():
        learned = model(input_ids=ids, attention_mask=mask).logits
        model.set_random_routing(0)
        first = model(input_ids=ids, attention_mask=mask).logits
        model.set_random_routing(0)
        again = model(input_ids=ids, attention_mask=mask).logits
        model.set_random_routing(None)
        back = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(first, again) and not torch.allclose(first, learned)
    assert torch.equal(back, learned)
    with pytest.raises(ValueError, match="learned-routing model"):
        MoLForMaskedLM(MoLConfig(**tiny_config_kwargs())).set_random_routing(0)


def test_a_moe_bundle_round_trips_with_its_routing(tmp_path):
    model = diverse_moe("sentence", router_noise_std=0.5, router_aux_loss_coef=0.02)
    model.save_pretrained(tmp_path / "bundle")
    loaded = MoLModel.from_pretrained(tmp_path / "bundle").eval()
    assert (loaded.config.routing, loaded.config.num_experts, loaded.config.router_noise_std,
            loaded.config.router_aux_loss_coef) == ("sentence", 3, 0.5, 0.02)
    ids, mask = random_batch(seed=13)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask).last_hidden_state,
                                   model.mol(input_ids=ids, attention_mask=mask).last_hidden_state, atol=0, rtol=0)
    assert "mixture-of-experts" in (tmp_path / "bundle" / "README.md").read_text()


# -- presets and bad configs ----------------------------------------------------------------------------------------

def test_the_moe_presets_have_the_total_parameters_of_mol30_stacked_and_the_active_ones_of_dense30():
    from mol_toolkit.training.trainer import dry_run
    from mol_toolkit.run_config import load_run_config

    plans = {name: dry_run(load_run_config(PROJECT / "configs" / f"{name}.yaml"))
             for name in ("mol30_stacked", "moe30_token", "moe30_sentence", "dense30")}
    gates = 12 * 1024 * 5  # one (hidden x 5) gate per routed block: the only parameters MoL has not
    for name, routing in (("moe30_token", "token"), ("moe30_sentence", "sentence")):
        plan = plans[name]
        assert plan["routing"] == routing and plan["num_experts"] == 5 and plan["language_groups"] == {}
        assert plan["group_layers"] == [0, 1, 2, 3, 4, 5, 18, 19, 20, 21, 22, 23]
        assert plan["parameters"] == plans["mol30_stacked"]["parameters"] + gates
        assert plan["active_parameters"] == plans["dense30"]["active_parameters"] + gates
    assert 1.1e9 < plans["moe30_token"]["parameters"] < 1.2e9


@pytest.mark.parametrize("overrides, message", [
    (dict(routing="expert", num_experts=3), "routing 'expert' is unknown"),
    (dict(routing="token", num_experts=1), "num_experts must be an integer >= 2"),
    (dict(routing="token", num_experts=None), "num_experts must be an integer >= 2"),
    (dict(routing="token", num_experts=2.0), "num_experts must be an integer >= 2"),
    (dict(routing="token", num_experts=3, router_noise_std=-0.1), "router_noise_std must be a finite number >= 0"),
    (dict(routing="sentence", num_experts=3, router_aux_loss_coef=-1), "router_aux_loss_coef must be a finite number"),
    (dict(routing="token", num_experts=3, router_noise_std=float("nan")), "router_noise_std must be a finite"),
    (dict(routing="token", num_experts=3, group_layers="dense"), "routes the blocks of group_layers, and there are none"),
    (dict(routing="language", num_experts=3, language_groups=None, group_layers="dense"), "options of learned routing"),
    (dict(router_noise_std=0.5), "options of learned routing"),
    (dict(router_aux_loss_coef=0.1), "options of learned routing"),
    (dict(routing="token", num_experts=3, output_router_logits="yes"), "output_router_logits must be True or False"),
])
def test_bad_moe_configs_are_refused(overrides, message):
    kwargs = tiny_config_kwargs(language_groups=None, group_layers="all")
    if "language_groups" not in overrides and overrides.get("routing", "language") == "language" \
            and "group_layers" not in overrides:
        kwargs.update(language_groups=tiny_config_kwargs()["language_groups"])
    kwargs.update(overrides)
    with pytest.raises(ValueError, match=message):
        MoLConfig(**kwargs)


@pytest.mark.parametrize("overrides, message", [
    ({"routing": "tokens"}, "routing 'tokens' is not valid"),
    ({"routing": "token"}, "needs num_experts"),
    ({"routing": "token", "num_experts": 1}, "num_experts must be an integer >= 2"),
    ({"routing": "token", "num_experts": 3, "group_layers": "dense"}, "has none"),
    ({"num_experts": 3}, "options of the MoE baselines"),
    ({"routing": "sentence", "num_experts": 3, "router_noise_std": -1}, "router_noise_std must be a number"),
    ({"routing": "sentence", "num_experts": 3, "router_aux_loss_coef": "big"}, "router_aux_loss_coef must be a number"),
])
def test_bad_moe_run_configs_are_refused_before_any_work(overrides, message):
    from mol_toolkit.run_config import load_run_config

    with pytest.raises(ValueError, match=message):
        load_run_config(PROJECT / "configs" / "tiny_udhr.yaml", overrides)


# -- training under FSDP2 and the clean-interpreter bundle -----------------------------------------------------------

CLEAN_CHECK = """
import sys, importlib.util, torch
from transformers import AutoModelForMaskedLM, AutoTokenizer
assert importlib.util.find_spec('modeling_mol') is None, 'the project is importable: not a clean interpreter'
path, target = sys.argv[1], sys.argv[2]
model = AutoModelForMaskedLM.from_pretrained(path, trust_remote_code=True).eval()
assert type(model).__module__.startswith('transformers_modules'), type(model)
batch = AutoTokenizer.from_pretrained(path, trust_remote_code=True)(
    ['Everyone has the right to life.', 'Tout individu a droit à la vie.'], padding=True, return_tensors='pt')
with torch.no_grad():
    output = model(**batch, output_router_logits=True)
torch.save({'logits': output.logits, 'router_logits': output.router_logits, 'aux_loss': output.aux_loss}, target)
"""


@pytest.mark.slow
def test_two_process_fsdp2_moe_run_trains_logs_its_routers_and_exports_a_bundle_for_a_clean_interpreter(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from test_train_mlm import launch_on_cpu, read_metrics

    out = tmp_path / "moe"
    run = launch_on_cpu(2, "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache"), "--max-steps", "40",
                        "--checkpoint-every", "0", "--eval-every", "0", "--log-every", "5", "--trackers", "[]",
                        "--routing", "token", "--num-experts", "3")
    assert run.returncode == 0, run.stderr[-3000:]
    reports = [json.loads((out / f"sharding-rank{rank}.json").read_text()) for rank in range(2)]
    expert_weight = "mol.encoder.layer.0.intermediate.weight"
    assert reports[0][expert_weight]["placements"] == ["S(0)"]
    assert reports[0][expert_weight]["local_numel"] + reports[1][expert_weight]["local_numel"] == \
        reports[0][expert_weight]["numel"] > max(reports[0][expert_weight]["local_numel"], reports[1][expert_weight]["local_numel"])
    assert reports[0]["mol.encoder.layer.0.router.gate.weight"]["dtensor"]

    metrics = read_metrics(out)
    assert metrics[40]["train/loss"] < metrics[5]["train/loss"] - 0.3
    for step in (5, 40):
        assert 1.0 <= metrics[step]["train/aux_loss"] < 3.0  # 1 at balance, 3 (= experts) at collapse
        for block in (0, 1):
            shares = [metrics[step][f"router/block{block}/expert{e}"] for e in range(3)]
            assert sum(shares) == pytest.approx(1.0) and all(0 <= s <= 1 for s in shares)
        by_language = metrics[step]["router/load_by_language"]
        assert set(by_language) == {"eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "arb_Arab"}
        assert all(sum(shares) == pytest.approx(1.0) for blocks in by_language.values() for shares in blocks.values())

    target = tmp_path / "clean.pt"
    clean = subprocess.run([sys.executable, "-I", "-c", CLEAN_CHECK, str(out / "model"), str(target)], cwd=tmp_path,
                           capture_output=True, stdin=subprocess.DEVNULL, text=True,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert clean.returncode == 0, clean.stderr[-3000:]
    from transformers import AutoTokenizer

    reference = MoLForMaskedLM.from_pretrained(out / "model").eval()
    assert reference.config.routing == "token" and not reference.config.sparse_prediction
    batch = AutoTokenizer.from_pretrained(out / "model")(
        ["Everyone has the right to life.", "Tout individu a droit à la vie."], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = reference(**batch, output_router_logits=True)
    got = torch.load(target)
    assert torch.equal(got["logits"], expected.logits) and torch.equal(got["aux_loss"], expected.aux_loss)
    assert all(torch.equal(a, b) for a, b in zip(got["router_logits"], expected.router_logits))


@pytest.mark.slow
def test_a_killed_moe_run_resumes_with_the_same_losses_and_router_logs(tmp_path):
    """Logged every 3 steps, checkpointed every 5: the log after the resume covers steps on both sides of the
    checkpoint, so the expert counts since the last log must come back from the checkpoint."""
    import signal
    import subprocess
    import sys
    import time

    from test_train_mlm import TINY, launch_env, read_metrics

    common = ["--cache-dir", str(tmp_path / "cache"), "--trackers", "[]", "--max-steps", "24", "--checkpoint-every",
              "5", "--log-every", "3", "--eval-every", "0", "--export", "false", "--routing", "token",
              "--num-experts", "3"]
    script = [sys.executable, str(PROJECT / "train_mlm.py"), "--config", str(TINY)]
    subprocess.run(script + common + ["--output-dir", str(tmp_path / "full")], check=True, env=launch_env(),
                   capture_output=True)
    killed = subprocess.Popen(script + common + ["--output-dir", str(tmp_path / "killed")], env=launch_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while not any(p.name == "step-0000005" for p in checkpoints.glob("step-*")) and time.time() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert max(read_metrics(tmp_path / "killed")) < 24, "the run finished before it could be killed"
    subprocess.run(script + common + ["--output-dir", str(tmp_path / "killed"), "--resume"], check=True,
                   env=launch_env(), capture_output=True)
    full, resumed = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "killed")
    assert sorted(resumed) == sorted(full)
    for step, row in full.items():
        for key, value in row.items():
            if key.startswith(("train/loss", "train/aux_loss", "router/block")):
                assert resumed[step][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (step, key)
        for code, blocks in row.get("router/load_by_language", {}).items():
            for block, shares in blocks.items():
                assert resumed[step]["router/load_by_language"][code][block] == pytest.approx(shares), (step, code)
