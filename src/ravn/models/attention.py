"""Attention whose projections are ``nn.Linear`` layers, so ravn quantizes them like any other.

``nn.MultiheadAttention`` keeps its query / key / value projections in one raw parameter
(``in_proj_weight``) and applies them, and its output projection, inside
``F.multi_head_attention_forward`` without calling a module: ravn, which quantizes the weights of
Conv and Linear modules and reads their inputs with forward hooks, would leave a third of a
Transformer's weights in float. :func:`split_attention` replaces each one by a
:class:`SplitAttention` holding ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` as ``nn.Linear``
modules with the same weights, and calling them: the same outputs up to float rounding (three
matrix products instead of one packed product), the same call signature, masks, dropout, bias_k /
bias_v, add_zero_attn, need_weights and batch_first.

A model quantized so stores the split weights; its :class:`ravn.models.ModelRef` records the rewrite
(``rewrites``), so a file rebuilds the same structure from the user's factory.
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

#: the rewrite's name in :attr:`ravn.models.ModelRef.rewrites`
SPLIT_ATTENTION = "split-attention"


class SplitAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` as ``nn.Linear``
    modules that its forward calls (so hooks see their inputs and outputs), built from an existing one by
    :meth:`of`. A subclass, so code that checks the type or reads ``batch_first`` / ``num_heads`` still works;
    ``in_proj_weight`` and ``in_proj_bias`` are ``None``, which also keeps PyTorch's fused inference path of
    ``nn.TransformerEncoderLayer`` (it reads the packed weights directly) from being taken."""

    def __init__(self, embed_dim: int, num_heads: int, kdim: int, vdim: int, bias: bool, batch_first: bool,
                 dropout: float = 0.0):
        nn.Module.__init__(self)
        self.embed_dim, self.num_heads, self.dropout, self.batch_first = embed_dim, num_heads, dropout, batch_first
        self.kdim, self.vdim, self.head_dim = kdim, vdim, embed_dim // num_heads
        self._qkv_same_embed_dim = kdim == embed_dim and vdim == embed_dim
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        for name in ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                     "bias_k", "bias_v"):
            self.register_parameter(name, None)
        self.add_zero_attn = False

    @classmethod
    @torch.no_grad()
    def of(cls, mha: nn.MultiheadAttention) -> SplitAttention:
        """The same attention as ``mha``, its weights copied into the four projections."""
        bias = mha.out_proj.bias is not None
        split = cls(mha.embed_dim, mha.num_heads, mha.kdim, mha.vdim, bias, mha.batch_first, mha.dropout)
        e = mha.embed_dim
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.split(e)
        else:
            weights = (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight)
        biases = mha.in_proj_bias.split(e) if mha.in_proj_bias is not None else (None,) * 3
        for proj, w, b in zip((split.q_proj, split.k_proj, split.v_proj), weights, biases, strict=True):
            proj.weight.copy_(w)
            if b is not None:
                proj.bias.copy_(b)
        split.out_proj.weight.copy_(mha.out_proj.weight)
        if bias:
            split.out_proj.bias.copy_(mha.out_proj.bias)
        if mha.bias_k is not None:
            split.bias_k, split.bias_v = nn.Parameter(mha.bias_k.clone()), nn.Parameter(mha.bias_v.clone())
        split.add_zero_attn = mha.add_zero_attn
        return split.to(device=mha.out_proj.weight.device, dtype=mha.out_proj.weight.dtype).train(mha.training)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``nn.MultiheadAttention.forward``, the projections by the modules. Without weights, masks or
        extra keys (a vision Transformer's call) the heads attend by ``F.scaled_dot_product_attention`` as
        ``F.multi_head_attention_forward`` does; otherwise that function does the rest (heads, masks, dropout,
        bias_k / bias_v, zero attention, the weights) with identity projections, which multiply exactly.

        ``torch.fx`` traces the batched form (an input's rank is not known while tracing), asserting it, so
        that ravn's one-pass walks (:mod:`ravn.hooks`) run through the projections of a Transformer that
        calls its attention on batches; a model that calls it on one sequence fails that graph's check and
        gets the pass per layer."""
        tracing = torch.fx._symbolic_trace.is_fx_symbolic_tracing()
        if tracing:
            torch._assert(query.dim() == 3, "SplitAttention was traced for batched inputs")
        batched = tracing or query.dim() == 3
        if batched and self.batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)  # (length, [batch,] embed_dim)
        if need_weights or key_padding_mask is not None or attn_mask is not None or is_causal \
                or self.bias_k is not None or self.add_zero_attn:
            eye = torch.eye(self.embed_dim, dtype=q.dtype, device=q.device)
            out, weights = F.multi_head_attention_forward(
                q, k, v, self.embed_dim, self.num_heads, None, None, self.bias_k, self.bias_v, self.add_zero_attn,
                self.dropout, eye, None, training=self.training, key_padding_mask=key_padding_mask,
                need_weights=need_weights, attn_mask=attn_mask, use_separate_proj_weight=True, q_proj_weight=eye,
                k_proj_weight=eye, v_proj_weight=eye, average_attn_weights=average_attn_weights,
                is_causal=is_causal)
        elif batched:
            out, weights = self._attend(q, k, v), None
        else:
            out, weights = self._attend(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1), None
        out = self.out_proj(out)
        return (out.transpose(0, 1) if batched and self.batch_first else out), weights

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The heads' attention of projected ``(length, batch, embed_dim)`` inputs, before the output projection."""
        length, batch, _ = q.shape
        heads = [x.reshape(x.shape[0], batch * self.num_heads, self.head_dim).transpose(0, 1)
                 .reshape(batch, self.num_heads, x.shape[0], self.head_dim) for x in (q, k, v)]
        out = F.scaled_dot_product_attention(*heads, dropout_p=self.dropout if self.training else 0.0)
        return out.permute(2, 0, 1, 3).reshape(length, batch, self.embed_dim)


def _attention(model: nn.Module) -> list[tuple[nn.Module, str, nn.MultiheadAttention]]:
    """Each ``nn.MultiheadAttention`` of ``model`` (exactly that type) with its parent and attribute name."""
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if type(child) is nn.MultiheadAttention]


def has_attention(model: nn.Module) -> bool:
    """Does ``model`` hold an ``nn.MultiheadAttention`` that :func:`split_attention` would replace."""
    return bool(_attention(model))


def split_attention(model: nn.Module) -> int:
    """Replace, in place, every ``nn.MultiheadAttention`` of ``model`` by its :class:`SplitAttention`;
    returns how many were replaced."""
    targets = _attention(model)
    for parent, name, child in targets:
        setattr(parent, name, SplitAttention.of(child))
    return len(targets)

