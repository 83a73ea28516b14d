"""Outputs of a network remembered for inputs it has already seen with the same weights.

Why: a two-stage method freezes its generator G after the synthesis stage, and the engine
then evaluates the validation split after every diagnosis epoch. Those validation batches are
the same every epoch (not augmented, in the same order), and so is G, so G(x) is the same
tensor every time: recomputing it is pure cost. For the diffusion synthesiser it is most of a
run's cost (a DDIM sample is ``sampling_steps`` U-Net forwards per subject).

A remembered output is returned only while the network's parameters, buffers and training
mode are exactly those it was computed with (a digest of them is part of the key), so a
synthesis stage, whose G changes every step, and the restoring of G's best state both simply
miss. On a miss the network runs as it would without the memo, so results are bit for bit
those of recomputing. Memory is bounded: past ``max_bytes`` nothing more is kept (the final
test's many subjects are computed once anyway).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

#: what a memo keeps at most, by default: the validation outputs of a 4 mm cohort many times over
DEFAULT_MAX_BYTES = 256 * 2**20


def tensor_digest(tensors: list[Tensor], salt: bytes = b"") -> bytes:
    """A SHA-256 digest of the tensors' dtypes, shapes and values (copied to the CPU)."""
    digest = hashlib.sha256(salt)
    for tensor in tensors:
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.digest()


class FrozenOutputs:
    """``memo(inputs, compute)``: ``compute()``'s result, remembered per (network state, inputs)."""

    def __init__(self, network: nn.Module, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.network = network
        self.max_bytes = max_bytes
        self._state: bytes | None = None
        self._outputs: dict[bytes, Tensor] = {}
        self._bytes = 0

    def _network_state(self) -> bytes:
        tensors = [*self.network.parameters(), *self.network.buffers()]
        return tensor_digest(tensors, salt=b"training" if self.network.training else b"eval")

    def __call__(self, inputs: Tensor, compute: Callable[[], Tensor]) -> Tensor:
        state = self._network_state()
        if state != self._state:  # new weights: what was kept belongs to the old ones
            self._state, self._outputs, self._bytes = state, {}, 0
        key = tensor_digest([inputs])
        kept = self._outputs.get(key)
        if kept is not None:
            return kept.clone()
        output = compute()
        size = output.numel() * output.element_size()
        if self._bytes + size <= self.max_bytes:
            self._outputs[key] = output.detach().clone()
            self._bytes += size
        return output
