"""
Table 1's perplexities as the paper measures them: the NELBO, and the importance-weighted (IW)
bound, in a full pass over a dataset's validation split.

  python -m paper.likelihood                                  # out/ckpt.pt on its own dataset
  python -m paper.likelihood --num_orders=100                 # and the IW bound with K = 100
  python -m paper.likelihood --init_from=esolmb-alpha0-0d25-250k.ckpt --dataset=openwebtext
  torchrun --standalone --nproc_per_node=8 -m paper.likelihood --init_from=FILE --num_orders=1000

A full pass is the authors' ppl_eval: the split cut into non-overlapping windows of L tokens (for
the authors' wrapped data: their chunks), each scored once with the EMA weights, the noise of each
window a function of its index, shared out over processes. (train.py's validation during training
is a quick fixed subset instead.) --init_from takes any model paper/formats.py reads: a checkpoint
of ours, an authors' Lightning file, Hugging Face folder or hub id (give --alpha_0).

The NELBO uses the ELBO weights and the model's training alpha_0 and kappa. Window j
(of the windows scored, in order) estimates the diffusion term when floor((j + 1) kappa) >
floor(j kappa), else the sequential term, so the terms get kappa and 1 - kappa of the windows, as
the authors' batch split; the diffusion windows take their times from a randomly shifted
Kronecker sequence (stratified over the whole pass, as their per-batch antithetic times are over
a batch). The NELBO is the mean of the diffusion windows' diffusion term plus the mean of the
sequential windows' sequential term: each term a sum over masked tokens divided by all tokens of
its windows, as the authors divide by all tokens of each half of a batch.
"""

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import cli
import eso
from data import common
from paper import formats

CONFIG = dict(
    out_dir=("out", "folder of ckpt.pt (written by train.py)"),
    init_from=("", "a model instead: ours, or an authors' file, folder or hub id"),
    alpha_0=(None, "the alpha_0 of an authors' Hugging Face model (their config has none)", float),
    dataset=("", "data/NAME to score (default: the model's own)"),
    eval_windows=(0, "score this many windows (a fixed subset), not all (0)"),
    num_orders=(0, "orders K of the importance-weighted bound (0 = skip)"),
    batch_size=(16, "windows per batch (per process)"),
    seed=(1337, "seed of every draw of the pass"),
    json=("", "also write the results to this JSON file"),
    **cli.SYSTEM,  # device, dtype
)

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
    progress = Progress(len(starts), "batches", enabled=rank == 0)
    for start in starts:
        rows = range(start, min(start + batch_size, len(chosen)))
        x = to_batch(wins[[chosen[j] for j in rows]], device)  # (len(rows), L)
        with ctx:
            totals += batch_terms(model, x, rows, chosen, is_diffusion, diffusion_index, seed)
            if num_orders:
                generator = window_generator(device, seed + 1, chosen[rows.start])
                iw = model.likelihood(x, num_orders, generator=generator)
                totals[4:] += [iw.item() * len(rows), len(rows)]
        progress.step()
    progress.close()
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


class Progress:
    """Progress through `total` steps of long work: a bar on a terminal; off one (a log file, a
    pipe), a line on stderr at every tenth of the way, with the seconds so far."""

    def __init__(self, total, unit, enabled=True):
        self.total = total
        self.unit = unit
        self.done = 0
        self.start = time.time()
        on_terminal = sys.stderr.isatty()
        self.bar = tqdm(total=total, unit=unit, leave=False, disable=not (enabled and on_terminal))
        self.lines = enabled and not on_terminal

    def step(self):
        self.done += 1
        self.bar.update()
        tenth = self.done * 10 // self.total
        if self.lines and tenth > (self.done - 1) * 10 // self.total:
            seconds = time.time() - self.start
            print(
                f"  {self.done:,} of {self.total:,} {self.unit}, {seconds:.0f} s", file=sys.stderr
            )

    def close(self):
        self.bar.close()


def main(argv):
    c, given = cli.parse(CONFIG, argv, __doc__)
    if c.num_orders < 0 or c.eval_windows < 0 or c.batch_size < 1:
        raise cli.UserError(
            "--num_orders and --eval_windows must not be negative, --batch_size at least 1"
        )
    rank, world, device = cli.start_distributed(c.device)
    _, ctx = cli.precision(device, c.dtype)
    source = c.init_from or Path(c.out_dir) / "ckpt.pt"
    model, ckpt = formats.load(source, device, alpha_0=c.alpha_0)  # the EMA weights, if any
    if ckpt.get("method", "eso") != "eso":
        raise cli.UserError(
            f"{source} holds a {ckpt['method']} model: the full pass scores an Eso-LM's NELBO "
            "(a BD3-LM's validation NELBO is in its log.jsonl)"
        )
    config = model.config
    if c.num_orders and config.variant != "B" and config.alpha_0 > 0:
        raise cli.UserError(
            "--num_orders needs a variant B model, or alpha_0 = 0 (variant A's clean tokens "
            "change as tokens arrive)"
        )
    dataset = c.dataset or ckpt.get("dataset") or ckpt.get("train_config", {}).get("dataset")
    if not dataset:
        raise cli.UserError(f"{source} names no dataset: give --dataset=NAME")
    _, val, meta = common.load_dataset(dataset, config.block_size)
    if meta["tokenizer"] != ckpt["tokenizer"] or meta["vocab_size"] != config.vocab_size:
        raise cli.UserError(
            f"data/{dataset} uses {meta['tokenizer']} ({meta['vocab_size']} ids) but the model "
            f"was trained with {ckpt['tokenizer']} ({config.vocab_size} ids)"
        )
    wins = windows(val, config.block_size)
    chosen = subset(len(wins), c.eval_windows)
    weights = "EMA" if ckpt.get("ema") else "raw"
    what = "a full pass"
    if c.eval_windows:
        what = f"{len(chosen):,} of {len(wins):,} windows"
    if rank == 0:
        print(
            f"{source} (step {ckpt['iter_num']}, alpha_0={config.alpha_0}, "
            f"kappa={config.batch_split}, variant {config.variant}, {weights} weights) on "
            f"data/{dataset} val, {what}: {len(chosen):,} windows of {config.block_size} tokens",
            flush=True,
        )
    t0 = time.time()
    res = full_pass(model, wins, chosen, c.batch_size, ctx, rank, world, c.num_orders, c.seed)
    if rank == 0:
        report(res, c, time.time() - t0, source, ckpt, dataset)
    if world > 1:  # leave together, once the first process has written
        dist.barrier()
    return 0


def report(res, c, seconds, source, ckpt, dataset):
    """The pass's numbers on stdout, and with --json in that file."""
    print(
        f"  NELBO {res['nelbo']:.4f} nats/token (diffusion {res['diffusion']:.4f} + sequential "
        f"{res['sequential']:.4f}), perplexity {res['ppl']:.2f}"
    )
    if c.num_orders:
        print(
            f"  IW bound (K={c.num_orders}) {res['iw_bound']:.4f} nats/token, perplexity "
            f"{res['iw_ppl']:.2f}"
        )
    print(f"  {seconds:.1f} s")
    if c.json:
        config = ckpt["config"]
        summary = {"checkpoint": str(source), "step": ckpt["iter_num"], "dataset": dataset}
        summary |= {"alpha_0": config["alpha_0"], "variant": config["variant"], **res}
        Path(c.json).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    cli.run(main, "python -m paper.likelihood", sys.argv[1:])
