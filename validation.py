"""
The validation NELBO (and the IW bound) of a model on a dataset's validation split.

  quick      during training: a fixed set of eval_iters x batch_size windows at random offsets,
             the same windows and noise at every evaluation, so that the curve moves only with
             the model.
  full_pass  train.py --eval_only, as the paper reports it (the authors' ppl_eval: every wrapped
             validation chunk once): the split cut into non-overlapping windows of L tokens (for
             the authors' wrapped data: their chunks), each scored once, the noise of each window
             a function of its index, shared out over processes.

Both use the ELBO weights and the model's training alpha_0 and kappa. In a full pass, window j
(of the windows scored, in order) estimates the diffusion term when floor((j + 1) kappa) >
floor(j kappa), else the sequential term, so the terms get kappa and 1 - kappa of the windows, as
the authors' batch split; the diffusion windows take their times from a randomly shifted
Kronecker sequence (stratified over the whole pass, as their per-batch antithetic times are over
a batch). The NELBO is the mean of the diffusion windows' diffusion term plus the mean of the
sequential windows' sequential term: each term a sum over masked tokens divided by all tokens of
its windows, as the authors divide by all tokens of each half of a batch.
"""

import math

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import eso

GOLDEN = (math.sqrt(5) - 1) / 2  # the Kronecker sequence's step: frac(shift + d * GOLDEN)


def windows(split, block_size):
    """(n, L) view of a split (a 1-D token array) as non-overlapping windows of L tokens from
    offset 0, the remainder dropped (for the authors' wrapped data: exactly their chunks)."""
    n = len(split) // block_size
    return split[: n * block_size].reshape(n, block_size)


def subset(n, k, seed=0):
    """The indices (ascending) of the windows to score: all n (k = 0), or a fixed random subset
    of k of them."""
    if k == 0 or k >= n:
        return torch.arange(n)
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]
    return chosen.sort().values


def is_diffusion_window(j, kappa):
    """Whether the j-th window scored estimates the diffusion term (a share kappa of them)."""
    return math.floor((j + 1) * kappa) > math.floor(j * kappa)


def window_generator(device, seed, index):
    """The generator of one window's noise: a function of the window's index only."""
    return torch.Generator(device).manual_seed(hash((seed, 7, index)) % 2**63)


def window_time(d, seed):
    """The time t of the d-th diffusion window: a randomly shifted Kronecker sequence in
    [T_EPS, 1] (low discrepancy over any number of windows)."""
    shift = torch.rand(1, generator=torch.Generator().manual_seed(seed)).item()
    u = (shift + d * GOLDEN) % 1.0
    return (1 - eso.T_EPS) * u + eso.T_EPS


def to_batch(array, device):
    """A LongTensor on device from a slice of token windows (numpy, often memory-mapped)."""
    return torch.from_numpy(np.asarray(array).astype(np.int64)).to(device)


@torch.no_grad()
def full_pass(model, wins, chosen, batch_size, ctx, rank=0, world=1, num_orders=0, seed=0):
    """The per-token NELBO (and with num_orders the IW bound) over the windows wins[chosen] (see
    the module's docstring): a dict of nelbo, ppl, its two terms, the windows and tokens
    scored (and iw_bound, iw_ppl, num_orders), the same on any number of processes."""
    totals = pass_totals(model, wins, chosen, batch_size, ctx, rank, world, num_orders, seed)
    if world > 1:
        device = model.wte.weight.device
        reduce_device = device if device.type == "cuda" else "cpu"
        t = torch.tensor(totals, dtype=torch.float64, device=reduce_device)
        dist.all_reduce(t)
        totals = t.cpu().numpy()
    diffusion = totals[0] / max(totals[1], 1)
    sequential = totals[2] / max(totals[3], 1)
    nelbo = diffusion + sequential
    L = model.config.block_size
    out = {"nelbo": nelbo, "ppl": math.exp(min(nelbo, 700)), "diffusion": diffusion}
    out |= {"sequential": sequential, "windows": len(chosen), "tokens": len(chosen) * L}
    if num_orders:
        iw = totals[4] / totals[5]
        out |= {"iw_bound": iw, "iw_ppl": math.exp(min(iw, 700)), "num_orders": num_orders}
    return out


def pass_totals(model, wins, chosen, batch_size, ctx, rank, world, num_orders, seed):
    """This process's share of a full pass: [diffusion sum, count, sequential sum, count, IW sum,
    count] over its batches (batches of batch_size windows go to process b mod world), in
    Python floats (float64 on every device)."""
    model.eval()
    device = model.wte.weight.device
    kappa = model.config.batch_split
    chosen = chosen.tolist()
    is_diffusion = [is_diffusion_window(j, kappa) for j in range(len(chosen))]
    diffusion_index = np.cumsum(is_diffusion) - 1  # d: the window's place among the diffusion ones
    totals = np.zeros(6)
    starts = list(range(0, len(chosen), batch_size))[rank::world]
    bar = tqdm(starts, unit="batch", leave=False, disable=None if rank == 0 else True)
    for start in bar:
        rows = range(start, min(start + batch_size, len(chosen)))
        x = to_batch(wins[[chosen[j] for j in rows]], device)  # (len(rows), L)
        with ctx:
            totals += batch_terms(model, x, rows, chosen, is_diffusion, diffusion_index, seed)
            if num_orders:
                generator = window_generator(device, seed + 1, chosen[rows.start])
                iw = model.likelihood(x, num_orders, generator=generator)
                totals[4:] += [iw.item() * len(rows), len(rows)]
    bar.close()
    return totals


def batch_terms(model, x, rows, chosen, is_diffusion, diffusion_index, seed):
    """[diffusion sum, count, sequential sum, count, 0, 0] of the windows x (one per row j of
    rows), each with its own noise: the sums of each window's term (its sum over masked tokens
    divided by L)."""
    L = x.size(1)
    device = x.device
    diffusion_rows = [i for i, j in enumerate(rows) if is_diffusion[j]]
    sequential_rows = [i for i, j in enumerate(rows) if not is_diffusion[j]]
    out = np.zeros(6)
    if diffusion_rows:
        t, masked, sigma = [], [], []
        for i in diffusion_rows:
            j = rows[i]
            t_j = torch.tensor([window_time(int(diffusion_index[j]), seed)], device=device)
            m, s = model.diffusion_draws(t_j, L, window_generator(device, seed, chosen[j]))
            t.append(t_j)
            masked.append(m)
            sigma.append(s)
        t = torch.cat(t)
        nll = model.diffusion_nll(x[diffusion_rows], t, torch.cat(masked), torch.cat(sigma), "elbo")
        out[0:2] = [nll.item() * len(diffusion_rows), len(diffusion_rows)]
    if sequential_rows:
        masked, sigma = [], []
        for i in sequential_rows:
            generator = window_generator(device, seed, chosen[rows[i]])
            m, s = model.sequential_draws(1, L, device, generator)
            masked.append(m)
            sigma.append(s)
        nll = model.sequential_nll(x[sequential_rows], torch.cat(masked), torch.cat(sigma))
        out[2:4] = [nll.item() * len(sequential_rows), len(sequential_rows)]
    return out


@torch.no_grad()
def quick(model, val, eval_iters, batch_size, ctx, rank=0, world=1, forward=None):
    """Per-token NELBO (elbo weights, the training alpha_0 and kappa) on a fixed validation set:
    eval_iters batches of batch_size windows at offsets drawn once (seed 0), the same noise
    every call, shared out over processes. forward: the model's forward, compiled or not (the
    draws are made outside it). Totals are summed in Python floats (float64 on every device)."""
    model.eval()
    forward = forward or model
    device = model.wte.weight.device
    L = model.config.block_size
    offsets = torch.randint(
        len(val) - L, (eval_iters, batch_size), generator=torch.Generator().manual_seed(0)
    )
    totals = np.zeros(3)  # nelbo, diffusion, sequential
    for i in range(rank, eval_iters, world):
        index = offsets[i].numpy()[:, None] + np.arange(L)
        x = to_batch(val[index], device)
        noise = torch.Generator(device).manual_seed(1000 + i)
        with ctx:
            draws = model.draws(x, noise)
            loss, parts = forward(x, draws, "elbo", n_skip=eso.skip_of(draws))
        totals += [loss.item(), parts["diffusion"].item(), parts["sequential"].item()]
    if world > 1:
        reduce_device = device if device.type == "cuda" else "cpu"
        t = torch.tensor(totals, dtype=torch.float64, device=reduce_device)
        dist.all_reduce(t)
        totals = t.cpu().numpy()
    model.train()
    nelbo, diffusion, sequential = (totals / eval_iters).tolist()
    return {
        "nelbo": nelbo,
        "ppl": math.exp(min(nelbo, 700)),
        "diffusion": diffusion,
        "sequential": sequential,
    }
