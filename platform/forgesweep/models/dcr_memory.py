"""The memory side of DCR: a FIFO queue of real-sample features and the momentum key encoder.

Citation: the queue and the momentum encoder follow MoCo (He et al., CVPR 2020, "Momentum
Contrast for Unsupervised Visual Representation Learning"; ``facebookresearch/moco:moco/builder.py``),
adapted to hold only *real* faces, the reference set a DCR detector compares every input with.

Design choices (the seed's bank needed rewriting):

* :class:`RealFeatureQueue` writes with wrap-around: a batch that runs past the end continues at
  the start, so no key is ever dropped (the seed's bank truncated such a batch), and the batch
  size need not divide the queue size (MoCo's restriction). A batch larger than the whole queue
  keeps its newest ``size`` keys.
* The queue starts empty and counts its valid rows (``count``) instead of starting from random
  vectors as MoCo does: random "prototypes" would be retrieved as the nearest real face at the
  start of training. An empty queue retrieves the origin (zero vector).
* ``features``, ``ptr`` and ``count`` are registered buffers, so the bank is part of the
  ``state_dict``: it is saved in every checkpoint and inference from a checkpoint alone sees the
  same bank the model was trained with.
* The momentum key encoder (:func:`momentum_copy`) holds its weights as buffers: they change
  after every step, but never through the optimiser.
* Under ``torch.distributed`` each rank's new keys are gathered before they are written, so every
  rank's queue receives the same rows (MoCo's ``concat_all_gather``); ranks may contribute
  different numbers of keys (the number of reals per batch varies), so rows are padded for the
  collective and trimmed after it.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class RealFeatureQueue(nn.Module):
    """FIFO queue of ``size`` L2-normalised features of dimension ``dim`` with wrap-around.

    Args:
        size: capacity ``K`` (rows).
        dim: feature dimension.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"queue size and dim must be >= 1, got size={size}, dim={dim}")
        self.size = size
        self.dim = dim
        self.register_buffer("features", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return int(self.count)

    def valid(self) -> torch.Tensor:
        """The rows written so far, ``[min(count, K), dim]`` (order is irrelevant to retrieval)."""
        # Until the queue is full the pointer has not wrapped, so rows 0..count-1 are the filled ones.
        return self.features[: int(self.count)]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Append ``keys`` ``[N, dim]`` (L2-normalised here), overwriting the oldest rows."""
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"expected keys [N, {self.dim}], got {tuple(keys.shape)}")
        keys = F.normalize(keys.detach().to(self.features.dtype), dim=1)
        if len(keys) > self.size:
            keys = keys[-self.size:]
        n = len(keys)
        if n == 0:
            return
        rows = (self.ptr + torch.arange(n, device=self.features.device)) % self.size
        self.features[rows] = keys
        self.ptr.copy_((self.ptr + n) % self.size)
        self.count.copy_(torch.clamp(self.count + n, max=self.size))

    def nearest(self, queries: torch.Tensor) -> torch.Tensor:
        """The valid row most cosine-similar to each query, ``[B, dim]`` (zeros when empty).

        Retrieval is per query: no query influences another's result.
        """
        bank = self.valid()
        if len(bank) == 0:
            return queries.new_zeros(queries.shape)
        sim = F.normalize(queries.detach(), dim=1) @ bank.to(queries.dtype).T
        return bank[sim.argmax(dim=1)].to(queries.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` rows drawn uniformly with replacement from the valid ones (zeros when empty).

        ``generator`` is a CPU generator (default: torch's global one).
        """
        bank = self.valid()
        if len(bank) == 0:
            return self.features.new_zeros(n, self.dim)
        # Indices are drawn on the CPU (where the loop's seeded generators live), then moved.
        idx = torch.randint(len(bank), (n,), generator=generator)
        return bank[idx.to(bank.device)]


def gather_from_all_ranks(keys: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``keys`` ``[N_r, D]`` (``N_r`` may differ); identity without DDP.

    Every rank must call this at the same point (it is a collective when distributed).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return keys
    world = dist.get_world_size()
    n = torch.tensor([len(keys)], device=keys.device)
    counts = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(counts, n)
    longest = int(max(int(c) for c in counts))
    padded = keys.new_zeros(longest, keys.shape[1])
    padded[: len(keys)] = keys
    chunks = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(chunks, padded.contiguous())
    return torch.cat([chunk[: int(c)] for chunk, c in zip(chunks, counts)])


def momentum_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` in eval mode whose parameters are turned into buffers.

    A momentum encoder is state (like BatchNorm's running statistics), not something the
    optimiser trains: as buffers its weights stay out of ``parameters()`` -- so out of every
    optimiser, gradient sync and "frozen parameters never change" check -- yet keep their names
    in the ``state_dict``, so checkpoints carry them. Assumes no weights are tied across
    sub-modules (a tied weight would be averaged once per name by :func:`momentum_update`).
    """
    key = copy.deepcopy(module)
    for sub in key.modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, param.detach().clone())
    return key.eval()


@torch.no_grad()
def momentum_update(key: nn.Module, query: nn.Module, momentum: float) -> None:
    """``key <- m * key + (1 - m) * query``, matching ``query``'s parameters and buffers by name.

    ``key`` is a :func:`momentum_copy` of ``query`` (or a module with the same parameters).
    Floating-point buffers (BatchNorm running statistics) follow the same average, so the key
    encoder, which always runs in eval mode, normalises with statistics that match its weights;
    integer buffers (batch counters) are copied.
    """
    key_state = dict(key.named_parameters())
    key_state.update(key.named_buffers())
    pairs = [(name, q) for name, q in (*query.named_parameters(), *query.named_buffers())]
    missing = [name for name, _ in pairs if name not in key_state]
    if missing:
        raise ValueError(f"key encoder lacks {missing[:3]}: it is not a copy of the query encoder")
    floats = [(key_state[name], q.detach()) for name, q in pairs if q.is_floating_point()]
    if floats:
        targets, sources = zip(*floats)
        torch._foreach_mul_(list(targets), momentum)
        torch._foreach_add_(list(targets), list(sources), alpha=1.0 - momentum)
    for name, q in pairs:
        if not q.is_floating_point():
            key_state[name].copy_(q)
