import logging

import pytest
import torch
from conftest import tiny_config_kwargs

from configuration_mol import MoLConfig
from modeling_mol import MoLForMaskedLM
from modeling_mol import mol_grouped_gemm
from modeling_mol.mol_grouped_gemm import MoLGroupedGemm, grouped_linear_grouped_mm, grouped_linear_loop


SIZES = {
    "uneven": [5, 1, 9],
    "empty group": [4, 0, 7],
    "empty first and last": [0, 6, 0],
    "single rows": [1, 1, 1],
}


def fp32_reference(x, weight, bias, sizes):
    rows = x.double().split(sizes)
    return torch.cat([r @ weight[g].double() + bias[g].double() for g, r in enumerate(rows)])


def operands(sizes, dtype, in_features=32, out_features=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(sizes), in_features, generator=generator).to(dtype).requires_grad_()
    weight = torch.randn(len(sizes), in_features, out_features, generator=generator).to(dtype).requires_grad_()
    bias = torch.randn(len(sizes), out_features, generator=generator).to(dtype).requires_grad_()
    offsets = torch.cumsum(torch.tensor(sizes), 0).to(torch.int32)
    return x, weight, bias, offsets


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 0.1)])
@pytest.mark.parametrize("case", list(SIZES))
@pytest.mark.parametrize("implementation", [grouped_linear_loop, grouped_linear_grouped_mm])
def test_grouped_linear_forward_and_backward_match_reference(implementation, case, dtype, atol):
    sizes = SIZES[case]
    x, weight, bias, offsets = operands(sizes, dtype)
    out = implementation(x, weight, bias, offsets)
    assert out.shape == (sum(sizes), 48) and out.dtype == dtype
    torch.testing.assert_close(out.double(), fp32_reference(x, weight, bias, sizes), atol=atol * 8, rtol=0.02)
    # `.sum()` hands backward a zero-stride gradient, which grouped_mm's own backward rejects.
    out.float().sum().backward()
    for g, rows in enumerate(sizes):
        if rows == 0:
            assert torch.count_nonzero(weight.grad[g]) == 0 and torch.count_nonzero(bias.grad[g]) == 0
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("case", list(SIZES))
def test_loop_and_grouped_mm_agree_exactly_in_fp32(case):
    sizes = SIZES[case]
    results = []
    for implementation in (grouped_linear_loop, grouped_linear_grouped_mm):
        x, weight, bias, offsets = operands(sizes, torch.float32)
        out = implementation(x, weight, bias, offsets)
        out.backward(torch.ones_like(out) * torch.arange(48.0))
        results.append((out, x.grad, weight.grad, bias.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-6)


def test_dispatch_falls_back_and_logs_its_path_once(caplog):
    x, weight, bias, offsets = operands([3, 2], torch.float32, in_features=32, out_features=5)
    gemm = MoLGroupedGemm("auto", kernel_repo="mol-encoders/mol-grouped-gemm")
    mol_grouped_gemm._LOGGED_PATHS.clear()
    with caplog.at_level(logging.INFO):
        out = gemm(x, weight, bias, offsets)  # 5 fp32 columns are 20 bytes: grouped_mm cannot run them
        gemm(x, weight, bias, offsets)
    torch.testing.assert_close(out, grouped_linear_loop(x, weight, bias, offsets))
    assert gemm._choice[("cpu", torch.float32, 32, 5)] is grouped_linear_loop
    messages = [r.getMessage() for r in caplog.records if "MoL grouped GEMM" in r.getMessage()]
    assert len(messages) == 1 and "per-group loop on cpu" in messages[0] and "16 bytes" in messages[0]


def test_forced_backends_say_why_they_cannot_run():
    x, weight, bias, offsets = operands([3, 2], torch.float32, out_features=5)
    with pytest.raises(RuntimeError, match="grouped_mm needs rows of a multiple of 16 bytes"):
        MoLGroupedGemm("grouped_mm")(x, weight, bias, offsets)
    with pytest.raises(RuntimeError, match="no grouped_gemm_kernel is configured"):
        MoLGroupedGemm("hub_kernel", kernel_repo=None)(x, weight, bias, offsets)
    with pytest.raises(ValueError, match="backend 'fast' is unknown"):
        MoLGroupedGemm("fast")


def test_model_outputs_and_gradients_agree_across_backends():
    ids = torch.randint(3, 99, (4, 9), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    results = []
    for backend in ("loop", "grouped_mm", "auto"):
        torch.manual_seed(0)
        model = MoLForMaskedLM(MoLConfig(**tiny_config_kwargs(grouped_gemm_backend=backend)))
        # Three sentences of one group and one of another: the third group is empty.
        out = model(input_ids=ids, languages=["eng_Latn", "fra_Latn", "deu_Latn", "eng_Latn"], labels=labels)
        out.loss.backward()
        results.append((out.logits, model.mol.encoder.layer[1].intermediate.weight.grad))
    for logits, grad in results[1:]:
        torch.testing.assert_close(logits, results[0][0], atol=1e-5, rtol=0)
        torch.testing.assert_close(grad, results[0][1], atol=1e-6, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", list(SIZES))
def test_cuda_paths_match_reference(case):
    sizes = SIZES[case]
    x, weight, bias, offsets = (t.detach().cuda().to(torch.bfloat16) if t.is_floating_point() else t.cuda()
                                for t in operands(sizes, torch.float32, 64, 128))
    expected = fp32_reference(x.float().cpu(), weight.float().cpu(), bias.float().cpu(), sizes)
    for backend in ("loop", "grouped_mm", "auto"):
        out = MoLGroupedGemm(backend, kernel_repo="mol-encoders/mol-grouped-gemm")(x, weight, bias, offsets)
        torch.testing.assert_close(out.double().cpu(), expected, atol=0.25, rtol=0.02)
