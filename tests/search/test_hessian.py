"""Hessian probes: Hutchinson's traces and power iteration against Hessians known exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ravn.quantizers.vq import ClusteredWeight
from ravn.search.hessian import LossHessian, hutchinson_traces, top_eigenvalues
from ravn.search.sensitivity import squared_scales


@pytest.fixture(autouse=True)
def one_thread():
    """Thousands of tiny products: threads only add contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _data(n=64, d=6, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_hutchinson_matches_the_closed_form_trace_of_softmax_regression():
    """Cross-entropy of a linear model, a quadratic form in W near any point: its Hessian w.r.t. W is
    ``mean_n (diag(p_n) - p_n p_n^T) (x) x_n x_n^T``, so ``Tr H = mean_n sum_k p_nk (1 - p_nk) ||x_n||^2``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4, bias=False))
    x, y = _data()
    p = torch.softmax(model(x), dim=1).detach()
    exact = float(((p * (1 - p)).sum(1) * x.pow(2).sum(1)).mean())
    estimate = hutchinson_traces(LossHessian(model, ["0"], x, y), iterations=400, seed=0)[0]
    assert estimate == pytest.approx(exact, rel=0.05)


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(5, 4)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def _exact_blocks(model, x, y):
    """Each weight's diagonal Hessian block of the mean cross-entropy, by torch.func.hessian."""
    from torch.func import functional_call, hessian

    params = {k: v.detach() for k, v in model.named_parameters()}
    blocks = {}
    for name in ("a.weight", "b.weight"):
        def loss(w, name=name):
            out = functional_call(model, {**params, name: w}, (x,))
            return F.cross_entropy(out, y)

        h = hessian(loss)(params[name])
        n = params[name].numel()
        blocks[name.removesuffix(".weight")] = h.reshape(n, n)
    return blocks


def test_hutchinson_matches_exact_block_traces_with_layers_sharing_vectors():
    """All layers in one product per vector: the blocks off the diagonal average out."""
    torch.manual_seed(1)
    model = TwoLayer()
    x, y = _data(seed=1)
    blocks = _exact_blocks(model, x, y)
    hessian = LossHessian(model, ["a", "b"], x, y, chunk=16)  # each vector meets one of 4 chunks
    estimate = hutchinson_traces(hessian, iterations=600, seed=0)
    for name, value in zip(["a", "b"], estimate, strict=True):
        exact = float(blocks[name].diagonal().sum())
        spread = float(blocks[name].pow(2).sum().sqrt())  # the estimator's scale: ||H_ll||_F
        assert abs(value - exact) <= 0.1 * abs(exact) + 0.05 * spread, (name, value, exact)


def test_products_are_exact_hessian_vector_products():
    torch.manual_seed(2)
    model = TwoLayer()
    x, y = _data(seed=2)
    blocks = _exact_blocks(model, x, y)
    hessian = LossHessian(model, ["a", "b"], x, y)
    v = torch.randn(5, 6)
    hv = hessian.block_product(0, v)
    assert torch.allclose(hv.reshape(-1), blocks["a"] @ v.reshape(-1), atol=1e-5)


def test_power_iteration_finds_the_top_eigenvalue_of_each_block():
    torch.manual_seed(3)
    model = TwoLayer()
    x, y = _data(seed=3)
    blocks = _exact_blocks(model, x, y)
    found = top_eigenvalues(LossHessian(model, ["a", "b"], x, y), iterations=500, seed=0, tol=1e-7)
    for name, value in zip(["a", "b"], found, strict=True):
        eig = torch.linalg.eigvalsh(blocks[name].double())
        top = float(eig[eig.abs().argmax()])
        assert value == pytest.approx(top, rel=1e-3), name


def test_same_seed_same_traces_and_model_unchanged():
    torch.manual_seed(4)
    model = TwoLayer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = _data(seed=4)
    first = hutchinson_traces(LossHessian(model, ["a", "b"], x, y), iterations=8, seed=5)
    second = hutchinson_traces(LossHessian(model, ["a", "b"], x, y), iterations=8, seed=5)
    assert first == second
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not p.requires_grad or p.grad is None for p in model.parameters())


@pytest.mark.parametrize("per_channel", [False, True])
def test_squared_scales_turn_normalised_errors_into_weight_errors(per_channel):
    """``squared_scales * e(b)`` is ``||Q_b(W) - W||^2`` exactly without channel scales, and close with them."""
    torch.manual_seed(5)
    w = torch.randn(16, 8, 3, 3) * torch.linspace(0.2, 2.0, 16).view(-1, 1, 1, 1)
    cw = ClusteredWeight(w, 1, per_channel, "uniform")
    for bits in (3, 4, 6):
        real = float((cw.quantize((bits,)).dequantize() - w).pow(2).sum())
        modelled = squared_scales(cw) * cw.error((bits,))
        assert modelled == pytest.approx(real, rel=1e-4 if not per_channel else 0.25), bits


def test_one_graph_at_a_time_gives_the_same_traces():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    kept = LossHessian(model, ["0", "2"], x, y, chunk=4)
    lean = LossHessian(model, ["0", "2"], x, y, chunk=4, keep_graphs=False)
    assert len(kept._grads) == 8 and len(lean._grads) == 0
    assert hutchinson_traces(lean, iterations=16, seed=3) == hutchinson_traces(kept, iterations=16, seed=3)
    assert len(lean._grads) == 1
    v = [torch.ones_like(p) for p in lean.params]
    for a, b in zip(lean.products(v), kept.products(v), strict=True):
        assert torch.equal(a, b)


def test_traces_of_attention_layers():
    """Hessian-vector products through attention (a vision Transformer's projections, rewritten as Linear
    layers): the fused attention kernels have no double backward, the math kernel is used."""
    from ravn.models.attention import split_attention
    from tests.methods import toy

    model = toy.attention()
    split_attention(model)
    names = ["patch", "attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "head"]
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    traces = hutchinson_traces(LossHessian(model, names, images, labels, chunk=4, keep_graphs=False), iterations=4)
    assert len(traces) == len(names) and all(torch.isfinite(torch.tensor(traces)))
