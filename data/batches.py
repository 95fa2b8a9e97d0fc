"""
The sequences of each training iteration, drawn from a prepared split: train.py's, and the
paper's baselines' (paper/train_bd3lm.py), so that both see the same data in the same order.
"""

import numpy as np
import torch


def seeded(device, *key):
    """A generator for one draw of the run; its seed depends only on the key (integers)."""
    return torch.Generator(device).manual_seed(hash(key) % 2**63)


class Batches:
    """The start of every sequence of each iteration (its global batch), a function of (seed,
    iteration) only. Windowed data (the authors' wrapped chunks) gives whole windows, each epoch
    a fresh shuffle, as their loader does; a stream gives random offsets."""

    def __init__(self, n_tokens, block_size, global_batch, seed, windows):
        self.n_tokens = n_tokens
        self.L = block_size
        self.global_batch = global_batch
        self.seed = seed
        self.windows = windows
        self.orders = {}  # epoch -> the order of the windows in it (the last two kept)

    def offsets(self, it):
        if not self.windows:
            generator = seeded("cpu", self.seed, it)
            return torch.randint(self.n_tokens - self.L, (self.global_batch,), generator=generator)
        n = self.n_tokens // self.L
        first = it * self.global_batch
        index = torch.arange(first, first + self.global_batch)
        epoch = index // n
        offsets = torch.empty_like(index)
        for e in epoch.unique().tolist():  # a batch can straddle two epochs
            inside = epoch == e
            offsets[inside] = self.epoch_order(n, e)[index[inside] % n] * self.L
        return offsets

    def epoch_order(self, n, epoch):
        """The order of the n windows in an epoch, a function of (seed, epoch)."""
        if epoch not in self.orders:
            if len(self.orders) >= 2:
                self.orders.pop(min(self.orders))
            generator = seeded("cpu", self.seed, -1, epoch)
            self.orders[epoch] = torch.randperm(n, generator=generator)
        return self.orders[epoch]


def get_batch(data, offsets, block_size, device):
    """The sequences of block_size tokens that start at `offsets`, as a (len(offsets), L)
    LongTensor."""
    index = offsets.numpy()[:, None] + np.arange(block_size)
    x = torch.from_numpy(data[index].astype(np.int64))
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)
