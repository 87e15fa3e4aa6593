"""SAM 2's memory attention with the frame-only part computed once per frame.

SAM 2's memory attention conditions the current frame's features on one object's
memories: the frame tokens (HW of them, C channels) get ``0.1 * pos`` added, then go
through layers of self-attention, cross-attention to the memories and an MLP. Up to
and including layer 0's self-attention, nothing depends on the object: every object
of a frame computes the same (HW, C) tensor. ``FrameSharedMemoryAttention`` computes
that part once per frame and runs the rest per object, with SAM 2's own layer code in
SAM 2's order. With one object per pass the logits are bit-identical to the official
predictor's; each further object of a frame saves one self-attention over HW tokens
(about 3% of an object's memory attention at 1024 input).

``frame()`` computes the shared part from the frame's features and drops it when the
frame ends, so no stale tensor is ever reused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from sam2.modeling.memory_attention import MemoryAttention
from sam2.modeling.sam.transformer import RoPEAttention
from torch import nn


def _rope_kwargs(layer: nn.Module, num_obj_ptr_tokens: int) -> dict:
    """Object pointer tokens take no rotary encoding (as in ``MemoryAttention.forward``)."""
    if isinstance(layer.cross_attn_image, RoPEAttention):
        return {"num_k_exclude_rope": num_obj_ptr_tokens}
    return {}


class FrameSharedMemoryAttention(nn.Module):
    """Drop-in for ``SAM2Base.memory_attention`` while ``frame()`` is active on a model."""

    def __init__(self, attention: MemoryAttention, compile_parts: bool = False) -> None:
        super().__init__()
        if not (attention.batch_first and attention.pos_enc_at_input):
            raise ValueError("expected SAM 2.x memory attention (batch first, pos at input)")
        self.attention = attention
        self.compiled = compile_parts
        self._frame_part = self.frame_part
        self._object_part = self.object_part
        if compile_parts:
            # As SAM 2's vos_optimized mode compiles memory attention (the memory
            # length varies with the frame, hence dynamic shapes).
            self._frame_part = torch.compile(
                self.frame_part, mode="max-autotune", fullgraph=True, dynamic=False
            )
            self._object_part = torch.compile(
                self.object_part, mode="max-autotune", fullgraph=True, dynamic=True
            )
        # The frame part of the frame being tracked, both (1, HW, C); None outside frame().
        self._shared: tuple[torch.Tensor, torch.Tensor] | None = None

    @contextmanager
    def frame(
        self, model: nn.Module, frame_tokens: torch.Tensor, frame_pos: torch.Tensor
    ) -> Iterator[None]:
        """Stand in for ``model.memory_attention`` for the calls of one frame, whose
        tokens and position encoding are (HW, 1, C); its frame part is computed here."""
        original = model.memory_attention
        if original is not self.attention:
            raise ValueError("this memory attention belongs to another model")
        if self.compiled:
            # One memory layout, one compiled graph (strides differ between frames).
            frame_tokens, frame_pos = frame_tokens.contiguous(), frame_pos.contiguous()
        shared = self._frame_part(frame_tokens, frame_pos)
        if self.compiled:
            # Kept across other compiled calls, whose CUDA graph replays may reuse a
            # compiled output's memory (SAM 2 clones compiled outputs likewise).
            shared = tuple(tensor.clone() for tensor in shared)
        self._shared = shared
        model.memory_attention = self
        try:
            yield
        finally:
            model.memory_attention = original
            self._shared = None

    def frame_part(
        self, curr: torch.Tensor, curr_pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(HW, 1, C) frame tokens and their position encoding -> layer 0 after its
        self-attention and the batch-first position encoding, both (1, HW, C)."""
        output = curr + 0.1 * curr_pos
        output = output.transpose(0, 1)
        query_pos = curr_pos.transpose(0, 1)
        return self.attention.layers[0]._forward_sa(output, query_pos), query_pos

    def object_part(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int,
    ) -> torch.Tensor:
        """The rest of ``MemoryAttention.forward`` for B objects.

        tgt, query_pos: (B, HW, C) from ``frame_part``; memory, memory_pos: (M, B, C_mem)
        memory tokens, the last ``num_obj_ptr_tokens`` of them object pointers.
        Returns the conditioned frame tokens, (HW, B, C)."""
        memory = memory.transpose(0, 1)
        memory_pos = memory_pos.transpose(0, 1)
        first, *others = self.attention.layers
        # Layer 0 from its cross-attention on (MemoryAttentionLayer.forward).
        tgt = first._forward_ca(
            tgt, memory, query_pos, memory_pos, **_rope_kwargs(first, num_obj_ptr_tokens)
        )
        tgt2 = first.norm3(tgt)
        tgt2 = first.linear2(first.dropout(first.activation(first.linear1(tgt2))))
        tgt = tgt + first.dropout3(tgt2)
        for layer in others:
            tgt = layer(
                tgt=tgt,
                memory=memory,
                pos=memory_pos,
                query_pos=query_pos,
                **_rope_kwargs(layer, num_obj_ptr_tokens),
            )
        return self.attention.norm(tgt).transpose(0, 1)

    def forward(
        self,
        curr: list[torch.Tensor],
        memory: torch.Tensor,
        curr_pos: list[torch.Tensor],
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int = 0,
    ) -> torch.Tensor:
        """``MemoryAttention.forward`` as SAM 2's ``_prepare_memory_conditioned_features``
        calls it inside ``frame()``: curr and curr_pos are one-element lists of (HW, B, C),
        every column of the batch that frame (expanded views of its features)."""
        (frame_tokens,), (frame_pos,) = curr, curr_pos
        batch_size = frame_tokens.shape[1]
        if batch_size > 1 and (frame_tokens.stride(1) != 0 or frame_pos.stride(1) != 0):
            # Not one frame for all columns: nothing to share.
            return self.attention(
                curr=curr,
                memory=memory,
                curr_pos=curr_pos,
                memory_pos=memory_pos,
                num_obj_ptr_tokens=num_obj_ptr_tokens,
            )
        tgt, query_pos = self._shared
        if self.compiled and batch_size > 1:
            # Compiled with dynamic shapes, batches of several objects over several
            # memories fail inductor's stride checks (torch 2.13; SAM 2's own compiled
            # memory attention fails alike), so compiled, objects go one at a time here.
            return torch.cat(
                [
                    self._object_part(
                        tgt,
                        query_pos,
                        memory[:, i : i + 1].contiguous(),
                        memory_pos[:, i : i + 1].contiguous(),
                        num_obj_ptr_tokens,
                    )
                    for i in range(batch_size)
                ],
                dim=1,
            )
        return self._object_part(
            tgt.expand(batch_size, -1, -1),
            query_pos.expand(batch_size, -1, -1),
            memory,
            memory_pos,
            num_obj_ptr_tokens,
        )
