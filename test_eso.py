"""Tests of the core: eso.py (the method), the scripts as a user runs them (train.py, sample.py),
the checkpoints of checkpoint.py and the default data of data/prepare.py. Offline, CPU, tiny
models; `pytest test_eso.py`, about a minute on 2 cores. The sections follow eso.py (1 config ...
7 making it fast), then what stands on it. The paper's reproduction is tested in paper/, the
recipes of its datasets in data/; `pytest` runs everything. Fixtures are in conftest.py."""

import itertools
import json
import math
import os
import re
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tiktoken
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import checkpoint
import cli
import compiled
import eso
import sample
import train
from data import common, prepare

ROOT = Path(__file__).resolve().parent
# The tests that a GPU can break (the cached sampler, the fast sequential term, compile, bf16)
# run on every device torch sees here: the CPU, and CUDA or MPS where present.
DEVICES = ["cpu"]
if torch.cuda.is_available():
    DEVICES.append("cuda")
if torch.backends.mps.is_available():
    DEVICES.append("mps")


def gen(seed, device="cpu"):
    return torch.Generator(device).manual_seed(seed)


# ============================================================================= eso.py


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(alpha_0=1.5), "alpha_0"),
        (dict(variant="C"), "variant"),
        (dict(loss_type="mse"), "loss_type"),
        (dict(alpha_0=0.5, batch_split=1.0), "batch_split"),
        (dict(alpha_0=1.0, batch_split=0.5), "batch_split"),
        (dict(n_embd=30, n_head=4), "n_embd"),
    ],
)
def test_config_rejects_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        eso.EsoConfig(**kw)


def test_config_default_batch_split_follows_the_paper():
    assert [eso.EsoConfig(alpha_0=a).batch_split for a in (0.0, 0.25, 1.0)] == [0.0, 0.5, 1.0]


def test_worked_example_diffusion_order_and_mask():
    # x = (A, B, C, D, E, F) at positions 1..6, z = (A, M, C, M, M, F); sigma = (3, 1, 6, 4, 5, 2).
    A, B, C, D, E, Fm, M = range(7)
    x = torch.tensor([[A, B, C, D, E, Fm]])
    masked = torch.tensor([[0, 1, 0, 1, 1, 0]], dtype=torch.bool)
    u = torch.tensor([[0.2, 0.9, 0.1, 0.3, 0.5, 0.4]])  # clean by u: 3, 1, 6; masked: 4, 5, 2
    order = eso.diffusion_order(masked, u)
    assert (order[0] + 1).tolist() == [3, 1, 6, 4, 5, 2]
    z = torch.where(masked, M, x)
    assert z.gather(1, order)[0].tolist() == [C, A, Fm, M, M, M]
    # variant B: plain causal attention over the sorted sequence
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    assert torch.equal(eso.prefix_lm_mask(torch.arange(6), 6)[0, 0], causal)


def test_worked_example_sequential_order_and_mask():
    A, B, C, D, E, Fm, M = range(7)
    x = torch.tensor([[A, B, C, D, E, Fm]])
    masked = torch.tensor([[0, 1, 0, 1, 1, 0]], dtype=torch.bool)
    u = torch.tensor([[0.2, 0.0, 0.1, 0.0, 0.0, 0.4]])
    order = eso.sequential_order(masked, u)
    assert (order[0] + 1).tolist() == [3, 1, 6, 2, 4, 5]
    z = torch.where(masked, M, x)
    zs = z.gather(1, order)[0].tolist()
    xs = x.gather(1, order)[0].tolist()
    assert zs == [C, A, Fm, M, M, M]
    assert xs == [C, A, Fm, B, D, E]
    # (12, 12) over [z sorted ; x sorted]
    mask = eso.sequential_mask(eso.prefix_lm_mask(torch.arange(6), 6))[0, 0]
    slot = 4  # the mask at position 4 (0-based slot 4 of the z half)
    sees = [("z" if j < 6 else "x", (zs + xs)[j]) for j in range(12) if mask[slot, j]]
    assert sees == [("z", M), ("x", C), ("x", A), ("x", Fm), ("x", B)]
    # x slots are plain causal and never see the z half
    assert torch.equal(mask[6:, 6:], torch.ones(6, 6, dtype=torch.bool).tril())
    assert not mask[6:, :6].any()


def test_antithetic_times_are_stratified():
    t = eso.sample_t(8, "cpu", gen(0))
    strata = ((t - 1e-3) / (1 - 1e-3) * 8).floor().sort().values
    assert strata.tolist() == list(range(8))
    assert (t >= 1e-3).all() and (t <= 1).all()


def brute_mask_a(L, n_clean, two_l):
    """Variant A's attention masks written out element by element from the paper's definitions."""
    if not two_l:  # diffusion: prefix LM over the clean block
        rows = [[j <= i or (i < n_clean and j < n_clean) for j in range(L)] for i in range(L)]
        return torch.tensor(rows)
    m = torch.zeros(2 * L, 2 * L, dtype=torch.bool)
    for i in range(L):
        m[i, i] = True  # z slot -> itself
        for j in range(i):
            m[i, L + j] = True  # z slot -> earlier x slots
        for j in range(L):
            # x: causal, and the clean block both ways
            m[L + i, L + j] = j <= i or (i < n_clean and j < n_clean)
    return m


def test_variant_a_masks_are_right_per_row():
    L = 7
    n_clean = torch.tensor([5, 2])  # two rows with different clean counts
    diff = eso.prefix_lm_mask(torch.arange(L), L, n_clean)
    seq = eso.sequential_mask(diff)
    assert diff.shape == (2, 1, L, L) and seq.shape == (2, 1, 2 * L, 2 * L)
    for b in range(2):
        assert torch.equal(diff[b, 0], brute_mask_a(L, int(n_clean[b]), False))
        assert torch.equal(seq[b, 0], brute_mask_a(L, int(n_clean[b]), True))
    assert not torch.equal(diff[0], diff[1])


def test_python_eso_py_prints_the_worked_example_of_its_docstring(capsys):
    """`python eso.py` prints a legend, the attention masks and the cached sampler's steps,
    computed by the model's own functions; the docstring's worked example quotes that output."""
    runpy.run_path(str(ROOT / "eso.py"), run_name="__main__")  # python eso.py
    stdout = capsys.readouterr().out
    assert stdout.startswith("How to read it: each grid is an attention mask")
    assert "'█' = the row may attend to the" in stdout
    assert stdout.count("Eso-LM (") == 4
    lines = stdout.splitlines()
    i = lines.index("Eso-LM (B), diffusion term: z sorted by sigma = (3, 1, 6, 4, 5, 2)")
    assert lines[i + 1].split() == ["C3", "A1", "F6", "M4", "M5", "M2"]
    assert lines[i + 6].split() == ["M5", "█", "█", "█", "█", "█", "·"]  # causal in decode order
    trace = [line.strip() for line in lines if line.startswith("    step ")]
    assert len(trace) == 10  # variant B's five steps, then variant A's

    def table(docstring):  # the rows of a docstring's sampler table, in order
        rows = [line.strip() for line in docstring.splitlines()]
        return [row for row in rows if re.match(r"step \d+ feeds ", row)]

    assert table(eso.__doc__) == trace[:5]
    assert table(eso.CachedStep.__doc__) == trace[5:]
    assert stdout.count("  NFE = 5.") == 2
    assert trace[1].split()[:8] == ["step", "2", "feeds", "C3", "A1", "M6", "keeps", "C3"]
    assert trace[6].split()[:8] == ["step", "2", "feeds", "C3", "A1", "M6", "keeps", "-"]


def binomial_chains(n_chains, n, steps, alpha_0, g):
    """The paper's Alg. 2, step by step, for n_chains chains at once (the slow way): the sizes of
    each chain's non-empty steps."""
    remaining = torch.full((n_chains,), float(n), dtype=torch.float64)
    sizes = [[] for _ in range(n_chains)]
    for t in torch.linspace(1, 1 / steps, steps, dtype=torch.float64).tolist():
        s = t - 1 / steps
        a_t = eso.alpha(t, alpha_0)
        a_s = eso.alpha(max(s, 0.0), alpha_0)
        p = torch.full_like(remaining, (a_s - a_t) / (1 - a_t))
        k = torch.binomial(remaining, p, generator=g)
        remaining -= k
        for chain in k.nonzero().flatten().tolist():
            sizes[chain].append(int(k[chain]))
    return sizes


@pytest.mark.parametrize("alpha_0, steps", [(0.5, 8), (1.0, 8), (0.25, 64)])
def test_schedule_matches_the_binomial_chain_in_distribution(alpha_0, steps):
    g = gen(0)
    fast = [eso.unmask_schedule(40, steps, alpha_0, g, "cpu") for _ in range(3000)]
    slow = binomial_chains(3000, 40, steps, alpha_0, g)

    def total(s):
        return sum(s)

    def largest(s):
        return max(s, default=0)

    for stat in (total, len, largest):
        a = torch.tensor([float(stat(s)) for s in fast])
        b = torch.tensor([float(stat(s)) for s in slow])
        assert abs(a.mean() - b.mean()) < 4 * math.sqrt((a.var() + b.var()) / 3000) + 1e-9


def test_schedule_counts_and_nfe(tiny):
    for alpha_0, steps in [(0.0, 10), (1.0, 10), (1.0, 10**6), (0.5, 10**6), (0.5, 3)]:
        sizes = eso.unmask_schedule(1000, steps, alpha_0, gen(1), "cpu")
        n_mdm = sum(sizes)
        assert all(k > 0 for k in sizes) and len(sizes) <= steps and n_mdm <= 1000
        nfe = len(sizes) + (1000 - n_mdm)  # the NFE the spec gives
        if alpha_0 == 0:
            assert sizes == [] and nfe == 1000
        if alpha_0 == 1:
            assert n_mdm == 1000
        if alpha_0 == 0.5:  # n_MDM ~ Binomial(L, alpha_0 (1 - eps) / (1 - alpha_0 eps))
            p = 0.5 * (1 - 1e-3) / (1 - 0.5e-3)
            assert abs(n_mdm - 1000 * p) < 5 * math.sqrt(1000 * p * (1 - p))
    model = tiny(0.5, L=24)
    sizes = eso.unmask_schedule(24, 5, 0.5, gen(2), "cpu")
    _, nfe = model.generate(2, 5, generator=gen(2))
    assert nfe == len(sizes) + 24 - sum(sizes)


def test_block_order_decodes_evenly_spaced_streams():
    """Each diffusion step decodes one stream: no two of its tokens closer than S (the number of
    diffusion steps) positions, whatever L, alpha_0, T and prompt; the sizes stay shared."""
    known = torch.zeros(2, 64, dtype=torch.bool)
    # alpha_0 = 1, S = 4 divides L
    sigma, sizes = eso.sampling_order(known, [16, 15, 17, 16], True, gen(0))
    assert sizes == [16] * 4
    for b in range(2):
        assert sorted(sigma[b].tolist()) == list(range(64))
        for j in range(4):  # step j: one residue class mod 4, as the authors' code decodes
            assert len({p % 4 for p in sigma[b, 16 * j : 16 * j + 16].tolist()}) == 1
    cases = itertools.product([37, 64, 100], [1.0, 0.5, 0.2], [3, 8, 30], [False, True])
    for L, alpha_0, T, prompt in cases:
        known = torch.zeros(3, L, dtype=torch.bool)
        known[:, : 5 * prompt] = True
        n_masked = L - 5 * prompt
        schedule = eso.unmask_schedule(n_masked, T, alpha_0, gen(L + T), "cpu")
        sigma, sizes = eso.sampling_order(known, schedule, True, gen(1))
        S = len(schedule)
        assert len(sizes) == S and sum(sizes) == sum(schedule) and max(sizes) - min(sizes) <= 1
        assert all(sorted(r) == list(range(L)) for r in sigma.tolist())
        start = 5 * prompt
        for size in sizes:  # within a step, every two tokens are S or more positions apart
            step = sigma[:, start : start + size].sort(1).values
            assert size < 2 or (step.diff(dim=1) >= S).all(), (L, alpha_0, T, prompt)
            start += size
        assert (sigma[:, start:].diff(dim=1) > 0).all()  # the sequential positions, ascending


def tempered_nucleus(logits, temperature, top_p):
    """softmax(logits / T) cut to the top-p nucleus and renormalised, written out independently:
    tokens in descending order are kept until the kept mass reaches top_p."""
    p = torch.softmax(logits.double() / temperature, -1)
    keep = torch.zeros_like(p)
    mass = 0.0
    for i in p.argsort(descending=True).tolist():
        keep[i] = 1.0
        mass += float(p[i])
        if mass >= top_p:
            break
    return p * keep / (p * keep).sum()


@pytest.mark.parametrize("wide", [True, False], ids=["float64", "float32"])
@pytest.mark.parametrize(
    "temperature, top_p", [(1.0, 1.0), (0.6, 1.0), (1.7, 1.0), (1.0, 0.7), (0.8, 0.9)]
)
def test_sampled_tokens_follow_the_tempered_nucleus_law(temperature, top_p, wide, monkeypatch):
    """200,000 draws from one row of logits: every token's frequency lies within 5 binomial
    standard deviations of softmax(logits / T) restricted to the top-p nucleus, and the tokens
    drawn are exactly the nucleus. (Both paths: Gumbel-max in float64, and the float32 inverse
    CDF that devices without float64 use.)"""
    monkeypatch.setattr(eso, "has_float64", lambda device: wide)
    V = 10
    N = 200_000
    logits = torch.randn(V, generator=gen(0)) * 1.5
    draws = eso.sample_tokens(logits.expand(N, 1, V), temperature, top_p, gen(1))  # (N, 1)
    assert draws.shape == (N, 1)
    freq = torch.bincount(draws.flatten(), minlength=V).double() / N
    p = tempered_nucleus(logits, temperature, top_p)
    tolerance = 5 * (p * (1 - p) / N).sqrt()
    assert ((freq - p).abs() <= tolerance).all(), (freq, p)
    assert torch.equal(freq > 0, p > 0)  # what is drawn is the nucleus, no more, no less


def test_nucleus_filtering_keeps_the_smallest_set_above_p():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]]))
    seen = {int(eso.sample_tokens(logits, top_p=0.7, generator=gen(s))) for s in range(200)}
    assert seen == {0, 1}  # 0.5 < 0.7 <= 0.8
    seen = {int(eso.sample_tokens(logits, top_p=0.01, generator=gen(s))) for s in range(50)}
    assert seen == {0}  # the top token is always kept
    seen = {int(eso.sample_tokens(logits, generator=gen(s))) for s in range(400)}
    assert seen == {0, 1, 2, 3}


@pytest.mark.parametrize("wide", [True, False], ids=["float64", "float32"])
def test_temperature_zero_is_greedy_decoding(wide, monkeypatch, tiny):
    """At temperature 0 every draw is the argmax of its row, whatever the nucleus; and a whole
    greedy sample from the cached sampler equals the uncached path's."""
    monkeypatch.setattr(eso, "has_float64", lambda device: wide)
    logits = torch.randn(500, 3, 17, generator=gen(0))
    for top_p in (1.0, 0.5):
        draws = eso.sample_tokens(logits, 0.0, top_p, gen(1))
        assert torch.equal(draws, logits.argmax(-1))
    model = tiny(0.5)
    a, nfe_a = model.generate(2, 8, temperature=0, generator=gen(3))
    b, _ = model.generate(2, 8, temperature=0, generator=gen(3), kv_cache=False)
    assert torch.equal(a, b)
    assert nfe_a > 0


def coarse_cumsum(self, dim=-1):
    """A sequential sum, rounded to 8 significant bits (bf16's) after every addition."""
    out = torch.empty_like(self)
    acc = torch.zeros(self.shape[:-1])
    for i in range(self.size(-1)):
        acc = (acc + self[..., i]).to(torch.bfloat16).float()
        out[..., i] = acc
    return out


def test_float32_sampling_keeps_the_tail_where_a_running_sum_would_round_it_away(monkeypatch):
    """The float32 inverse CDF (MPS) sums probabilities in float32; CPU cumsum accumulates in
    double and cannot show the failure, so this emulates a coarse accumulator: the same failure
    as float32's at a 2^16 times smaller vocabulary. Head token 0 has p = 7/8 and 128 tail tokens
    2^-10 each: added after the head, each is below half an ulp of the sum and adds nothing."""
    p = torch.tensor([7 / 8] + [2**-10] * 128)
    largest_first = coarse_cumsum(p)  # the accumulator has teeth: head first, the tail vanishes
    assert largest_first[-1] == largest_first[0] == 7 / 8
    monkeypatch.setattr(torch.Tensor, "cumsum", coarse_cumsum)
    monkeypatch.setattr(eso, "has_float64", lambda device: False)
    draws = eso.sample_tokens(p.log().expand(8000, 129), generator=gen(0))
    tail = float((draws > 0).double().mean())
    assert abs(tail - 1 / 8) < 5 * math.sqrt(1 / 8 * 7 / 8 / 8000), tail


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(steps=0), "steps"),
        (dict(steps=2.5), "steps"),
        (dict(steps="8"), "steps"),
        (dict(steps=True), "steps"),
        (dict(num_samples=1.5), "num_samples"),
        (dict(alpha_0=-0.1), "alpha_0"),
        (dict(temperature=-0.5), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=float("nan")), "top_p"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(canvas=torch.zeros(1, 5, dtype=torch.long)), "canvas"),
        (dict(num_samples=0), "num_samples"),
        (
            dict(canvas=torch.tensor([[11] * 23 + [1], [11] * 22 + [1, 1]]), num_samples=2),
            "same number of masks",
        ),
    ],
)
def test_generate_rejects_bad_arguments(kw, msg, tiny):
    model = tiny(0.5)
    args = dict(num_samples=1, steps=4) | kw
    with pytest.raises(ValueError, match=msg):
        model.generate(args.pop("num_samples"), args.pop("steps"), **args)


def test_whole_numbers_given_as_floats_are_taken(tiny):
    model = tiny(0.5)
    a = model.generate(2, 4, generator=gen(3))
    b = model.generate(2.0, 4.0, generator=gen(3))
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    x = torch.randint(0, 11, (2, 24), generator=gen(0))
    assert model.likelihood(x, 2.0, gen(1)) == model.likelihood(x, 2, gen(1))
    with pytest.raises(ValueError, match="num_orders"):
        model.likelihood(x, 0.5)


@pytest.mark.parametrize("variant", ["A", "B"])
def test_batched_loss_equals_row_by_row(variant, tiny):
    """The loss of a batch is the mean of its rows' losses: masks follow each row, not the
    first."""
    model = tiny(0.5, variant, L=12, big=False)
    x = torch.randint(0, 11, (3, 12), generator=gen(0))
    masked = torch.tensor([[1] * 9 + [0] * 3, [1] * 2 + [0] * 10, [0, 1] * 6], dtype=torch.bool)
    t = torch.tensor([0.9, 0.2, 0.5])
    u = torch.rand(3, 12, generator=gen(1))
    d_order = eso.diffusion_order(masked, u)
    s_order = eso.sequential_order(masked, u)
    batched_d = model.diffusion_nll(x, t, masked, d_order)
    batched_s = model.sequential_nll(x, masked, s_order)
    rows = [slice(b, b + 1) for b in range(3)]
    rows_d = sum(model.diffusion_nll(x[r], t[r], masked[r], d_order[r]) for r in rows) / 3
    rows_s = sum(model.sequential_nll(x[r], masked[r], s_order[r]) for r in rows) / 3
    torch.testing.assert_close(batched_d, rows_d)
    torch.testing.assert_close(batched_s, rows_s)


def test_alpha0_zero_loss_is_left_to_right_ar_cross_entropy(tiny):
    model = tiny(0.0, L=10, big=False)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randint(0, 11, (2, 10), generator=gen(0))
    loss, parts = model.loss(x)
    assert parts["diffusion"] == 0
    # Independent AR: for each i, feed the true prefix x_<i then one [MASK] at position i, with
    # plain causal attention, and score x_i at the mask.
    nll = 0.0
    for i in range(10):
        idx = torch.cat([x[:, :i], torch.full((2, 1), model.mask_id)], 1)
        logits = model.lm_head(model.hidden(idx, torch.arange(i + 1).expand(2, -1)))[:, -1]
        nll += F.cross_entropy(logits, x[:, i], reduction="sum")
    torch.testing.assert_close(loss, nll / 20, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.likelihood(x, 3), nll / 20, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss_type, variant", [("elbo", "B"), ("low_var", "B"), ("elbo", "A")])
def test_alpha0_one_loss_is_mdlm_nelbo(loss_type, variant, tiny):
    model = tiny(1.0, variant, L=10, big=False, loss_type=loss_type)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randint(0, 11, (3, 10), generator=gen(0))
    loss, parts = model.loss(x, generator=gen(5))
    assert parts["sequential"] == 0
    # Replay the draws: t (antithetic), z_t, then the clean-first order.
    g = gen(5)
    t = eso.sample_t(3, "cpu", g)
    masked = torch.rand(3, 10, generator=g) < 1 - (1 - (1 - 1e-3) * t)[:, None]
    order = eso.diffusion_order(masked, torch.rand(3, 10, generator=g))
    # Independent MDLM NELBO: no sorting; the paper's attention mask in position space (eq. 24),
    # A[i, j] = sigma^-1(i) >= sigma^-1(j), and the weight -alpha'_t / (1 - alpha_t).
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(10).expand(3, -1))  # sigma^-1
    attn = rank[:, :, None] >= rank[:, None, :]  # (B, L, L)
    if variant == "A":  # clean tokens also see each other both ways (eq. 35-37)
        attn = attn | (~masked[:, :, None] & ~masked[:, None, :])
    attn = attn[:, None]  # (B, 1, L, L)
    z = torch.where(masked, model.mask_id, x)
    logits = model.lm_head(model.hidden(z, torch.arange(10).expand(3, -1), attn))
    ce = F.cross_entropy(logits.transpose(1, 2), x, reduction="none")  # (B, L)
    alpha_t = 1 - (1 - 1e-3) * t
    elbo_weight = (1 - 1e-3) / (1 - alpha_t)
    weight = elbo_weight if loss_type == "elbo" else torch.ones(3)
    expected = (ce * masked * weight[:, None]).sum() / 30
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    if loss_type == "low_var":  # validation asks for the elbo weighting whatever the training loss
        elbo, _ = model.loss(x, loss_type="elbo", generator=gen(5))
        torch.testing.assert_close(elbo, (ce * masked * elbo_weight[:, None]).sum() / 30)


def test_loss_splits_the_batch_and_sums_the_terms(tiny):
    model = tiny(0.25, L=12, big=False)
    x = torch.randint(0, 11, (4, 12), generator=gen(0))
    loss, parts = model.loss(x, generator=gen(3))
    # the first 2 rows estimate the diffusion term, the other 2 the sequential one
    d = model.draws(x, gen(3))
    assert d.t.shape == (2,) and d.masked.shape == d.sigma.shape == (4, 12)
    diff = model.diffusion_nll(x[:2], d.t, d.masked[:2], d.sigma[:2])
    seq = model.sequential_nll(x[2:], d.masked[2:], d.sigma[2:])
    torch.testing.assert_close(loss, diff + seq)
    torch.testing.assert_close(parts["diffusion"], diff)
    with pytest.raises(ValueError, match="cannot be split"):
        model.loss(x[:1])


def decoded_per_step(model, canvas, sigma, sizes, kv_cache):
    """The positions each step of decode fills, from its callback."""
    decoded = []
    masked = [canvas == model.mask_id]

    def record(tokens, nfe):
        now = tokens == model.mask_id
        decoded.append((masked[-1] & ~now)[0].nonzero().flatten().tolist())
        masked.append(now)

    _, nfe = model.decode(canvas, sigma, sizes, callback=record, kv_cache=kv_cache)
    return decoded, nfe


def test_sampling_example_from_the_paper(tiny):
    """L = 8, n_MDM = 5 in steps of (2, 1, 2), then the positions left in ascending order: 6
    forwards, cached and uncached alike."""
    model = tiny(0.5, L=8)
    canvas = torch.full((1, 8), model.mask_id)
    sigma = torch.tensor([[2, 0, 5, 3, 6, 1, 4, 7]])  # positions 3, 1, 6, 4, 7, then 2, 5, 8
    for kv_cache in (True, False):
        decoded, nfe = decoded_per_step(model, canvas, sigma, [2, 1, 2], kv_cache)
        assert nfe == 6 and decoded == [[0, 2], [5], [3, 6], [1], [4], [7]]


def generate_logging_logits(model, **kw):
    """(tokens, nfe, the head's output at every step) of model.generate(**kw)."""
    logits = []
    hook = model.lm_head.register_forward_hook(lambda m, i, out: logits.append(out.clone()))
    try:
        tokens, nfe = model.generate(**kw)
    finally:
        hook.remove()
    return tokens, nfe, logits


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "variant, alpha_0, with_canvas, order",
    list(itertools.product("BA", [0.0, 0.5, 1.0], [False, True], ["random", "block"])),
)
def test_cached_sampling_equals_the_uncached_reference(
    variant, alpha_0, with_canvas, order, device, tiny
):
    model = tiny(alpha_0, variant, device=device)
    canvas = None
    if with_canvas:  # a prompt and two infilling anchors
        canvas = prompt_canvas(model)
    runs = []
    for kv_cache in (True, False):
        kw = dict(num_samples=3, steps=7, canvas=canvas, block_order=order == "block")
        runs.append(
            generate_logging_logits(model, kv_cache=kv_cache, generator=gen(1, device), **kw)
        )
    (t1, n1, l1), (t2, n2, l2) = runs
    assert torch.equal(t1, t2) and n1 == n2 == len(l1) == len(l2)
    for a, b in zip(l1, l2):  # logits agree to float32 rounding
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    assert t1.shape == (3, 24) and (t1 < 11).all() and (t1 >= 0).all()
    assert len(set(map(tuple, t1.tolist()))) == 3  # rows differ: the draw is per sample
    if with_canvas:
        assert t1[:, [0, 1, 2, 13, 20]].tolist() == [[1, 2, 3, 4, 5]] * 3
        assert n1 <= 24 - 5  # the known tokens cost no forward of their own


def prompt_canvas(model, L=24):
    canvas = torch.full((1, L), model.mask_id)  # a prompt and two infilling anchors
    canvas[0, [0, 1, 2, 13, 20]] = torch.tensor([1, 2, 3, 4, 5])
    return canvas


def test_generate_is_reproducible_and_respects_sampling_alpha(tiny):
    model = tiny(0.5)
    a = model.generate(2, 4, generator=gen(7))
    b = model.generate(2, 4, generator=gen(7))
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert model.generate(1, 4, alpha_0=0.0, generator=gen(0))[1] == 24  # AR: a token per step
    assert model.generate(1, 4, alpha_0=1.0, generator=gen(0))[1] <= 4  # diffusion: <= T steps
    full = torch.randint(0, 11, (1, 24))
    assert model.generate(2, 4, canvas=full)[1] == 0  # nothing to decode


def test_generate_is_plan_then_decode(tiny):
    """generate draws its plan first; plan + decode with the same generator give its tokens."""
    model = tiny(0.5)
    tokens, nfe = model.generate(2, 5, alpha_0=0.5, generator=gen(4))
    g = gen(4)
    canvas, sigma, sizes = model.plan(2, 5, alpha_0=0.5, generator=g)
    again, nfe_again = model.decode(canvas, sigma, sizes, generator=g)
    assert torch.equal(tokens, again) and nfe == nfe_again == len(sizes) + 24 - sum(sizes)


def test_tiny_model_learns_structure_and_its_cached_samples_show_it():
    """Sequences are arithmetic progressions mod V from a random start: x_i = (a + i) mod V.

    Only the start is random, so the true NLL is log(V)/L = 0.13 nats per token, while a model
    that ignores context cannot beat the unigram entropy log V = 2.08. A loss under 0.35 can
    only come from using the clean tokens and their original positions (the offsets between
    them). In samples, a correct successor pair (x_{i+1} = x_i + 1) happens by chance 1/8 of
    the time; we ask for 75%."""
    torch.manual_seed(0)
    V = 8
    L = 16

    def batch(n, g=None):
        return (torch.randint(0, V, (n, 1), generator=g) + torch.arange(L)) % V

    cfg = eso.EsoConfig(block_size=L, vocab_size=V, n_layer=2, n_head=4, n_embd=64, alpha_0=0.5)
    model = eso.EsoLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for it in range(350):
        for group in opt.param_groups:
            group["lr"] = 3e-3 * min(1.0, (it + 1) / 50)
        loss, _ = model.loss(batch(64))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        val = sum(model.loss(batch(256, gen(s)), "elbo", gen(s))[0] for s in range(4)) / 4
    assert val < 0.35, val
    bounds = [model.likelihood(batch(256, gen(9)), k, gen(k)) for k in (1, 16)]
    assert bounds[1] < bounds[0]  # more orders: a tighter bound
    tokens, nfe = model.generate(128, 1000, generator=gen(1))  # about one token per step
    successor = ((tokens[:, 1:] - tokens[:, :-1]) % V == 1).float().mean()
    assert successor > 0.75, successor


def test_iw_bound_with_enough_orders_is_the_exact_any_order_likelihood(tiny):
    """At alpha_0 = 1 and L = 4, p(x) = mean over all 24 orders of prod_l p(x_sigma(l) |
    x_sigma(<l))."""
    model = tiny(1.0, L=4, V=5)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randint(0, 5, (2, 4), generator=gen(0))
    log_p = []
    for perm in itertools.permutations(range(4)):  # all orders, enumerated
        order = torch.tensor(perm).expand(2, 4)
        lp = 0.0
        for i in range(4):  # condition on the true tokens decoded before, via a causal forward
            idx = torch.cat([x.gather(1, order[:, :i]), torch.full((2, 1), model.mask_id)], 1)
            logits = model.lm_head(model.hidden(idx, order[:, : i + 1]))[:, -1]
            target = x.gather(1, order[:, i : i + 1])
            lp = lp + logits.log_softmax(-1).gather(1, target).squeeze(1)
        log_p.append(lp)
    exact = -(torch.logsumexp(torch.stack(log_p), 0) - math.log(24)).mean() / 4
    # K orders estimate p(x) without bias, so -log of it is an upper bound in expectation that
    # converges to the exact value; one order at a time is looser on average (Jensen).
    assert abs(model.likelihood(x, 3000, generator=gen(1)) - exact) < 0.01
    single = torch.stack([model.likelihood(x, 1, generator=gen(s)) for s in range(30)]).mean()
    assert single > exact + 0.01


def test_likelihood_rejects_variant_a_except_at_alpha0_zero_where_a_is_b(tiny):
    with pytest.raises(ValueError, match="variant B"):
        tiny(1.0, "A").likelihood(torch.zeros(1, 24, dtype=torch.long), 2)
    x = torch.randint(0, 11, (2, 24), generator=gen(0))  # at alpha_0 = 0 no clean block: A = B
    torch.testing.assert_close(tiny(0.0, "A").likelihood(x, 1), tiny(0.0, "B").likelihood(x, 1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["B", "A"])
@pytest.mark.parametrize("alpha_0", [0.0, 0.25, 1.0])
def test_fast_sequential_term_equals_the_dense_2l_reference(
    variant, alpha_0, device, monkeypatch, tiny
):
    """The fast path (no z slots before n_skip, blocks that the attention mask rules out skipped)
    gives the dense [z_0 ; x] pass's loss and gradients, and the same likelihood bound, to
    float32 rounding."""
    monkeypatch.setattr(eso.SequentialPattern, "GROUP", 5)  # several groups, a ragged last one
    model = tiny(alpha_0, variant, L=23, big=False, seed=1)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    model.to(device)
    x = torch.randint(0, 11, (4, 23), generator=gen(0)).to(device)
    masked = torch.rand(4, 23, generator=gen(1)) < 1 - alpha_0
    # rows with different clean counts: n_skip follows the smallest
    masked[1] = masked[1] & (torch.arange(23) > 9)
    order = eso.sequential_order(masked, torch.rand(4, 23, generator=gen(2)))
    masked = masked.to(device)
    order = order.to(device)
    runs = []
    for dense in (True, False):
        model.zero_grad()
        total = model.sequential_nll(x, masked, order, dense)
        total = total + model.loss(x, generator=gen(3, device), dense=dense)[0]
        total.backward()
        runs.append((total.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    if variant == "B":
        bounds = [model.likelihood(x, 3, gen(4, device), dense=dense) for dense in (True, False)]
        torch.testing.assert_close(bounds[0], bounds[1], rtol=1e-5, atol=1e-6)


def test_sequential_pattern_skips_what_the_2l_mask_rules_out(monkeypatch):
    """The groups' attention masks, laid back into [z ; x] coordinates, are exactly
    sequential_mask's z rows >= n_skip."""
    monkeypatch.setattr(eso.SequentialPattern, "GROUP", 3)
    L = 11
    n_skip = 3
    pattern = eso.SequentialPattern(L, n_skip, None, "cpu")
    rows = []
    z = 0
    for size, mask in zip(pattern.z_sizes, pattern.group_attn_masks):
        seen_x = mask[:, :-size]  # (size, end): x slots < end
        full = torch.zeros(size, 2 * L, dtype=torch.bool)
        full[:, L : L + seen_x.size(1)] = seen_x
        full[:, n_skip + z : n_skip + z + size] = mask[:, -size:]  # own keys: the diagonal
        rows.append(full)
        z += size
    dense = eso.sequential_mask(eso.prefix_lm_mask(torch.arange(L), L))[0, 0, n_skip:L]
    assert torch.equal(torch.cat(rows), dense)
    assert sum(pattern.z_sizes) == L - n_skip and sum(pattern.x_sizes) == L


def test_sequential_fast_path_needs_the_clean_tokens_first(monkeypatch, tiny):
    """The fast path skips the first n_skip slots by count: an order that puts a mask among them
    (which sequential_order never does) gives another result than the dense path, so the
    precondition is real."""
    monkeypatch.setattr(eso.SequentialPattern, "GROUP", 2)
    model = tiny(0.5, L=12, big=False)
    x = torch.randint(0, 11, (2, 12), generator=gen(0))
    masked = torch.tensor([[0, 0, 0, 0, 1, 1] * 2] * 2, dtype=torch.bool)  # 8 clean: n_skip = 8
    good = eso.sequential_order(masked, torch.rand(2, 12, generator=gen(1)))
    bad = good.flip(1)  # masks first
    for sigma, same in ((good, True), (bad, False)):
        fast = model.sequential_nll(x, masked, sigma, False)
        dense = model.sequential_nll(x, masked, sigma, True)
        assert torch.allclose(fast, dense, atol=1e-6) == same


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["B", "A"])
def test_training_and_evaluation_compile_once_per_shape(variant, device, monkeypatch, tiny):
    """torch.compile (the eager backend: Dynamo's tracing and guards, no code generation) over
    30 training steps and 3 evaluations on fresh batches, the draws made outside as train.py
    makes them: one graph per (mode, n_skip) and no graph break."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(eso.SequentialPattern, "GROUP", 4)
    torch._dynamo.reset()
    counters.clear()
    model = tiny(0.5, variant, big=False, device=device)
    fast = torch.compile(model, backend="eager", dynamic=False, fullgraph=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    shapes = set()
    for step in range(30):
        x = torch.randint(0, 11, (4, 24), generator=gen(step)).to(device)
        draws = model.draws(x, gen(100 + step, device))
        model.train()
        loss, _ = fast(x, draws)
        loss.backward()
        opt.step()
        opt.zero_grad()
        shapes.add(("train", draws.n_skip))
        if step % 10 == 9:
            model.eval()
            with torch.no_grad():
                draws = model.draws(x, gen(0, device))
                assert torch.isfinite(fast(x, draws, "elbo")[0])
            shapes.add(("eval", draws.n_skip))
    assert len({n for _, n in shapes}) > 1  # n_skip took several values
    assert counters["stats"]["unique_graphs"] == len(shapes) and not counters["graph_break"]
    torch._dynamo.reset()


def logged_decode(model, sampler, forced=None, **kw):
    """sampler.generate(**kw) -> (tokens, nfe, the logits of every step, the tokens drawn);
    forced: the tokens to draw at each step instead, so that two runs see the same canvases."""
    logits = []
    drawn = []
    real = eso.sample_tokens

    def spy(step_logits, *args, **kwargs):
        logits.append(step_logits.clone())
        if forced is None:
            drawn.append(real(step_logits, *args, **kwargs))
        else:
            drawn.append(forced[len(drawn)])
        return drawn[-1]

    with pytest.MonkeyPatch.context() as m:
        m.setattr(eso, "sample_tokens", spy)
        tokens, nfe = sampler.generate(**kw)
    return tokens, nfe, logits, drawn


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "variant, alpha_0, with_canvas", list(itertools.product("BA", [0.0, 0.5, 1.0], [False, True]))
)
def test_compiled_step_gives_the_eager_steps_logits(
    variant, alpha_0, with_canvas, device, dynamo_eager, tiny
):
    """A whole sampling run of the compiled sampler (chunks widened to bucket sizes, the keys
    attended rounded up) against the eager step fed the same tokens: the logits agree at every
    step."""
    model = tiny(alpha_0, variant, device=device)
    canvas = prompt_canvas(model) if with_canvas else None
    kw = dict(num_samples=3, steps=7, canvas=canvas)
    sampler = compiled.CompiledSampler(model)
    tokens, nfe, fast, drawn = logged_decode(model, sampler, generator=gen(1, device), **kw)
    again, nfe_eager, slow, _ = logged_decode(
        model, model, forced=drawn, generator=gen(1, device), **kw
    )
    assert nfe == nfe_eager == len(fast) == len(slow) and torch.equal(tokens, again)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def test_compiled_sampling_compiles_a_handful_of_graphs_once(dynamo_eager, tiny, monkeypatch):
    """One graph per chunk size (two at most: a first trace that attends over every slot
    specializes), whatever the number of keys attended; a second run compiles nothing; and
    nothing process-wide is left behind (Dynamo's recompile limit is as it was)."""
    from torch._dynamo.utils import counters

    windows = []  # the (tokens fed, keys attended) of every compiled step
    real_window = compiled.static_window

    def recorded_window(lo, hi, L):
        wide_lo, wide_hi, n_keys = real_window(lo, hi, L)
        windows.append((wide_hi - wide_lo, n_keys))
        return wide_lo, wide_hi, n_keys

    monkeypatch.setattr(compiled, "static_window", recorded_window)
    counters.clear()
    limit = torch._dynamo.config.recompile_limit
    model = tiny(0.5, L=64)
    sampler = compiled.CompiledSampler(model)
    sampler.generate(2, 8, generator=gen(0))
    sizes = {fed for fed, _ in windows}
    graphs = counters["stats"]["unique_graphs"]
    assert 0 < graphs <= 2 * len(sizes) <= 2 * 8 and not counters["graph_break"]
    sampler.generate(2, 8, generator=gen(0))
    assert counters["stats"]["unique_graphs"] == graphs
    sampler.generate(2, 10**6, alpha_0=0.0, generator=gen(1))  # one token per step
    new_sizes = {fed for fed, _ in windows} - sizes
    assert counters["stats"]["unique_graphs"] - graphs <= 2 * len(new_sizes)
    assert torch._dynamo.config.recompile_limit == limit


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_step_with_inductor_writes_the_cache_in_place(device, tiny):
    """The real compiler (seconds of C++ on a CPU; CUDA graphs on CUDA): its kernels write the
    KV cache in place and give the eager step's logits."""
    torch._dynamo.reset()
    model = tiny(0.5, L=16, device=device)
    kw = dict(num_samples=2, steps=4, canvas=prompt_canvas(model)[:, :16])
    sampler = compiled.CompiledSampler(model)
    tokens, nfe, fast, drawn = logged_decode(model, sampler, generator=gen(2, device), **kw)
    _, _, slow, _ = logged_decode(model, model, forced=drawn, generator=gen(2, device), **kw)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
    torch._dynamo.reset()


def test_static_windows_cover_the_chunk_in_a_few_sizes():
    """Every chunk [lo, hi) fits its widened window, whose size is one of 1, 2, 3, 4, 6, 8, ...
    (or L), and the keys attended are a multiple of KEY_BLOCK (or L)."""
    L = 300
    sizes = set()
    for lo, hi in itertools.product(range(0, L, 7), range(1, L + 1, 5)):
        if hi <= lo:
            continue
        wide_lo, wide_hi, n_keys = compiled.static_window(lo, hi, L)
        assert 0 <= wide_lo <= lo and hi <= wide_hi <= L
        assert n_keys >= wide_hi and (n_keys % compiled.KEY_BLOCK == 0 or n_keys == L)
        sizes.add(wide_hi - wide_lo)
    assert len(sizes) <= 20


@pytest.mark.parametrize("variant", ["B", "A"])
def test_every_tensor_is_made_on_the_models_device(variant, tiny, made_without_device):
    """generate (cache on and off, random and block order, a prompt), a training step with
    backward, validation and the likelihood create nothing on torch's default device."""
    model = tiny(0.5, variant, big=False)
    x = torch.randint(0, 11, (4, 24), generator=gen(0))
    canvas = torch.full((1, 24), model.mask_id)
    canvas[0, :3] = torch.tensor([1, 2, 3])
    torch.set_default_device("meta")
    try:
        with made_without_device() as spy:
            for kv_cache, block_order in itertools.product((True, False), (False, True)):
                model.generate(
                    2,
                    5,
                    canvas=canvas,
                    block_order=block_order,
                    kv_cache=kv_cache,
                    generator=gen(1),
                )
            model.train()
            model.loss(x, generator=gen(2))[0].backward()
            model.eval()
            with torch.no_grad():
                model.loss(x, "elbo", gen(3))
                if variant == "B":
                    model.likelihood(x, 2, gen(4))
    finally:
        torch.set_default_device(None)
    assert spy.calls == []


@pytest.mark.parametrize("device", [d for d in DEVICES if d != "mps"])
def test_bf16_autocast_trains_evaluates_and_samples_from_float32_logits(
    device, dataset, tmp_path, run, monkeypatch, dynamo_eager, tiny, tiny_flags
):
    """bf16 autocast (the CPU's stands in for CUDA's): finite losses, valid tokens from the eager
    and the compiled cached step, and the logits that reach sample_tokens and the likelihood are
    float32."""
    model = tiny(0.5, big=False, device=device)
    x = torch.randint(0, 11, (4, 24), generator=gen(0)).to(device)
    seen = []
    real = eso.sample_tokens

    def spy(logits, *args, **kwargs):
        seen.append(logits.dtype)
        return real(logits, *args, **kwargs)

    monkeypatch.setattr(eso, "sample_tokens", spy)
    positions = torch.arange(24, device=device).expand(4, -1)
    with torch.autocast(device, dtype=torch.bfloat16):
        loss, _ = model.loss(x, generator=gen(1, device))
        loss.backward()
        model.eval()
        with torch.no_grad():
            val = model.loss(x, "elbo", gen(2, device))[0]
            assert model.logits(model.hidden(x, positions)).dtype == torch.float32
            bound = model.likelihood(x, 2, gen(3, device))
        samplers = [model, compiled.CompiledSampler(model)]
        runs = [s.generate(3, 6, generator=gen(4, device)) for s in samplers]
    assert all(torch.isfinite(v) for v in (loss, val, bound))
    assert set(seen) == {torch.float32} and len(seen) == sum(nfe for _, nfe in runs)
    for tokens, _ in runs:
        assert tokens.shape == (3, 24) and (tokens >= 0).all() and (tokens < 11).all()
    code, out, err = run(
        train,
        f"--dataset={dataset}",
        f"--out_dir={tmp_path}",
        "--max_iters=2",
        "--eval_interval=2",
        "--dtype=bfloat16",
        f"--device={device}",
        *tiny_flags,
    )
    assert code == 0 and "bfloat16" in out, err


class NoFloat64(TorchFunctionMode):
    """Fails on any torch operation that makes a float64 tensor (what MPS cannot do)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            is_double = isinstance(t, torch.Tensor) and t.dtype == torch.float64
            assert not is_double, f"{func} made a float64 tensor"
        return out


def test_without_float64_sampling_and_validation_need_none(dataset, monkeypatch, tiny):
    """The MPS path, forced on the CPU: no float64 tensor anywhere, cached = uncached still, and
    validation gives the float64 path's numbers."""
    model = tiny(0.5)
    expected = [model.generate(2, 5, kv_cache=k, generator=gen(4))[0] for k in (True, False)]
    val = common.load_dataset(dataset, 32)[1] % 11
    ctx = cli.precision("cpu")[1]
    c = SimpleNamespace(eval_iters=2, batch_size=4)
    wide = train.estimate_loss(model, model, val, c, ctx, 0, 1)
    monkeypatch.setattr(eso, "has_float64", lambda device: False)
    with NoFloat64():
        tokens = [model.generate(2, 5, kv_cache=k, generator=gen(4))[0] for k in (True, False)]
        narrow = train.estimate_loss(model, model, val, c, ctx, 0, 1)
        with pytest.raises(AssertionError, match="float64"):  # the guard itself works
            torch.zeros(2, dtype=torch.float64)
    assert torch.equal(tokens[0], tokens[1])
    assert not torch.equal(tokens[0], expected[0])  # another law, the same draws
    assert narrow == pytest.approx(wide, rel=1e-6)


def test_interrupted_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    checkpoint.save(path, {"version": 1})

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(checkpoint.CheckpointError, match="previous checkpoint is intact"):
        checkpoint.save(path, {"version": 2})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def bomb(path, n, hostile, count=1):
    """A small checkpoint whose unpickling would allocate count x n bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"model": {}, "config": {}, "tokenizer": "bytes", "iter_num": 0}
    state["junk"] = [hostile.Allocates(n) for _ in range(count)]
    torch.save(state, path)
    return path


def test_a_memory_bomb_is_refused_before_any_allocation(tmp_path, run, hostile):
    """A checkpoint that builds bytearray(10**11), or twenty bytearray(10**9), is refused by
    sample.py --init_from in one line, exit status 2, before anything is unpickled; peak memory
    stays where it was."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for path in (
        bomb(tmp_path / "one.pt", 10**11, hostile),
        bomb(tmp_path / "many.pt", 10**9, hostile, 20),
    ):
        assert path.stat().st_size < 4096
        code, _, err = run(sample, f"--init_from={path}")
        assert code == 2 and "names builtins.bytearray" in err and err.count("\n") == 1, err
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200_000


def test_a_tensor_bigger_than_its_data_and_a_config_bigger_than_its_weights_are_refused(
    tmp_path,
):
    """A stride-0 view that claims 10^12 elements of 4 bytes of data, and a config that names a
    model far larger than the weights the file holds, are refused before anything is
    materialised or built."""
    huge = torch.zeros(1).expand(10**12)
    torch.save(
        {"model": {"w": huge}, "config": {}, "tokenizer": "bytes", "iter_num": 0}, tmp_path / "a.pt"
    )
    with pytest.raises(checkpoint.CheckpointError, match="claims more data than the file holds"):
        checkpoint.load(tmp_path / "a.pt")
    config = {"n_embd": 2**20, "n_head": 1, "vocab_size": 2**20}
    torch.save(
        {"model": {}, "config": config, "tokenizer": "bytes", "iter_num": 0}, tmp_path / "b.pt"
    )
    with pytest.raises(checkpoint.CheckpointError, match="do not fit its config"):
        checkpoint.load(tmp_path / "b.pt")


def test_checkpoints_that_would_run_code_are_refused(tmp_path, run, hostile):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil" / "ckpt.pt"
    path.parent.mkdir()
    torch.save(
        {"model": hostile.Exploit(marker), "config": {}, "tokenizer": "bytes", "iter_num": 0}, path
    )
    with pytest.raises(checkpoint.CheckpointError, match="posix.system"):
        checkpoint.load(path)
    code, _, err = run(sample, f"--out_dir={path.parent}")
    assert code == 2 and "nothing in it was run" in err
    assert not marker.exists()  # the code did not run...
    torch.load(path, weights_only=False)  # ...and it would have, with a plain unpickler
    assert marker.exists()


def test_bad_checkpoints_get_one_clear_line(dataset, trained, tmp_path, run):
    out, _ = trained
    good = (out / "ckpt.pt").read_bytes()
    cases = {
        "truncated": good[: len(good) // 2],
        "random": os.urandom(4096),
        "not_ours": None,
        "bad_config": None,
        "bad_weights": None,
        "folder": None,
    }
    expected = {
        "truncated": "truncated or corrupt",
        "random": "truncated or corrupt",
        "not_ours": "not an Eso-LM",
        "bad_config": "incompatible model config",
        "bad_weights": "do not fit",
        "folder": "is a folder",
    }
    for case, blob in cases.items():
        d = tmp_path / case
        d.mkdir()
        if blob is not None:
            (d / "ckpt.pt").write_bytes(blob)
        elif case == "folder":
            (d / "ckpt.pt").mkdir()
        else:
            ckpt = torch.load(out / "ckpt.pt", weights_only=True)
            if case == "not_ours":
                ckpt = {"weights": ckpt["model"]}
            elif case == "bad_config":
                ckpt["config"]["alpha_0"] = 7.0
            else:
                ckpt["config"]["n_embd"] = 64
                ckpt["config"]["n_head"] = 2
            torch.save(ckpt, d / "ckpt.pt")
        code, _, err = run(sample, f"--out_dir={d}")
        assert code == 2 and len(err.strip().splitlines()) == 1, (case, err)
        assert expected[case] in err, err
    code, _, err = run(sample, f"--out_dir={tmp_path / 'nothing'}")
    assert code == 2 and "no checkpoint at" in err
    code, _, err = run(
        train, f"--out_dir={out}", "--init_from=resume", "--n_layer=3", f"--dataset={dataset}"
    )
    assert code == 2 and "conflicts with the checkpoint" in err


def test_corrupt_checkpoints_are_named_without_a_sentence_cut_mid_word(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {}, "config": {}, "tokenizer": "bytes", "iter_num": 0}, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\0" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(path)
    message = str(e.value)
    assert message.startswith(f"{path} is not a readable checkpoint") and "\n" not in message
    assert "https://pytorch.org/docs/stable/gen" not in message and "there is a high" not in message


def test_prepare_writes_tokens_that_decode_back_to_the_text(data_dir, tmp_path):
    src = tmp_path / "a.txt"
    paragraphs = [
        f"Paragraph {i}: the quick brown fox jumps over the lazy dog, {'é' * (i % 3)} {i * i}."
        for i in range(400)
    ]
    src.write_text("\n\n".join(paragraphs))
    out, meta = prepare.prepare(["--input", str(src), "--name", "decode", "--val_fraction=0.1"])
    enc = common.get_tokenizer("bytes")
    train_ids, val_ids, meta2 = common.load_dataset("decode", 32)
    assert meta2 == meta
    assert meta["train_tokens"] == len(train_ids) and meta["val_tokens"] == len(val_ids)
    assert meta["documents"] == 400 and meta["vocab_size"] == 256 and meta["tokenizer"] == "bytes"
    val_docs = enc.decode(val_ids.tolist()).split("\n\n")[:-1]
    assert val_docs == paragraphs[9::10]  # every 10th paragraph, deterministically
    train_docs = enc.decode(train_ids.tolist()).split("\n\n")[:-1]
    assert train_docs == [p for i, p in enumerate(paragraphs) if i % 10 != 9]
    with pytest.raises(common.PrepareError, match="--overwrite"):
        prepare.prepare(["--input", str(src), "--name", "decode"])
    before = (out / "train.bin").read_bytes()
    src.write_text("tiny")
    with pytest.raises(common.PrepareError, match="too short"):
        prepare.prepare(["--input", str(src), "--name", "decode", "--overwrite"])
    assert (out / "train.bin").read_bytes() == before and (out / "meta.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    with pytest.raises(common.PrepareError, match="fewer than one training sequence"):
        common.load_dataset("decode", 10**6)


@pytest.mark.parametrize(
    "case, msg",
    [
        ("missing", "no such file"),
        ("empty", "is empty"),
        ("latin1", "not UTF-8"),
        ("folder", "is a folder"),
        ("short", "too short"),
        ("name", "must be letters"),
        ("noname", "needs --name"),
    ],
)
def test_prepare_rejects_bad_input_with_one_line(data_dir, tmp_path, case, msg, prepare_cli):
    f = tmp_path / "in.txt"
    contents = {"empty": b"  \n", "latin1": "caf\xe9".encode("latin1"), "short": b"hi\n\nyou"}
    f.write_bytes(contents.get(case, b"x"))
    target = {"missing": tmp_path / "nope.txt", "folder": tmp_path}.get(case, f)
    name = {"name": "../escape", "noname": None}.get(case, f"bad-{case}")
    args = ["--input", str(target)]
    if name:
        args += ["--name", name]
    prepare_cli.refuses(args, msg)
    assert not (data_dir / f"bad-{case}").exists()  # nothing half-written


def test_prepare_never_writes_through_a_symlink(data_dir, tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("A paragraph of plain English text, long enough to be kept.\n\n" * 200)
    target = tmp_path / "elsewhere"
    target.mkdir()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "link").symlink_to(target, target_is_directory=True)
    with pytest.raises(common.PrepareError, match="symbolic link"):
        prepare.prepare(["--input", str(src), "--name", "link"])
    assert list(target.iterdir()) == []


def test_prepare_gpt2_offline_says_how_to_fix_it(monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(common.PrepareError, match="TIKTOKEN_CACHE_DIR") as e:
        common.get_tokenizer("gpt2")
    assert "--tokenizer bytes" in str(e.value)


def test_prepare_interrupted_says_so(data_dir, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "prepare", interrupted)
    with pytest.raises(SystemExit) as e:
        prepare.main(["--name", "never"])
    assert e.value.code == 130
    assert capsys.readouterr().err == "data/prepare.py: error: interrupted; nothing was written\n"


def test_data_dir_comes_from_the_environment_and_the_flag(
    tmp_path, data_dir, monkeypatch, prepare_cli
):
    assert common.data_root() == data_dir
    assert common.dataset_dir("x") == data_dir / "x"
    monkeypatch.delenv("ESO_DATA_DIR")
    assert common.data_root() == Path(common.__file__).resolve().parent
    src = tmp_path / "a.txt"
    src.write_text("\n\n".join(f"Paragraph {i} of some words, enough of them." for i in range(200)))
    elsewhere = tmp_path / "elsewhere"
    code, out, err = prepare_cli.run(
        ["--input", str(src), "--name", "mine", f"--data_dir={elsewhere}"]
    )
    assert code == 0, err
    assert common.is_prepared("mine", elsewhere)
    assert not common.is_prepared("mine")
    assert common.load_dataset("mine", 32, data_dir=elsewhere)[2]["documents"] == 200


def bytes_as_tokens(text):
    """The bytes of a .bin file that holds text in the bytes tokenizer: uint16 little-endian."""
    return np.frombuffer(text.encode(), dtype=np.uint8).astype("<u2").tobytes()


def test_local_text_keeps_its_every_kth_split_byte_for_byte(data_dir, tmp_path):
    paragraphs = [
        f"Paragraph {i}: the quick brown fox, {'é' * (i % 3)} {i * i}." for i in range(300)
    ]
    src = tmp_path / "a.txt"
    src.write_text("\n\n".join(paragraphs))
    out, meta = prepare.prepare(["--input", str(src), "--name", "mine", "--val_fraction=0.1"])
    val = "".join(p + "\n\n" for i, p in enumerate(paragraphs) if i % 10 == 9)
    train = "".join(p + "\n\n" for i, p in enumerate(paragraphs) if i % 10 != 9)
    # bytes tokenizer: each UTF-8 byte is a uint16 id
    assert (out / "val.bin").read_bytes() == bytes_as_tokens(val)
    assert (out / "train.bin").read_bytes() == bytes_as_tokens(train)
    assert "windows" not in meta
    assert meta["eos"] is None
    assert meta["tokenizer"] == "bytes"
    assert meta["documents"] == 300


def log_of(out_dir):
    lines = (Path(out_dir) / "log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def train_losses(out_dir):
    return {r["iter"]: r["loss"] for r in log_of(out_dir) if "loss" in r}


def max_weight_difference(a, b):
    a = torch.load(Path(a) / "ckpt.pt", weights_only=True)["model"]
    b = torch.load(Path(b) / "ckpt.pt", weights_only=True)["model"]
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_the_core_stands_alone_and_nothing_stands_on_a_script():
    """The house: the scripts stand on the core's modules; no Python file (tests aside) imports
    a script, patches eso or edits sys.path with insert or append; no core file imports a ring
    (paper/, results/); eso.py keeps no module-level mutable state and imports torch alone."""
    scripts = "train|sample|bench|evaluate"
    files = sorted(p for p in ROOT.rglob("*.py") if "src" not in p.relative_to(ROOT).parts)
    assert {ROOT / "eso.py", ROOT / "train.py", ROOT / "data" / "common.py"} <= set(files)
    for path in files:
        text = path.read_text()
        name = path.relative_to(ROOT)
        if not path.name.startswith("test_") and path.name != "conftest.py":
            imports = re.search(rf"^\s*(from|import) ({scripts})\b", text, re.M)
            rings = f"{scripts}|likelihood|convert|frontier|train_bd3lm"
            if not imports:
                imports = re.search(rf"^\s*from paper import .*\b({rings})\b", text, re.M)
            assert not imports, name
            assert not re.search(r"\beso\.\w+ = ", text), name  # no patching of eso
        assert not re.search(r"sys\.path\.(insert|append)", text), name
        in_ring = name.parts[0] in ("paper", "results")
        if not in_ring and not path.name.startswith("test_"):
            assert not re.search(r"^\s*(from|import) (paper|results)\b", text, re.M), name
    source = (ROOT / "eso.py").read_text()
    imports = set(re.findall(r"^(?:import|from) (\w+)", source, re.M))
    assert imports <= {"itertools", "math", "numbers", "dataclasses", "typing", "torch"}
    assert not re.search(r"^_?[A-Z_]+ = (\{|\[|dict\(|weakref)", source, re.M)
    assert "_dynamo.config" not in source and "lambda" not in source


def test_a_training_run_imports_the_core_alone(py, dataset, tiny_flags, tmp_path):
    """python train.py, on a prepared dataset, loads the core's modules and no others of the
    project: no ring, no recipe and no dataset writer."""
    report = (
        "import atexit, json, runpy, sys\n"
        "atexit.register(lambda: print(json.dumps(sorted(sys.modules))))\n"
        "sys.argv = ['train.py', *sys.argv[1:]]\n"
        "runpy.run_path('train.py', run_name='__main__')\n"
    )
    flags = [f"--dataset={dataset}", "--max_iters=0", f"--out_dir={tmp_path}", *tiny_flags]
    r = py("-c", report, *flags)
    assert r.returncode == 0, r.stderr
    loaded = set(json.loads(r.stdout.strip().splitlines()[-1]))
    ours = {p.stem for p in ROOT.glob("*.py")} | {"data", "paper", "results"}
    project = {m for m in loaded if m.split(".")[0] in ours}
    assert project == {"checkpoint", "cli", "eso", "data", "data.common", "data.batches"}


def test_cli_errors_are_one_line_and_help_lists_every_default(run, capsys, py):
    for args, msg in [
        (["--max_iter=3"], "did you mean --max_iters"),
        (["--max_iters=1.5"], "integer"),
        (["--learning_rate=fast"], "a number"),
        (["--alpha_0=1.5"], "--alpha_0 must lie in [0, 1]"),
        (["--variant=C"], "one of"),
        (["--compile=maybe"], "True or False"),
        (["--batch_size=0"], "--batch_size"),
        (["--dataset=never-prepared"], "never prepared"),
        (["stray"], "unexpected argument"),
        (["--device=gpu"], "--device"),
        (["--dtype=float16", "--device=cpu"], "does not run on cpu"),
    ]:
        code, _, err = run(train, *args)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, (args, err)
    code, _, err = run(train, "--eval_only=True")
    assert code == 2 and "python -m paper.likelihood" in err
    argv = ["--learning_rate=1", "--compile=False", "--batch_split", "0.25", "--bias"]
    c, given = cli.parse(train.CONFIG, argv, "")
    assert c.learning_rate == 1.0 and c.compile is False and c.batch_split == 0.25
    assert c.bias is True and given == {"learning_rate", "compile", "batch_split", "bias"}
    for module in (train, sample):
        with pytest.raises(SystemExit) as e:
            cli.parse(module.CONFIG, ["--help"], module.__doc__)
        out = capsys.readouterr().out
        assert e.value.code == 0 and out.startswith(module.__doc__.strip())
        for key, (default, note, *_) in module.CONFIG.items():
            assert f"--{key}={default!r}" in out and note in out, (module, key)
    r = py("train.py", "--help")  # and from a shell
    assert r.returncode == 0 and "--alpha_0=0.0625" in r.stdout


def test_a_preset_file_is_flags_where_it_stands(tmp_path, run):
    """@FILE reads one flag a line (blank lines and comments skipped) where it stands, so that
    flags after it win; a preset that cannot be read is one line."""
    preset = tmp_path / "preset.txt"
    preset.write_text("# a comment\n--n_layer=12\n\n--alpha_0=0.25\n")
    c, given = cli.parse(train.CONFIG, [f"@{preset}", "--alpha_0=1"], "")
    assert c.n_layer == 12 and c.alpha_0 == 1.0 and given == {"n_layer", "alpha_0"}
    c, _ = cli.parse(train.CONFIG, ["--alpha_0=1", f"@{preset}"], "")
    assert c.alpha_0 == 0.25
    code, _, err = run(train, f"@{tmp_path / 'none.txt'}")
    assert code == 2 and "cannot read the preset" in err and err.count("\n") == 1
    paper_presets = sorted((ROOT / "paper" / "presets").glob("*.txt"))
    for path in paper_presets:  # the paper's presets parse (where the ring is there)
        for module in (train, sample):
            try:
                cli.parse(module.CONFIG, [f"@{path}"], "")
            except cli.UserError:
                continue
            break
        else:
            raise AssertionError(f"{path} is no preset of train.py or sample.py")


def test_windowed_data_is_drawn_as_whole_windows_each_epoch_shuffled():
    """The authors' layout: every window once per epoch, in a fresh order each epoch, a function
    of (seed, iteration) only."""
    batches = train.Batches(n_tokens=10 * 8, block_size=8, global_batch=4, seed=1, windows=True)
    epoch = torch.cat([batches.offsets(it) for it in range(5)])  # 20 windows = 2 epochs
    assert sorted(epoch[:10].tolist()) == sorted(epoch[10:].tolist()) == list(range(0, 80, 8))
    assert not torch.equal(epoch[:10], epoch[10:])
    again = train.Batches(n_tokens=80, block_size=8, global_batch=4, seed=1, windows=True)
    assert torch.equal(again.offsets(3), batches.offsets(3))


def test_learning_rate_schedule():
    c = SimpleNamespace(
        learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=110, lr_schedule="cosine"
    )
    lr = [train.get_lr(it, c) for it in range(200)]
    assert lr[0] == pytest.approx(1 / 11) and lr[9] == pytest.approx(10 / 11)  # linear warmup
    assert lr[10] == pytest.approx(1.0) and lr[60] == pytest.approx(0.55)  # peak, half way
    assert lr[110] == pytest.approx(0.1) and lr[199] == pytest.approx(0.1)  # min_lr from then on
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))
    c.lr_schedule = "constant"
    assert train.get_lr(50, c) == 1.0


def test_ema_update_rule(tiny):
    ema = tiny(seed=0)
    model = tiny(seed=1)
    before = [p.clone() for p in ema.parameters()]
    train.ema_update(ema, model, 0.9, it=100)  # decay min(0.9, 101 / 110) = 0.9
    for p0, p_ema, p in zip(before, ema.parameters(), model.parameters()):
        torch.testing.assert_close(p_ema, 0.9 * p0 + 0.1 * p)
    before = [p.clone() for p in ema.parameters()]
    train.ema_update(ema, model, 0.9999, it=0)  # warmup: decay (1 + 0) / (10 + 0) = 0.1
    for p0, p_ema, p in zip(before, ema.parameters(), model.parameters()):
        torch.testing.assert_close(p_ema, 0.1 * p0 + 0.9 * p)


def test_train_then_sample_and_a_finished_run_resumed(trained, run):
    out, _ = trained
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)  # tensors and plain values only
    assert ckpt["iter_num"] == 6 and ckpt["tokenizer"] == "bytes"
    assert ckpt["config"]["block_size"] == 32
    assert not any(k.startswith("_orig_mod") for k in ckpt["model"])
    vals = [rec["val"]["nelbo"] for rec in log_of(out) if "val" in rec]
    assert len(vals) == 2 and all(math.isfinite(v) for v in vals)
    code, stdout, err = run(sample, f"--out_dir={out}", "--num_samples=2", "--steps=8")
    assert code == 0 and "NFE" in stdout and "tokens/s" in stdout, err
    assert stdout.count("-" * 60) == 2 and "2 samples x 32 tokens" in stdout
    code, stdout, _ = run(sample, f"--out_dir={out}", "--num_samples=1", "--prompt=The for")
    assert code == 0 and stdout.startswith("The for") and "1 sample x 32 tokens" in stdout
    code, stdout, _ = run(train, f"--out_dir={out}", "--init_from=resume", "--max_iters=6")
    assert code == 0 and "has already finished its 6 iterations" in stdout
    assert "Its validation NELBO is" in stdout  # and evaluates it


def test_sample_spans_steps_and_files(trained, run, tmp_path):
    out, _ = trained
    code, stdout, err = run(
        sample,
        f"--out_dir={out}",
        "--num_samples=1",
        "--steps=4",
        "--alpha_0=0.5",
        "--infill=Hello {{5}} world{{3}}!",
        "--show_steps=True",
    )
    assert code == 0, err
    assert (
        "--- step 0: the canvas (known tokens; the rest masked) ---\nHello ░░░░░ world░░░!"
        in stdout
    )
    assert "=== the sequential phase begins" in stdout and ": sequential, 1 token ---" in stdout
    assert re.search(r"--- step 1: diffusion, \d+ tokens? ---", stdout)
    final = stdout.split(": sequential, 1 token ---\n")[-1].split("\n")[0]  # the last canvas
    assert final.startswith("Hello ") and " world" in final and "░" not in final
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("The for\n\n")
    code, stdout, _ = run(sample, f"--out_dir={out}", "--num_samples=1", f"--prompt=FILE:{prompt}")
    assert code == 0 and stdout.startswith("The for") and not stdout.startswith("The for\n")
    for args, msg in [
        (["--prompt=" + "x" * 40], "longer than the model's context"),
        (["--top_p=0"], "top_p"),
        (["--temperature=-1"], "temperature"),
        (["--steps=0"], "steps"),
        (["--infill=no spans"], "has no {{N}} span"),
        (["--infill=a {{abc}} b {{2}}"], "bad span {{abc}}"),
        (["--infill=a {{-3}}"], "bad span {{-3}}"),
        (["--infill=a {{0}} b {{2}}"], "bad span {{0}}"),
        (["--infill=a {{12} b"], "unclosed span"),
        (["--prompt=FILE:/nonexistent.txt"], "cannot read"),
        (["--num_samples=0"], "num_samples"),
        (["--prompt=a", "--infill=b {{2}}"], "not both"),
    ]:
        code, _, err = run(sample, f"--out_dir={out}", *args)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, (args, err)


def test_samples_are_printed_up_to_their_first_eos():
    assert sample.up_to_eos(torch.tensor([5, 6, 9, 7, 9]), 9) == [5, 6]
    assert sample.up_to_eos(torch.tensor([9, 5, 6, 9, 7]), 9) == [5, 6]  # a leading one skipped
    assert sample.up_to_eos(torch.tensor([5, 6, 7]), 9) == [5, 6, 7]
    assert sample.up_to_eos(torch.tensor([5, 9, 7]), None) == [5, 9, 7]


def test_sample_cuts_a_gpt2_token_model_at_eos(tmp_path, run, monkeypatch, tiny):
    """A GPT-2-token model (the authors'; a byte-level stand-in for GPT-2's files) prints each
    sample up to its first <|endoftext|>, and all of it with --eos=keep."""
    standin = tiktoken.Encoding(
        name="gpt2",
        pat_str=r"[\s\S]",
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={"<|endoftext|>": 256},
    )
    monkeypatch.setattr(sample, "get_tokenizer", lambda name, vocab=None: standin)
    model = tiny(1.0, L=16, V=257, big=False, bias=True)
    with torch.no_grad():  # make the end of text likely
        model.lm_head.bias[256] = 3.0
    checkpoint.save(tmp_path / "ckpt.pt", checkpoint.state(model, model.config, "gpt2", 0, eos=256))
    flags = [
        f"--out_dir={tmp_path}",
        "--num_samples=4",
        "--steps=4",
        "--temperature=1",
        "--top_p=1",
    ]
    code, cut, err = run(sample, *flags)
    assert code == 0 and "up to its first end-of-text token" in cut, err
    code, kept, _ = run(sample, *flags, "--eos=keep")
    assert "<|endoftext|>" in kept and "<|endoftext|>" not in cut


def test_sample_compiled_prints_the_samples_of_the_eager_step(trained, run, dynamo_eager):
    out, _ = trained
    eager = run(sample, f"--out_dir={out}", "--num_samples=2", "--steps=8")
    fast = run(sample, f"--out_dir={out}", "--num_samples=2", "--steps=8", "--compile=True")
    assert eager[0] == fast[0] == 0 and "compiling included" in fast[1]
    assert eager[1].splitlines()[:-1] == fast[1].splitlines()[:-1]  # all but the summary


def test_evaluation_and_sampling_use_the_ema_weights(dataset, trained, run):
    out, _ = trained
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    ema, _ = checkpoint.load(out / "ckpt.pt")
    raw, _ = checkpoint.load(out / "ckpt.pt", ema=False)
    assert all(torch.equal(ema.state_dict()[k], ckpt["ema"][k]) for k in ckpt["ema"])
    assert all(torch.equal(raw.state_dict()[k], ckpt["model"][k]) for k in ckpt["model"])
    assert not all(torch.equal(ckpt["ema"][k], ckpt["model"][k]) for k in ckpt["model"])
    flags = ["--num_samples=4", "--steps=8", "--seed=5", "--temperature=1", "--top_p=1"]
    code, stdout, _ = run(sample, f"--out_dir={out}", *flags)
    enc = common.get_tokenizer("bytes")
    for model, same in ((ema, True), (raw, False)):
        tokens, _ = model.generate(4, 8, temperature=1, top_p=1, generator=gen(5))
        printed = "".join(enc.decode(row.tolist()) + "\n" + "-" * 60 + "\n" for row in tokens)
        assert stdout.startswith(printed) == same


def test_ddp_two_gloo_processes_train_exactly_like_one_and_resume_on_one(
    dataset, tmp_path, run, tiny_flags
):
    """torchrun with no batch flag: 2 processes x 1 micro-batch of 4 = the global batch of one
    process with 2 micro-batches of 4; the same sequences and noise, so the same losses and
    weights. Resumed on one process with no batch flag, the run keeps its global batch of 8."""
    args = [f"--dataset={dataset}", "--eval_interval=4", *tiny_flags]  # a constant lr after warmup
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [*torchrun, "train.py", "--device=cpu", f"--out_dir={tmp_path / 'ddp'}"]
    r = subprocess.run(
        [*command, "--max_iters=4", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "global batch 8 sequences = batch_size 4 x accumulation 1 x world size 2" in r.stdout
    one = [f"--out_dir={tmp_path / 'one'}", "--gradient_accumulation_steps=2", "--max_iters=8"]
    code, _, err = run(train, *one, *args)
    assert code == 0, err
    resume = [f"--out_dir={tmp_path / 'ddp'}", "--init_from=resume", f"--dataset={dataset}"]
    code, stdout, err = run(train, *resume, "--max_iters=8")
    assert code == 0 and "resuming at step 4" in stdout, err
    assert "global batch 8 sequences = batch_size 4 x accumulation 2 x world size 1" in stdout
    ddp = train_losses(tmp_path / "ddp")
    single = train_losses(tmp_path / "one")
    assert sorted(ddp) == list(range(1, 9))
    assert all(ddp[i] == pytest.approx(single[i], rel=1e-5) for i in ddp)
    assert max_weight_difference(tmp_path / "ddp", tmp_path / "one") < 1e-5
    # a global batch that cannot be shared out is refused in one line
    code, _, err = run(train, *resume, "--max_iters=9", "--batch_size=3")
    assert code == 2 and "global batch of 8 sequences does not split" in err
    assert err.count("\n") == 1


def test_gradient_accumulation_equals_a_bigger_batch(dataset, tmp_path, run, tiny_flags):
    """At alpha_0 = 0 the loss draws no noise that matters: 2 micro-batches of 4 = 1 batch of
    8."""
    args = [
        f"--dataset={dataset}",
        "--max_iters=3",
        "--eval_interval=3",
        "--alpha_0=0",
        *tiny_flags,
    ]
    accum = [f"--out_dir={tmp_path / 'accum'}", "--gradient_accumulation_steps=2"]
    assert run(train, *accum, *args)[0] == 0
    assert run(train, f"--out_dir={tmp_path / 'big'}", *args, "--batch_size=8")[0] == 0
    a = train_losses(tmp_path / "accum")
    b = train_losses(tmp_path / "big")
    assert all(a[i] == pytest.approx(b[i], rel=1e-5) for i in (1, 2, 3))
    assert max_weight_difference(tmp_path / "accum", tmp_path / "big") < 1e-5


def wait_for(predicate, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_and_resume_continues_the_same_curve(dataset, tmp_path, run, sig, tiny_flags):
    # The lr is constant (TINY), so max_iters changes nothing but where a run ends: the
    # interrupted run cannot finish before the signal, and the reference stops where the
    # resumed run does.
    args = [f"--dataset={dataset}", "--eval_interval=100000", *tiny_flags]
    out = tmp_path / "run"
    p = subprocess.Popen(
        [sys.executable, "train.py", f"--out_dir={out}", "--max_iters=100000", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def logged_three():
        log = out / "log.jsonl"
        return log.exists() and len(log.read_text().splitlines()) >= 3

    assert wait_for(logged_three)
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 128 + sig, stderr
    stopped = torch.load(out / "ckpt.pt", weights_only=True)["iter_num"]
    end = stopped + 5
    assert stopped >= 3 and f"at step {stopped}: saved" in stdout
    resume = [f"--out_dir={out}", "--init_from=resume", f"--max_iters={end}"]
    code, stdout, err = run(train, *resume, f"--dataset={dataset}")
    assert code == 0 and f"resuming at step {stopped}" in stdout, err
    assert run(train, f"--out_dir={tmp_path / 'ref'}", f"--max_iters={end}", *args)[0] == 0
    a = train_losses(tmp_path / "ref")
    b = train_losses(out)
    assert sorted(b) == list(range(1, end + 1))
    assert [b[i] for i in range(1, end + 1)] == [a[i] for i in range(1, end + 1)]  # exactly


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    dataset, tmp_path, monkeypatch, run, tiny_flags
):
    out = tmp_path / "run"
    calls = [0]
    real_forward = eso.EsoLM.forward

    def poisoned(self, x, draws, loss_type=None, dense=False):
        loss, parts = real_forward(self, x, draws, loss_type, dense)
        if self.training:
            calls[0] += 1
            if calls[0] == 7:  # the 7th training step (step 6) goes bad
                loss = loss * float("nan")
        return loss, parts

    monkeypatch.setattr(eso.EsoLM, "forward", poisoned)
    args = [f"--dataset={dataset}", f"--out_dir={out}", "--max_iters=20", "--eval_interval=4"]
    code, _, err = run(train, *args, *tiny_flags)
    err = err.strip()
    assert code == 1 and err.startswith("train.py: error: loss is nan at step 6")
    assert "\n" not in err
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 4  # the last good one


def test_unwritable_output_short_corpus_and_evaluation_sets_fail_before_training(
    dataset, tmp_path, run, monkeypatch, tiny_flags
):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    args = [f"--dataset={dataset}", "--max_iters=1"]
    code, _, err = run(train, *args, f"--out_dir={blocker / 'out'}", *tiny_flags)
    assert code == 2 and "cannot write to --out_dir" in err
    code, _, err = run(
        train, *args, f"--out_dir={tmp_path / 'o'}", *tiny_flags, "--block_size=100000"
    )
    assert code == 2 and "fewer than one training sequence" in err
    assert not (tmp_path / "o" / "ckpt.pt").exists()
    # an evaluation set, as the zero-shot recipes write one: val.bin and no train.bin tokens
    source = common.dataset_dir(dataset)
    evalset = common.dataset_dir("evalset")
    evalset.mkdir(exist_ok=True)
    meta = json.loads((source / "meta.json").read_text())
    meta |= {"eval_only": True, "val_split": "test", "train_tokens": 0}
    (evalset / "train.bin").write_bytes(b"")
    (evalset / "val.bin").write_bytes((source / "val.bin").read_bytes())
    (evalset / "meta.json").write_text(json.dumps(meta))
    args = ["--dataset=evalset", "--max_iters=1"]
    code, _, err = run(train, *args, f"--out_dir={tmp_path / 'p'}", *tiny_flags)
    assert code == 2 and "is an evaluation set" in err


def test_a_weights_only_or_foreign_method_checkpoint_is_refused_in_one_line(tmp_path, run, tiny):
    """A checkpoint that holds weights but no training state (a converted one) is not resumed,
    and one of another model on the same transformer (the paper's BD3-LM) is not sampled as an
    Eso-LM: each in one line, naming what to do instead."""
    model = tiny(0.5, L=32, V=256, big=False)
    for name, extra in (("weights", {}), ("bd3lm", {"method": "bd3lm", "block_len": 4})):
        state = checkpoint.state(model, model.config, "bytes", 0, dataset="corpus", **extra)
        (tmp_path / name).mkdir()
        checkpoint.save(tmp_path / name / "ckpt.pt", state)
    code, _, err = run(train, f"--out_dir={tmp_path / 'weights'}", "--init_from=resume")
    assert code == 2 and "no training state to resume" in err and err.count("\n") == 1
    code, _, err = run(sample, f"--out_dir={tmp_path / 'bd3lm'}")
    assert code == 2 and "holds a bd3lm model" in err and "paper.evaluate" in err
    assert err.count("\n") == 1
