"""Curvature of the loss with respect to each quantized layer's weight, by Hessian-vector products.

The loss is the mean cross-entropy of the model (in eval mode: batch norm is affine) on a fixed,
labelled batch. Nothing here forms a Hessian: :class:`LossHessian` builds the first-order gradient
once per chunk of the batch, with its graph, and each product ``H v`` is one more backward pass
through it (double backward, ``torch.autograd.grad(create_graph=True)``), for all layers at once.

- :func:`hutchinson_traces`: HAWQ-V2's sensitivity (Dong et al., NeurIPS 2020, arXiv:1911.03852,
  Sec. 2: the average Hessian trace, computed by Hutchinson's method). With Rademacher vectors
  ``v`` (entries +-1, independent across layers), ``E[v_l^T (H v)_l] = Tr(H_ll)``: the blocks off the
  diagonal average out because the layers' vectors are independent, so one product per iteration
  serves every layer. Each vector meets one chunk of the batch in turn (``H`` of the batch is the mean
  of its equal chunks' ``H``): the same expectation, at a chunk's cost per vector rather than the
  batch's. With chunks of ``ceil(images / iterations)`` (:func:`trace_chunk`) the whole estimate costs
  one first-order and one second-order pass over the batch, whatever the number of vectors (ResNet-56,
  256 images, 32 vectors: one pass instead of 32).
- :func:`top_eigenvalues`: HAWQ-V1's sensitivity (Dong et al., ICCV 2019, Sec. 3): the largest
  eigenvalue of each diagonal block ``H_ll`` by power iteration. The blocks do not separate here,
  so each iteration takes one product per layer.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


class LossHessian:
    """Hessian-vector products of the mean cross-entropy on ``(images, labels)`` w.r.t. the weights of
    ``names``. The batch is cut into chunks of ``chunk`` images (the last may be smaller), each with its
    first-order graph; :meth:`products` sums them (exact) or takes one (a stochastic estimate).

    ``keep_graphs``: every chunk's graph is built once and kept (power iteration visits every chunk at
    every product); otherwise only the graph of the chunk last used is held and another chunk's is built
    when asked for (Hutchinson's vectors each meet one chunk in turn: the memory of one chunk's graph
    instead of the whole batch's, every layer's activations included; the same numbers)."""

    def __init__(self, model: nn.Module, names: list[str], images: torch.Tensor, labels: torch.Tensor,
                 chunk: int = 32, keep_graphs: bool = True):
        if len(images) == 0 or len(images) != len(labels):
            raise ValueError(f"need as many labels as images, got {len(images)} and {len(labels)}")
        self.work = copy.deepcopy(model).eval()
        for p in self.work.parameters():
            p.requires_grad_(False)
        modules = dict(self.work.named_modules())
        self.params = [modules[n].weight for n in names]
        for p in self.params:
            p.requires_grad_(True)
        self.images, self.labels, self.keep_graphs = images, labels, keep_graphs
        self.starts = list(range(0, len(images), chunk))
        self.size = chunk
        self.weights = [len(images[s : s + chunk]) / len(images) for s in self.starts]  # each chunk's share
        self._grads: dict[int, tuple[torch.Tensor, ...]] = {}  # of each held chunk's mean loss
        if keep_graphs:
            for c in range(self.chunks):
                self.grads(c)

    @property
    def chunks(self) -> int:
        return len(self.starts)

    def grads(self, c: int) -> tuple[torch.Tensor, ...]:
        """The gradient of chunk ``c``'s mean loss, with its graph (built now unless held)."""
        if c not in self._grads:
            if not self.keep_graphs:
                self._grads.clear()
            start = self.starts[c]
            x, y = self.images[start : start + self.size], self.labels[start : start + self.size]
            # attention's fused kernels have no double backward: the math kernel (the same values) has
            with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
                loss = F.cross_entropy(self.work(x), y.long())
                self._grads[c] = torch.autograd.grad(loss, self.params, create_graph=True)
        return self._grads[c]

    def products(self, vectors: list[torch.Tensor], chunk: int | None = None) -> list[torch.Tensor]:
        """``H v`` restricted to each layer, for ``v`` the concatenation of ``vectors`` (one per layer): of the
        whole batch (``chunk`` None), or of chunk ``chunk``'s mean loss alone."""
        out = [torch.zeros_like(p) for p in self.params]
        parts = range(self.chunks) if chunk is None else [chunk]
        with torch.enable_grad():
            for c in parts:
                dot = sum((g * v).sum() for g, v in zip(self.grads(c), vectors, strict=True))
                share = self.weights[c] if chunk is None else 1.0
                for acc, hv in zip(out, torch.autograd.grad(dot, self.params, retain_graph=True), strict=True):
                    acc += share * hv
        return out

    def block_product(self, index: int, vector: torch.Tensor) -> torch.Tensor:
        """``H_ll v`` for layer ``index`` alone (its diagonal block)."""
        out = torch.zeros_like(self.params[index])
        with torch.enable_grad():
            for c, share in enumerate(self.weights):
                hv = torch.autograd.grad((self.grads(c)[index] * vector).sum(), self.params[index],
                                         retain_graph=True)[0]
                out += share * hv
        return out


def trace_chunk(images: int, iterations: int) -> int:
    """Chunk size that gives each of ``iterations`` vectors its own images, all images used once."""
    return max(1, -(-images // iterations))


def hutchinson_traces(hessian: LossHessian, iterations: int = 32, seed: int = 0) -> list[float]:
    """Each layer's ``Tr(H_ll)`` estimated from ``iterations`` Rademacher vectors (HAWQ-V2, Sec. 2), vector
    ``i`` against chunk ``i mod chunks``: unbiased for the batch's trace when the chunks are equal and
    ``iterations`` is a multiple of their number (256 images, 32 vectors, chunks of :func:`trace_chunk` 8)."""
    if iterations < 1:
        raise ValueError(f"iterations must be positive, got {iterations}")
    gen = torch.Generator().manual_seed(seed)
    sums = [0.0] * len(hessian.params)
    for it in range(iterations):
        # drawn on the CPU (the same vectors on any device), used where the parameters are
        vectors = [(torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.device, p.dtype) for p in hessian.params]
        products = hessian.products(vectors, chunk=it % hessian.chunks)
        for i, (v, hv) in enumerate(zip(vectors, products, strict=True)):
            sums[i] += float((v * hv).sum())
    return [s / iterations for s in sums]


def top_eigenvalues(hessian: LossHessian, iterations: int = 32, seed: int = 0, tol: float = 1e-3) -> list[float]:
    """Each diagonal block's eigenvalue of largest magnitude by power iteration (HAWQ-V1, Sec. 3),
    at most ``iterations`` products per layer, stopping when it changes by less than ``tol`` (relative)."""
    if iterations < 1:
        raise ValueError(f"iterations must be positive, got {iterations}")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, p in enumerate(hessian.params):
        v = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
        v /= v.norm()
        value = 0.0
        for _ in range(iterations):
            hv = hessian.block_product(i, v)
            new = float((v * hv).sum())  # Rayleigh quotient of the unit vector v
            norm = hv.norm()
            if norm == 0:
                break
            v = hv / norm
            done = abs(new - value) <= tol * max(abs(new), 1e-30)
            value = new
            if done:
                break
        out.append(value)
    return out
