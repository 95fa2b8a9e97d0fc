"""Tests for eso.py and the scripts around it. Offline, CPU, tiny models; run with `pytest test_eso.py`."""

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

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import cli
import eso
import evaluate
import sample
import train
from data import prepare


# The tests that a GPU can break (the cached sampler, the fast sequential term, compile, bf16) run on every
# device torch sees here: the CPU, and CUDA or MPS where present (.ci/gpu-check runs them on a GPU).
DEVICES = (
    ["cpu"] + ["cuda"] * torch.cuda.is_available() + ["mps"] * torch.backends.mps.is_available()
)


def tiny(alpha_0=0.5, variant="B", L=24, V=11, big=True, seed=0, device="cpu", **kw):
    """A tiny model; big=True gives large random weights, so that no sampler looks exact by accident."""
    torch.manual_seed(seed)
    cfg = eso.EsoConfig(
        block_size=L,
        vocab_size=V,
        n_layer=2,
        n_head=2,
        n_embd=32,
        alpha_0=alpha_0,
        variant=variant,
        **kw,
    )
    model = eso.EsoLM(cfg).eval()
    if big:
        for p in model.parameters():
            torch.nn.init.normal_(p, std=1.0)
    return model.to(device)


def gen(seed, device="cpu"):
    return torch.Generator(device).manual_seed(seed)


ROOT = Path(__file__).resolve().parent
TINY = [
    "--n_layer=1",
    "--n_head=2",
    "--n_embd=32",
    "--block_size=32",
    "--batch_size=4",
    "--eval_iters=2",
    "--log_interval=1",
    "--warmup_iters=2",
    "--lr_schedule=constant",
]


def py(*args, timeout=240, **kw):
    """Run a command like a user would, in a fresh process; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw
    )


@pytest.fixture
def run(capsys):
    """run(module, *args) -> (exit status, stdout, stderr): a script's main() in this process,
    through cli.run as `python module.py args` would (a subprocess only costs start-up time)."""

    def call(module, *args):
        with pytest.raises(SystemExit) as e:
            cli.run(module.main, f"{module.__name__}.py", [str(a) for a in args])
        out, err = capsys.readouterr()
        return e.value.code, out, err

    return call


# ----------------------------------------------------------------------------- config


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


# ----------------------------------------------------------------------------- orders and masks


def test_worked_example_diffusion_order_and_mask():
    # x = (A, B, C, D, E, F) at positions 1..6, z = (A, M, C, M, M, F); sigma = (3, 1, 6, 4, 5, 2).
    A, B, C, D, E, Fm, M = range(7)
    x = torch.tensor([[A, B, C, D, E, Fm]])
    masked = torch.tensor([[0, 1, 0, 1, 1, 0]], dtype=torch.bool)
    u = torch.tensor([[0.2, 0.9, 0.1, 0.3, 0.5, 0.4]])  # clean by u: 3, 1, 6; masked by u: 4, 5, 2
    order = eso.diffusion_order(masked, u)
    assert (order[0] + 1).tolist() == [3, 1, 6, 4, 5, 2]
    z = torch.where(masked, M, x)
    assert z.gather(1, order)[0].tolist() == [C, A, Fm, M, M, M]
    # variant B: plain causal attention over the sorted sequence
    assert torch.equal(
        eso.prefix_lm_mask(torch.arange(6), 6)[0, 0], torch.ones(6, 6, dtype=torch.bool).tril()
    )


def test_worked_example_sequential_order_and_mask():
    A, B, C, D, E, Fm, M = range(7)
    x = torch.tensor([[A, B, C, D, E, Fm]])
    masked = torch.tensor([[0, 1, 0, 1, 1, 0]], dtype=torch.bool)
    u = torch.tensor([[0.2, 0.0, 0.1, 0.0, 0.0, 0.4]])
    order = eso.sequential_order(masked, u)
    assert (order[0] + 1).tolist() == [3, 1, 6, 2, 4, 5]
    z = torch.where(masked, M, x)
    zs, xs = z.gather(1, order)[0].tolist(), x.gather(1, order)[0].tolist()
    assert zs == [C, A, Fm, M, M, M] and xs == [C, A, Fm, B, D, E]
    mask = eso.sequential_mask(eso.prefix_lm_mask(torch.arange(6), 6))[
        0, 0
    ]  # (12, 12) over [z sorted ; x sorted]
    slot = 4  # the mask at position 4 (0-based slot 4 of the z half)
    sees = [("z" if j < 6 else "x", (zs + xs)[j]) for j in range(12) if mask[slot, j]]
    assert sees == [("z", M), ("x", C), ("x", A), ("x", Fm), ("x", B)]
    # x slots are plain causal and never see the z half
    assert (
        torch.equal(mask[6:, 6:], torch.ones(6, 6, dtype=torch.bool).tril())
        and not mask[6:, :6].any()
    )


def brute_mask_a(L, n_clean, two_l):
    """Variant A's masks written out element by element from the paper's definitions."""
    if not two_l:  # diffusion: prefix LM over the clean block
        return torch.tensor(
            [[j <= i or (i < n_clean and j < n_clean) for j in range(L)] for i in range(L)]
        )
    m = torch.zeros(2 * L, 2 * L, dtype=torch.bool)
    for i in range(L):
        m[i, i] = True  # z slot -> itself
        for j in range(i):
            m[i, L + j] = True  # z slot -> earlier x slots
        for j in range(L):
            m[L + i, L + j] = j <= i or (
                i < n_clean and j < n_clean
            )  # x: causal + clean block both ways
    return m


def test_variant_a_masks_are_right_per_row():
    L, n_clean = 7, torch.tensor([5, 2])  # two rows with different clean counts
    diff = eso.prefix_lm_mask(torch.arange(L), L, n_clean)
    seq = eso.sequential_mask(diff)
    assert diff.shape == (2, 1, L, L) and seq.shape == (2, 1, 2 * L, 2 * L)
    for b in range(2):
        assert torch.equal(diff[b, 0], brute_mask_a(L, int(n_clean[b]), False))
        assert torch.equal(seq[b, 0], brute_mask_a(L, int(n_clean[b]), True))
    assert not torch.equal(diff[0], diff[1])


@pytest.mark.parametrize("variant", ["A", "B"])
def test_batched_loss_equals_row_by_row(variant):
    """The loss of a batch is the mean of its rows' losses: masks follow each row, not the first."""
    model = tiny(0.5, variant, L=12, big=False)
    x = torch.randint(0, 11, (3, 12), generator=gen(0))
    masked = torch.tensor([[1] * 9 + [0] * 3, [1] * 2 + [0] * 10, [0, 1] * 6], dtype=torch.bool)
    t = torch.tensor([0.9, 0.2, 0.5])
    u = torch.rand(3, 12, generator=gen(1))
    d_order, s_order = eso.diffusion_order(masked, u), eso.sequential_order(masked, u)
    batched_d = model.diffusion_nll(x, t, masked, d_order)
    batched_s = model.sequential_nll(x, masked, s_order)
    rows_d = (
        sum(
            model.diffusion_nll(x[b : b + 1], t[b : b + 1], masked[b : b + 1], d_order[b : b + 1])
            for b in range(3)
        )
        / 3
    )
    rows_s = (
        sum(
            model.sequential_nll(x[b : b + 1], masked[b : b + 1], s_order[b : b + 1])
            for b in range(3)
        )
        / 3
    )
    torch.testing.assert_close(batched_d, rows_d)
    torch.testing.assert_close(batched_s, rows_s)


# ----------------------------------------------------------------------------- the two limits of the loss


def test_alpha0_zero_loss_is_left_to_right_ar_cross_entropy():
    model = tiny(0.0, L=10, big=False)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randint(0, 11, (2, 10), generator=gen(0))
    loss, parts = model.loss(x)
    assert parts["diffusion"] == 0
    # Independent AR: for each i, feed the true prefix x_<i then one [MASK] at position i,
    # with plain causal attention, and score x_i at the mask.
    nll = 0.0
    for i in range(10):
        idx = torch.cat([x[:, :i], torch.full((2, 1), model.mask_id)], 1)
        logits = model.lm_head(model.hidden(idx, torch.arange(i + 1).expand(2, -1)))[:, -1]
        nll += F.cross_entropy(logits, x[:, i], reduction="sum")
    torch.testing.assert_close(loss, nll / 20, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        model.likelihood(x, 3), nll / 20, rtol=1e-5, atol=1e-6
    )  # one order only


@pytest.mark.parametrize("loss_type, variant", [("elbo", "B"), ("low_var", "B"), ("elbo", "A")])
def test_alpha0_one_loss_is_mdlm_nelbo(loss_type, variant):
    model = tiny(1.0, variant, L=10, big=False, loss_type=loss_type)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randint(0, 11, (3, 10), generator=gen(0))
    g = gen(5)
    loss, parts = model.loss(x, generator=g)
    assert parts["sequential"] == 0
    # Replay the draws: t (antithetic), z_t, then the clean-first order.
    g = gen(5)
    t = eso.sample_t(3, "cpu", g)
    masked = torch.rand(3, 10, generator=g) < 1 - (1 - (1 - 1e-3) * t)[:, None]
    order = eso.diffusion_order(masked, torch.rand(3, 10, generator=g))
    # Independent MDLM NELBO: no sorting; the paper's mask in position space (eq. 24),
    # A[i, j] = sigma^-1(i) >= sigma^-1(j), and the continuous-time weight -alpha'_t / (1 - alpha_t).
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(10).expand(3, -1))  # sigma^-1
    attn = rank[:, :, None] >= rank[:, None, :]  # (B, L, L)
    if variant == "A":  # clean tokens also see each other both ways (eq. 35-37)
        attn = attn | (~masked[:, :, None] & ~masked[:, None, :])
    attn = attn[:, None]  # (B, 1, L, L)
    z = torch.where(masked, model.mask_id, x)
    logits = model.lm_head(model.hidden(z, torch.arange(10).expand(3, -1), attn))
    ce = F.cross_entropy(logits.transpose(1, 2), x, reduction="none")  # (B, L)
    alpha_t = 1 - (1 - 1e-3) * t
    weight = (1 - 1e-3) / (1 - alpha_t) if loss_type == "elbo" else torch.ones(3)
    expected = (ce * masked * weight[:, None]).sum() / 30
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    if loss_type == "low_var":  # validation asks for the elbo weighting whatever the training loss
        elbo, _ = model.loss(x, loss_type="elbo", generator=gen(5))
        torch.testing.assert_close(
            elbo, (ce * masked * ((1 - 1e-3) / (1 - alpha_t))[:, None]).sum() / 30
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["B", "A"])
@pytest.mark.parametrize("alpha_0", [0.0, 0.25, 1.0])
def test_fast_sequential_term_equals_the_dense_2l_reference(variant, alpha_0, device, monkeypatch):
    """The fast path (no z slots before s0, blocks that the mask rules out skipped) gives the dense
    [z_0 ; x] pass's loss and gradients, and the same likelihood bound, to float32 rounding."""
    monkeypatch.setattr(
        eso.SequentialPattern, "GROUP", 5
    )  # several groups of z queries, a ragged last one
    model = tiny(alpha_0, variant, L=23, big=False, seed=1)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    model.to(device)
    x = torch.randint(0, 11, (4, 23), generator=gen(0)).to(device)
    masked = torch.rand(4, 23, generator=gen(1)) < 1 - alpha_0
    masked[1] = masked[1] & (
        torch.arange(23) > 9
    )  # rows with different clean counts: s0 = the smallest
    order = eso.sequential_order(masked, torch.rand(4, 23, generator=gen(2)))
    masked, order = masked.to(device), order.to(device)
    runs = []
    for dense in (True, False):
        model.zero_grad()
        total = (
            model.sequential_nll(x, masked, order, dense)
            + model.loss(x, generator=gen(3, device), dense=dense)[0]
        )
        total.backward()
        runs.append((total.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    if variant == "B":
        bounds = [model.likelihood(x, 3, gen(4, device), dense=dense) for dense in (True, False)]
        torch.testing.assert_close(bounds[0], bounds[1], rtol=1e-5, atol=1e-6)


def test_sequential_pattern_skips_what_the_2l_mask_rules_out(monkeypatch):
    """The chunks' masks, laid back into [z ; x] coordinates, are exactly sequential_mask's z rows >= s0."""
    monkeypatch.setattr(eso.SequentialPattern, "GROUP", 3)
    L, s0 = 11, 3
    pattern = eso.SequentialPattern(L, s0, None, "cpu")
    rows, z = [], 0
    for size, mask in zip(pattern.z_sizes, pattern.masks):
        seen_x = mask[:, :-size]  # (size, end): x slots < end
        full = torch.zeros(size, 2 * L, dtype=torch.bool)
        full[:, L : L + seen_x.size(1)] = seen_x
        full[:, s0 + z : s0 + z + size] = mask[:, -size:]  # own keys: the diagonal of the z half
        rows.append(full)
        z += size
    assert torch.equal(
        torch.cat(rows), eso.sequential_mask(eso.prefix_lm_mask(torch.arange(L), L))[0, 0, s0:L]
    )
    assert sum(pattern.z_sizes) == L - s0 and sum(pattern.x_sizes) == L


def test_loss_splits_the_batch_and_sums_the_terms():
    model = tiny(0.25, L=12, big=False)
    x = torch.randint(0, 11, (4, 12), generator=gen(0))
    loss, parts = model.loss(x, generator=gen(3))
    d = model.draws(
        x, gen(3)
    )  # the first 2 rows estimate the diffusion term, the other 2 the sequential one
    assert d.t.shape == (2,) and d.masked.shape == d.sigma.shape == (4, 12)
    diff = model.diffusion_nll(x[:2], d.t, d.masked[:2], d.sigma[:2])
    seq = model.sequential_nll(x[2:], d.masked[2:], d.sigma[2:])
    torch.testing.assert_close(loss, diff + seq)
    torch.testing.assert_close(parts["diffusion"], diff)
    with pytest.raises(ValueError, match="cannot be split"):
        model.loss(x[:1])


def test_antithetic_times_are_stratified():
    t = eso.sample_t(8, "cpu", gen(0))
    strata = ((t - 1e-3) / (1 - 1e-3) * 8).floor().sort().values
    assert strata.tolist() == list(range(8)) and (t >= 1e-3).all() and (t <= 1).all()


# ----------------------------------------------------------------------------- the schedule


def binomial_chain(n, steps, alpha_0, g):
    """The paper's Alg. 2, step by step (the slow way)."""
    sizes, remaining = [], n
    for t in torch.linspace(1, 1 / steps, steps, dtype=torch.float64).tolist():
        s = t - 1 / steps
        a_t, a_s = eso.alpha(t, alpha_0), eso.alpha(max(s, 0.0), alpha_0)
        k = int(
            torch.binomial(
                torch.tensor(float(remaining)), torch.tensor((a_s - a_t) / (1 - a_t)), generator=g
            )
        )
        if k:
            sizes.append(k)
            remaining -= k
    return sizes


@pytest.mark.parametrize("alpha_0, steps", [(0.5, 8), (1.0, 8), (0.25, 64)])
def test_schedule_matches_the_binomial_chain_in_distribution(alpha_0, steps):
    g = gen(0)
    fast = [eso.unmask_schedule(40, steps, alpha_0, g, "cpu") for _ in range(3000)]
    slow = [binomial_chain(40, steps, alpha_0, g) for _ in range(3000)]
    for stat in (lambda s: sum(s), len, lambda s: max(s, default=0)):
        a, b = (
            torch.tensor([float(stat(s)) for s in fast]),
            torch.tensor([float(stat(s)) for s in slow]),
        )
        assert abs(a.mean() - b.mean()) < 4 * math.sqrt((a.var() + b.var()) / 3000) + 1e-9


def test_schedule_counts_and_nfe():
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
    g = gen(2)
    sizes = eso.unmask_schedule(24, 5, 0.5, g, "cpu")
    _, nfe = model.generate(2, 5, generator=gen(2))
    assert nfe == len(sizes) + 24 - sum(sizes)


def test_sampling_example_from_the_paper(monkeypatch):
    """L = 8, n_MDM = 5 in steps of (2, 1, 2), then positions left in ascending order: 6 forwards."""
    model = tiny(0.5, L=8)
    monkeypatch.setattr(eso, "unmask_schedule", lambda *a, **k: [2, 1, 2])
    for kv_cache in (True, False):
        decoded, prev = [], torch.ones(1, 8, dtype=torch.bool)

        def record(tokens, nfe):
            nonlocal prev
            now = tokens == model.mask_id
            decoded.append((prev & ~now)[0].nonzero().flatten().tolist())
            prev = now

        _, nfe = model.generate(1, 3, callback=record, kv_cache=kv_cache, generator=gen(0))
        assert nfe == 6 and [len(d) for d in decoded] == [2, 1, 2, 1, 1, 1]
        sequential = [d[0] for d in decoded[3:]]
        assert sequential == sorted(set(range(8)) - {p for d in decoded[:3] for p in d})


def test_block_order_decodes_evenly_spaced_streams():
    """Each diffusion step decodes one stream: no two of its tokens closer than S (the number of diffusion
    steps) positions, whatever L, alpha_0, T and prompt; the sizes stay shared by the rows."""
    known = torch.zeros(2, 64, dtype=torch.bool)
    sigma, sizes = eso.sampling_order(
        known, [16, 15, 17, 16], True, gen(0)
    )  # alpha_0 = 1, S = 4 divides L
    assert sizes == [16] * 4
    for b in range(2):
        assert sorted(sigma[b].tolist()) == list(range(64))
        for j in range(4):  # step j: one residue class mod 4, as the authors' code decodes
            assert len({p % 4 for p in sigma[b, 16 * j : 16 * j + 16].tolist()}) == 1
    for L, alpha_0, T, prompt in itertools.product(
        [37, 64, 100], [1.0, 0.5, 0.2], [3, 8, 30], [False, True]
    ):
        known = torch.zeros(3, L, dtype=torch.bool)
        known[:, : 5 * prompt] = True
        n_masked = L - 5 * prompt
        schedule = eso.unmask_schedule(n_masked, T, alpha_0, gen(L + T), "cpu")
        sigma, sizes = eso.sampling_order(known, schedule, True, gen(1))
        S, n = len(schedule), sum(schedule)
        assert len(sizes) == S and sum(sizes) == n and max(sizes) - min(sizes) <= 1
        assert all(sorted(r) == list(range(L)) for r in sigma.tolist())
        start = 5 * prompt
        for size in sizes:  # within a step, every two tokens are S or more positions apart
            step = sigma[:, start : start + size].sort(1).values
            assert size < 2 or (step.diff(dim=1) >= S).all(), (L, alpha_0, T, prompt)
            start += size
        assert (sigma[:, start:].diff(dim=1) > 0).all()  # the sequential positions, left to right


def test_sequential_fast_path_needs_the_clean_tokens_first(monkeypatch):
    """The fast path skips the first n_skip slots by count: an order that puts a mask among them (which
    sequential_order never does) gives another result than the dense path, so the precondition is real."""
    monkeypatch.setattr(eso.SequentialPattern, "GROUP", 2)
    model = tiny(0.5, L=12, big=False)
    x = torch.randint(0, 11, (2, 12), generator=gen(0))
    masked = torch.tensor([[0, 0, 0, 0, 1, 1] * 2] * 2, dtype=torch.bool)  # 8 clean: n_skip = 8
    good = eso.sequential_order(masked, torch.rand(2, 12, generator=gen(1)))
    bad = good.flip(1)  # masks first
    for sigma, same in ((good, True), (bad, False)):
        fast, dense = (model.sequential_nll(x, masked, sigma, dense) for dense in (False, True))
        assert torch.allclose(fast, dense, atol=1e-6) == same


# ----------------------------------------------------------------------------- the sampler


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "variant, alpha_0, with_canvas, order",
    list(itertools.product("BA", [0.0, 0.5, 1.0], [False, True], ["random", "block"])),
)
def test_cached_sampling_equals_the_uncached_reference(
    variant, alpha_0, with_canvas, order, device
):
    model = tiny(alpha_0, variant, device=device)
    canvas = None
    if with_canvas:  # a prompt and two infilling anchors
        canvas = torch.full((1, 24), model.mask_id)
        canvas[0, [0, 1, 2, 13, 20]] = torch.tensor([1, 2, 3, 4, 5])
    runs = []
    for kv_cache in (True, False):
        logits = []
        hook = model.lm_head.register_forward_hook(lambda m, i, out: logits.append(out.clone()))
        tokens, nfe = model.generate(
            3,
            7,
            canvas=canvas,
            block_order=order == "block",
            kv_cache=kv_cache,
            generator=gen(1, device),
        )
        hook.remove()
        runs.append((tokens, nfe, logits))
    (t1, n1, l1), (t2, n2, l2) = runs
    assert torch.equal(t1, t2) and n1 == n2 == len(l1) == len(l2)
    for a, b in zip(l1, l2):  # logits agree to float32 rounding
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    assert t1.shape == (3, 24) and (t1 < 11).all() and (t1 >= 0).all()
    assert len(set(map(tuple, t1.tolist()))) == 3  # rows differ: the draw is per sample
    if with_canvas:
        assert t1[:, [0, 1, 2, 13, 20]].tolist() == [[1, 2, 3, 4, 5]] * 3
        assert n1 <= 24 - 5  # the known tokens cost no forward of their own


def test_generate_is_reproducible_and_respects_sampling_alpha():
    model = tiny(0.5)
    a = model.generate(2, 4, generator=gen(7))
    b = model.generate(2, 4, generator=gen(7))
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert (
        model.generate(1, 4, alpha_0=0.0, generator=gen(0))[1] == 24
    )  # pure AR: one token per step
    assert (
        model.generate(1, 4, alpha_0=1.0, generator=gen(0))[1] <= 4
    )  # pure diffusion: at most T steps
    full = torch.randint(0, 11, (1, 24))
    assert model.generate(2, 4, canvas=full)[1] == 0  # nothing to decode


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(steps=0), "steps"),
        (dict(steps=2.5), "steps"),
        (dict(steps="8"), "steps"),
        (dict(steps=True), "steps"),
        (dict(num_samples=1.5), "num_samples"),
        (dict(alpha_0=-0.1), "alpha_0"),
        (dict(temperature=0.0), "temperature"),
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
def test_generate_rejects_bad_arguments(kw, msg):
    model = tiny(0.5)
    args = dict(num_samples=1, steps=4) | kw
    with pytest.raises(ValueError, match=msg):
        model.generate(args.pop("num_samples"), args.pop("steps"), **args)


def test_whole_numbers_given_as_floats_are_taken():
    model = tiny(0.5)
    a = model.generate(2, 4, generator=gen(3))
    b = model.generate(2.0, 4.0, generator=gen(3))
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    x = torch.randint(0, 11, (2, 24), generator=gen(0))
    assert model.likelihood(x, 2.0, gen(1)) == model.likelihood(x, 2, gen(1))
    with pytest.raises(ValueError, match="num_orders"):
        model.likelihood(x, 0.5)


def tempered_nucleus(logits, temperature, top_p):
    """softmax(logits / T) cut to the top-p nucleus and renormalised, written out independently:
    tokens in descending order are kept until the kept mass reaches top_p."""
    p = torch.softmax(logits.double() / temperature, -1)
    keep, mass = torch.zeros_like(p), 0.0
    for i in p.argsort(descending=True).tolist():
        keep[i], mass = 1.0, mass + float(p[i])
        if mass >= top_p:
            break
    return p * keep / (p * keep).sum()


@pytest.mark.parametrize("wide", [True, False], ids=["float64", "float32"])
@pytest.mark.parametrize(
    "temperature, top_p", [(1.0, 1.0), (0.6, 1.0), (1.7, 1.0), (1.0, 0.7), (0.8, 0.9)]
)
def test_sampled_tokens_follow_the_tempered_nucleus_law(temperature, top_p, wide, monkeypatch):
    """200,000 draws from one row of logits: every token's frequency lies within 5 binomial standard
    deviations of softmax(logits / T) restricted to the top-p nucleus, and tokens outside never appear.
    (Both paths: Gumbel-max in float64, and the float32 inverse CDF that devices without float64 use.)"""
    monkeypatch.setattr(eso, "has_float64", lambda device: wide)
    V, N = 10, 200_000
    logits = torch.randn(V, generator=gen(0)) * 1.5
    draws = eso.sample_tokens(logits.expand(N, 1, V), temperature, top_p, gen(1))  # (N, 1)
    assert draws.shape == (N, 1)
    freq = torch.bincount(draws.flatten(), minlength=V).double() / N
    p = tempered_nucleus(logits, temperature, top_p)
    tolerance = 5 * (p * (1 - p) / N).sqrt()
    assert ((freq - p).abs() <= tolerance).all(), (freq, p)
    assert (freq[p == 0] == 0).all() and (p > 0).sum() < V if top_p < 1 else (p > 0).all()


def test_nucleus_filtering_keeps_the_smallest_set_above_p():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]]))
    seen = {int(eso.sample_tokens(logits, top_p=0.7, generator=gen(s))) for s in range(200)}
    assert seen == {0, 1}  # 0.5 < 0.7 <= 0.8
    seen = {int(eso.sample_tokens(logits, top_p=0.01, generator=gen(s))) for s in range(50)}
    assert seen == {0}  # the top token is always kept
    seen = {int(eso.sample_tokens(logits, generator=gen(s))) for s in range(400)}
    assert seen == {0, 1, 2, 3}


def test_float32_sampling_keeps_the_tail_where_a_running_sum_would_round_it_away(monkeypatch):
    """The float32 inverse CDF (MPS) sums probabilities in float32; CPU cumsum accumulates in double and
    cannot show the failure, so this emulates a coarse accumulator (8-bit mantissa, bf16's): the same
    failure as float32's, at a 2^16 times smaller vocabulary. Head token 0 has p = 7/8 and 128 tail
    tokens 2^-10 each: added after the head, each is below half an ulp of the sum and adds nothing."""

    def coarse_cumsum(
        self, dim=-1
    ):  # sequential sum, rounded to 8 significant bits after every addition
        out, acc = torch.empty_like(self), torch.zeros(self.shape[:-1])
        for i in range(self.size(-1)):
            acc = (acc + self[..., i]).to(torch.bfloat16).float()
            out[..., i] = acc
        return out

    p = torch.tensor([7 / 8] + [2**-10] * 128)
    largest_first = coarse_cumsum(
        p
    )  # the accumulator has teeth: summed head first, the tail vanishes
    assert largest_first[-1] == largest_first[0] == 7 / 8
    monkeypatch.setattr(torch.Tensor, "cumsum", coarse_cumsum)
    monkeypatch.setattr(eso, "has_float64", lambda device: False)
    draws = eso.sample_tokens(p.log().expand(8000, 129), generator=gen(0))
    tail = float((draws > 0).double().mean())
    assert abs(tail - 1 / 8) < 5 * math.sqrt(1 / 8 * 7 / 8 / 8000), tail


# ----------------------------------------------------------------------------- likelihood


def test_iw_bound_with_enough_orders_is_the_exact_any_order_likelihood():
    """At alpha_0 = 1 and L = 4, p(x) = mean over all 24 orders of prod_l p(x_sigma(l) | x_sigma(<l))."""
    model = tiny(1.0, L=4, V=5)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randint(0, 5, (2, 4), generator=gen(0))
    log_p = []
    for perm in itertools.permutations(range(4)):  # all orders, enumerated
        order = torch.tensor(perm).expand(2, 4)
        lp = 0.0
        for l in range(4):  # condition on the true tokens decoded before, via a causal forward
            idx = torch.cat([x.gather(1, order[:, :l]), torch.full((2, 1), model.mask_id)], 1)
            logits = model.lm_head(model.hidden(idx, order[:, : l + 1]))[:, -1]
            lp = lp + logits.log_softmax(-1).gather(1, x.gather(1, order[:, l : l + 1])).squeeze(1)
        log_p.append(lp)
    exact = -(torch.logsumexp(torch.stack(log_p), 0) - math.log(24)).mean() / 4
    # K orders estimate p(x) without bias, so -log of it is an upper bound in expectation that
    # converges to the exact value; one order at a time is looser on average (Jensen).
    assert abs(model.likelihood(x, 3000, generator=gen(1)) - exact) < 0.01
    single = torch.stack([model.likelihood(x, 1, generator=gen(s)) for s in range(30)]).mean()
    assert single > exact + 0.01


def test_python_eso_py_prints_the_worked_example_of_its_docstring(capsys):
    """`python eso.py` prints the masks and the cached sampler's steps, computed by the model's own
    functions; the docstring's worked example quotes that output line by line."""
    runpy.run_path(str(ROOT / "eso.py"), run_name="__main__")  # python eso.py
    stdout = capsys.readouterr().out
    assert stdout.count("Eso-LM (") == 4
    lines = stdout.splitlines()
    i = lines.index("Eso-LM (B), diffusion term: z sorted by sigma = (3, 1, 6, 4, 5, 2)")
    assert lines[i + 1].split() == ["C3", "A1", "F6", "M4", "M5", "M2"]
    assert lines[i + 6].split() == ["M5", "█", "█", "█", "█", "█", "·"]  # causal in decode order
    trace = [line for line in lines if line.startswith("    step ")]
    assert len(trace) == 5 and all(line in eso.__doc__.splitlines() for line in trace)
    assert trace[1].split()[:6] == ["step", "2", "feeds", "C3", "A1", "M6"]


def test_likelihood_rejects_variant_a_except_at_alpha0_zero_where_a_is_b():
    with pytest.raises(ValueError, match="variant B"):
        tiny(1.0, "A").likelihood(torch.zeros(1, 24, dtype=torch.long), 2)
    x = torch.randint(
        0, 11, (2, 24), generator=gen(0)
    )  # at alpha_0 = 0 there is no clean block: A = B
    torch.testing.assert_close(tiny(0.0, "A").likelihood(x, 1), tiny(0.0, "B").likelihood(x, 1))


# ----------------------------------------------------------------------------- it learns


def test_tiny_model_learns_structure_and_its_cached_samples_show_it():
    """Sequences are arithmetic progressions mod V from a random start: x_i = (a + i) mod V.

    Only the start is random, so the true NLL is log(V)/L = 0.13 nats per token, while a model
    that ignores context cannot beat the unigram entropy log V = 2.08. A loss under 0.35 can
    only come from using the clean tokens and their original positions (the offsets between
    them). In samples, a correct successor pair (x_{i+1} = x_i + 1) happens by chance 1/8 of
    the time; we ask for 75%.
    """
    torch.manual_seed(0)
    V, L = 8, 16

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


# ----------------------------------------------------------------------------- any device: devices, compile, precision


class MadeWithoutDevice(TorchFunctionMode):
    """Records every torch call that returns a tensor on the meta device. Entered under
    torch.set_default_device("meta"), with the model on the CPU: a tensor created without device=
    lands on meta, and so does whatever is computed from it. (A crash is no evidence: SDPA takes a
    meta mask beside CPU tensors without complaint.)"""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(
            isinstance(t, torch.Tensor) and t.device.type == "meta"
            for t in torch.utils._pytree.tree_leaves(out)
        ):
            self.calls.append(getattr(func, "__name__", str(func)))
        return out


@pytest.mark.parametrize("variant", ["B", "A"])
def test_every_tensor_is_made_on_the_models_device(variant):
    """generate (cache on and off, random and block order, a prompt), a training step with backward,
    validation and the likelihood create nothing on torch's default device."""
    model = tiny(0.5, variant, big=False)
    x = torch.randint(0, 11, (4, 24), generator=gen(0))
    canvas = torch.full((1, 24), model.mask_id)
    canvas[0, :3] = torch.tensor([1, 2, 3])
    torch.set_default_device("meta")
    try:
        with MadeWithoutDevice() as spy:
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["B", "A"])
def test_training_and_evaluation_compile_once_per_shape(variant, device, monkeypatch):
    """torch.compile (the eager backend: Dynamo's tracing and guards, no code generation) over 30 training
    steps and 3 evaluations on fresh batches: one graph per (mode, n_skip) and no graph break. With
    chunks of 4 slots, n_skip takes several values here, which used to be one recompile each."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(eso.SequentialPattern, "GROUP", 4)
    torch._dynamo.reset()
    counters.clear()
    model = tiny(0.5, variant, big=False, device=device)
    compiled = torch.compile(model, backend="eager", dynamic=False, fullgraph=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    shapes = set()
    for step in range(30):
        x = torch.randint(0, 11, (4, 24), generator=gen(step)).to(device)
        draws = model.draws(x, gen(100 + step, device))
        model.train()
        loss, _ = compiled(x, draws)
        loss.backward()
        opt.step()
        opt.zero_grad()
        shapes.add(("train", draws.n_skip))
        if step % 10 == 9:
            model.eval()
            with torch.no_grad():
                draws = model.draws(x, gen(0, device))
                assert torch.isfinite(compiled(x, draws, "elbo")[0])
            shapes.add(("eval", draws.n_skip))
    assert len({n for _, n in shapes}) > 1  # the case that used to recompile
    assert counters["stats"]["unique_graphs"] == len(shapes) and not counters["graph_break"]
    torch._dynamo.reset()


def logged_generate(model, monkeypatch, forced=None, **kw):
    """model.generate(**kw) -> (tokens, nfe, the logits of every step, the tokens drawn at every step);
    forced: tokens to draw at each step instead of sampling, so that two runs see the same canvases."""
    logits, drawn, real = [], [], eso.sample_tokens

    def spy(step_logits, *args, **kwargs):
        logits.append(step_logits.clone())
        drawn.append(real(step_logits, *args, **kwargs) if forced is None else forced[len(drawn)])
        return drawn[-1]

    with monkeypatch.context() as m:
        m.setattr(eso, "sample_tokens", spy)
        tokens, nfe = model.generate(**kw)
    return tokens, nfe, logits, drawn


@pytest.fixture
def dynamo_eager(monkeypatch):
    """generate(compile=True) through Dynamo's eager backend: the same graphs, guards and shapes as
    inductor's, without the seconds of code generation; KEY_BLOCK 8, so that the keys attended vary."""
    import functools

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    monkeypatch.setattr(eso, "_COMPILED_STEPS", {})
    monkeypatch.setattr(eso, "KEY_BLOCK", 8)
    yield
    torch._dynamo.reset()


def prompt_canvas(model):
    canvas = torch.full((1, 24), model.mask_id)  # a prompt and two infilling anchors
    canvas[0, [0, 1, 2, 13, 20]] = torch.tensor([1, 2, 3, 4, 5])
    return canvas


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "variant, alpha_0, with_canvas", list(itertools.product("BA", [0.0, 0.5, 1.0], [False, True]))
)
def test_compiled_step_gives_the_eager_steps_logits(
    variant, alpha_0, with_canvas, device, dynamo_eager, monkeypatch
):
    """A whole sampling run of the compiled step (chunks widened to bucket sizes, the keys attended
    rounded up) against the eager step fed the same tokens: the logits agree at every step."""
    model = tiny(alpha_0, variant, device=device)
    kw = dict(num_samples=3, steps=7, canvas=prompt_canvas(model) if with_canvas else None)
    tokens, nfe, fast, drawn = logged_generate(
        model, monkeypatch, compile=True, generator=gen(1, device), **kw
    )
    eager_tokens, eager_nfe, slow, _ = logged_generate(
        model, monkeypatch, forced=drawn, generator=gen(1, device), **kw
    )
    assert nfe == eager_nfe == len(fast) == len(slow) and torch.equal(tokens, eager_tokens)
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def test_compiled_sampling_compiles_a_handful_of_graphs_once(dynamo_eager, monkeypatch):
    """One graph per chunk size (two at most: a first trace that attends over every slot specializes),
    whatever the number of keys attended; a second run of the same sampling compiles nothing."""
    from torch._dynamo.utils import counters

    counters.clear()
    sizes, real = set(), eso.static_window
    monkeypatch.setattr(
        eso,
        "static_window",
        lambda lo, hi, L: sizes.add(real(lo, hi, L)[1] - real(lo, hi, L)[0]) or real(lo, hi, L),
    )
    model = tiny(0.5, L=64)
    model.generate(2, 8, compile=True, generator=gen(0))
    graphs = counters["stats"]["unique_graphs"]
    assert 0 < graphs <= 2 * len(sizes) <= 2 * 8 and not counters["graph_break"]
    model.generate(2, 8, compile=True, generator=gen(0))
    assert counters["stats"]["unique_graphs"] == graphs
    seen = set(sizes)
    model.generate(
        2, 10**6, alpha_0=0.0, compile=True, generator=gen(1)
    )  # one token per step: P <= 2
    assert counters["stats"]["unique_graphs"] - graphs <= 2 * len(sizes - seen)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_step_with_inductor_writes_the_cache_in_place(device, monkeypatch):
    """The real compiler (seconds of C++ on a CPU; CUDA graphs on CUDA): its kernels write the KV
    cache in place and give the eager step's logits."""
    torch._dynamo.reset()
    monkeypatch.setattr(eso, "_COMPILED_STEPS", {})
    model = tiny(0.5, L=16, device=device)
    kw = dict(num_samples=2, steps=4, canvas=prompt_canvas(model)[:, :16])
    tokens, nfe, fast, drawn = logged_generate(
        model, monkeypatch, compile=True, generator=gen(2, device), **kw
    )
    _, _, slow, _ = logged_generate(
        model, monkeypatch, forced=drawn, generator=gen(2, device), **kw
    )
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
    torch._dynamo.reset()


@pytest.mark.parametrize("device", [d for d in DEVICES if d != "mps"])
def test_bf16_autocast_trains_evaluates_and_samples_from_float32_logits(
    device, dataset, tmp_path, run, monkeypatch, dynamo_eager
):
    """bf16 autocast (the CPU's stands in for CUDA's): finite losses, valid tokens from the eager and the
    compiled cached step, and the logits that reach sample_tokens and the likelihood are float32."""
    model = tiny(0.5, big=False, device=device)
    x = torch.randint(0, 11, (4, 24), generator=gen(0)).to(device)
    seen, real = [], eso.sample_tokens
    monkeypatch.setattr(
        eso,
        "sample_tokens",
        lambda logits, *a, **k: seen.append(logits.dtype) or real(logits, *a, **k),
    )
    with torch.autocast(device, dtype=torch.bfloat16):
        loss, _ = model.loss(x, generator=gen(1, device))
        loss.backward()
        model.eval()
        with torch.no_grad():
            val = model.loss(x, "elbo", gen(2, device))[0]
            assert (
                model.logits(model.hidden(x, torch.arange(24, device=device).expand(4, -1))).dtype
                == torch.float32
            )
            bound = model.likelihood(x, 2, gen(3, device))
        runs = [
            model.generate(3, 6, compile=compile, generator=gen(4, device))
            for compile in (False, True)
        ]
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
        *TINY,
    )
    assert code == 0 and "bfloat16" in out, err


# ============================================================================= the pipeline
# data/prepare.py, train.py, sample.py and evaluate.py as a user runs them; in this process where
# a subprocess is not the point (cli.run gives the same exit status and output), in one where it is.


def corpus_text(n_topics=40):
    import pydoc_data.topics as topics

    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics)[:n_topics])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A small byte-level dataset in data/<unique name>, removed afterwards."""
    src = tmp_path_factory.mktemp("text") / "corpus.txt"
    src.write_text(corpus_text())
    name = f"pytest-{os.getpid()}"
    out, meta = prepare.prepare(inputs=[str(src)], name=name)
    yield name
    for f in out.iterdir():
        f.unlink()
    out.rmdir()


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """A tiny model trained 6 iterations with EMA (validation at 3 and 6), and an alpha_0 = 0 judge."""
    out, judge = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("judge")
    for d, extra in (
        (out, ["--max_iters=6", "--eval_interval=3", "--ema=0.5"]),
        (judge, ["--alpha_0=0", "--max_iters=2", "--eval_interval=2"]),
    ):
        with pytest.raises(SystemExit) as e:
            cli.run(
                train.main, "train.py", [f"--dataset={dataset}", f"--out_dir={d}", *extra, *TINY]
            )
        assert e.value.code == 0
    return out, judge


def log_of(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]


def train_losses(out_dir):
    return {r["iter"]: r["loss"] for r in log_of(out_dir) if "loss" in r}


def max_weight_difference(a, b):
    a, b = (torch.load(Path(d) / "ckpt.pt", weights_only=True)["model"] for d in (a, b))
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_prepare_writes_tokens_that_decode_back_to_the_text(tmp_path):
    src = tmp_path / "a.txt"
    paragraphs = [
        f"Paragraph {i}: the quick brown fox jumps over the lazy dog, {'é' * (i % 3)} {i * i}."
        for i in range(400)
    ]
    src.write_text("\n\n".join(paragraphs))
    name = f"pytest-decode-{os.getpid()}"
    try:
        out, meta = prepare.prepare(inputs=[str(src)], name=name, val_fraction=0.1)
        enc = prepare.get_tokenizer("bytes")
        train_ids, val_ids, meta2 = prepare.load_dataset(name, 32)
        assert (
            meta2 == meta
            and meta["train_tokens"] == len(train_ids)
            and meta["val_tokens"] == len(val_ids)
        )
        assert (
            meta["documents"] == 400 and meta["vocab_size"] == 256 and meta["tokenizer"] == "bytes"
        )
        val_docs = enc.decode(val_ids.tolist()).split("\n\n")[:-1]
        assert val_docs == paragraphs[9::10]  # every 10th paragraph, deterministically
        assert enc.decode(train_ids.tolist()).split("\n\n")[:-1] == [
            p for i, p in enumerate(paragraphs) if i % 10 != 9
        ]
        with pytest.raises(prepare.PrepareError, match="--overwrite"):
            prepare.prepare(inputs=[str(src)], name=name)
        before = (out / "train.bin").read_bytes()
        src.write_text("tiny")
        with pytest.raises(prepare.PrepareError, match="too short"):
            prepare.prepare(inputs=[str(src)], name=name, overwrite=True)
        assert (out / "train.bin").read_bytes() == before and (
            out / "meta.json"
        ).exists()  # nothing lost
        assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
        with pytest.raises(prepare.PrepareError, match="fewer than one training sequence"):
            prepare.load_dataset(name, 10**6)
    finally:
        for f in (ROOT / "data" / name).glob("*"):
            f.unlink()
        (ROOT / "data" / name).rmdir()


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
def test_prepare_rejects_bad_input_with_one_line(tmp_path, case, msg):
    f = tmp_path / "in.txt"
    f.write_bytes(
        {
            "empty": b"  \n",
            "latin1": "caf\xe9 ol\xe9".encode("latin1"),
            "short": b"hello\n\nworld",
        }.get(case, b"x")
    )
    target = {"missing": tmp_path / "nope.txt", "folder": tmp_path}.get(case, f)
    name = {"name": "../escape", "noname": None}.get(case, f"pytest-bad-{case}")
    args = ["data/prepare.py", "--input", str(target)] + (["--name", name] if name else [])
    r = py(*args)
    assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, (
        r.stderr
    )
    assert not (ROOT / "data" / f"pytest-bad-{case}").exists()  # nothing half-written


def test_prepare_never_writes_through_a_symlink(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text(corpus_text())
    link = ROOT / "data" / f"pytest-link-{os.getpid()}"
    link.symlink_to(tmp_path, target_is_directory=True)
    try:
        with pytest.raises(prepare.PrepareError, match="symbolic link"):
            prepare.prepare(inputs=[str(src)], name=link.name)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    finally:
        link.unlink()


def test_prepare_gpt2_offline_says_how_to_fix_it(monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(prepare.PrepareError, match="TIKTOKEN_CACHE_DIR") as e:
        prepare.get_tokenizer("gpt2")
    assert "--tokenizer bytes" in str(e.value)


def test_prepare_interrupted_says_so(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "prepare", interrupted)
    with pytest.raises(SystemExit) as e:
        prepare.main(["--name", "never"])
    assert e.value.code == 130
    assert capsys.readouterr().err == "data/prepare.py: error: interrupted; nothing was written\n"


def test_scripts_stand_on_eso_and_the_data_floor_only():
    """Two floors: no script imports another script, and nothing edits sys.path."""
    for path in [
        "eso.py",
        "cli.py",
        "train.py",
        "sample.py",
        "evaluate.py",
        "bench.py",
        "data/prepare.py",
    ]:
        text = (ROOT / path).read_text()
        assert not re.search(r"^(from|import) (train|sample|bench|evaluate)\b", text, re.M), path
        assert not re.search(r"sys\.path\.(insert|append)", text), path


def test_cli_errors_are_one_line_and_help_lists_every_default(run, capsys):
    for args, msg in [
        (["--max_iter=3"], "did you mean --max_iters"),
        (["--max_iters=1.5"], "integer"),
        (["--learning_rate=fast"], "a number"),
        (["--alpha_0=1.5"], "alpha_0"),
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
    config, given = cli.parse(
        train.CONFIG,
        ["--learning_rate=1", "--compile=False", "--batch_split", "0.25", "--eval_only"],
        "",
    )
    assert (
        config["learning_rate"] == 1.0
        and config["compile"] is False
        and config["batch_split"] == 0.25
    )
    assert config["eval_only"] is True and given == {
        "learning_rate",
        "compile",
        "batch_split",
        "eval_only",
    }
    import bench

    for module in (train, sample, evaluate, bench):
        with pytest.raises(SystemExit) as e:
            cli.parse(module.CONFIG, ["--help"], module.__doc__)
        out = capsys.readouterr().out
        assert e.value.code == 0 and out.startswith(module.__doc__.strip())
        for key, (default, note, *_) in module.CONFIG.items():
            assert f"--{key}={default!r}" in out and note in out, (module, key)
    r = py("train.py", "--help")  # and from a shell
    assert r.returncode == 0 and "--alpha_0=0.0625" in r.stdout and "--eval_only=False" in r.stdout


def test_word_and_blank_shares():
    vocab = evaluate.corpus_words("The while statement repeats.")
    texts = ["the WHILE loop", "xy repeats,   "]  # "xy" is too short to count
    assert evaluate.word_share(texts, vocab, 3) == (3, 4) and evaluate.word_share(
        texts, vocab, 4
    ) == (2, 3)
    assert evaluate.blank_share(["ab   c", "d  e"]) == 3 / 10
    assert evaluate.unigram_entropy(torch.tensor([[1, 1, 2, 2]])) == pytest.approx(math.log(2))


def test_evaluate_draws_what_sample_draws():
    for key in (
        "steps",
        "alpha_0",
        "top_p",
        "temperature",
        "block_order",
        "compile",
        "seed",
        "device",
        "dtype",
    ):
        assert evaluate.CONFIG[key] == sample.CONFIG[key], key


def test_sample_compiled_prints_the_samples_of_the_eager_step(trained, run, dynamo_eager):
    out, _ = trained
    eager = run(sample, f"--out_dir={out}", "--num_samples=2", "--steps=8")
    compiled = run(sample, f"--out_dir={out}", "--num_samples=2", "--steps=8", "--compile=True")
    assert eager[0] == compiled[0] == 0 and "compiling included" in compiled[1]
    assert eager[1].splitlines()[:-1] == compiled[1].splitlines()[:-1]  # all but the summary line


def test_train_sample_evaluate_pipeline(dataset, trained, run):
    out, judge = trained
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)  # tensors and plain values only
    assert (
        ckpt["iter_num"] == 6
        and ckpt["tokenizer"] == "bytes"
        and ckpt["config"]["block_size"] == 32
    )
    assert not any(k.startswith("_orig_mod") for k in ckpt["model"])
    vals = [rec["val"]["nelbo"] for rec in log_of(out) if "val" in rec]
    assert len(vals) == 2 and all(math.isfinite(v) for v in vals)
    code, stdout, err = run(sample, f"--out_dir={out}", "--num_samples=2", "--steps=8")
    assert code == 0 and "NFE" in stdout and "tokens/s" in stdout and stdout.count("-" * 60) == 2, (
        err
    )
    code, stdout, _ = run(
        sample, f"--out_dir={out}", "--num_samples=1", "--steps=8", "--prompt=The for statement"
    )
    assert code == 0 and stdout.startswith("The for statement"), stdout
    code, stdout, err = run(
        sample,
        f"--out_dir={out}",
        "--num_samples=1",
        "--steps=4",
        "--infill=Hello {{5}} world{{3}}!",
        "--show_steps=True",
    )
    assert code == 0, err
    final = stdout.split("--- step")[-1].split("\n", 1)[1]
    assert final.startswith("Hello ") and final.split("\n")[0].count(" world") >= 1
    assert (
        "--- step 0 ---\nHello _____ world___!___________\n" in stdout
    )  # the canvas before any step
    for args, msg in [
        (["--prompt=" + "x" * 40], "longer than the model's context"),
        (["--top_p=0"], "top_p"),
        (["--temperature=0"], "temperature"),
        (["--steps=0"], "steps"),
        (["--infill=no spans"], "span"),
        (["--prompt=FILE:/nonexistent.txt"], "cannot read"),
        (["--num_samples=0"], "num_samples"),
        (["--prompt=a", "--infill=b {{2}}"], "not both"),
    ]:
        code, _, err = run(sample, f"--out_dir={out}", *args)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, (args, err)
    code, stdout, err = run(
        train, f"--out_dir={out}", "--eval_only=True", "--num_orders=4", f"--dataset={dataset}"
    )
    assert code == 0, err
    res = json.loads(stdout.strip().splitlines()[-1])
    assert (
        res["step"] == 6
        and res["nelbo"] == pytest.approx(vals[-1])
        and math.isfinite(res["iw_bound"])
    )
    code, stdout, err = run(
        evaluate,
        f"--out_dir={out}",
        "--num_samples=4",
        "--steps=8",
        f"--judge={judge}",
        "--seeds=2",
    )
    assert code == 0, err
    res = json.loads(stdout.strip().splitlines()[-1])
    assert len(res["runs"]) == 2 and res["num_samples"] == 4 and "median of 2 seeds" in stdout
    for r in res["runs"]:
        assert math.isfinite(r["judge_nll"]) and 0 < r["entropy"] <= math.log(32)
        assert 0 <= r["words3"] <= 1 and 0 <= r["words4"] <= 1 and 0 <= r["blank"] <= 1
    code, _, err = run(evaluate, f"--out_dir={out}", f"--judge={out}")
    assert code == 2 and "needs an alpha_0 = 0 model" in err


def test_readme_commands_in_a_shell(dataset, tmp_path):
    """train.py then sample.py, as separate processes, the way the README runs them."""
    out = tmp_path / "run"
    r = py(
        "train.py",
        f"--dataset={dataset}",
        f"--out_dir={out}",
        "--max_iters=2",
        "--eval_interval=2",
        *TINY,
    )
    assert r.returncode == 0 and "step 2: val NELBO" in r.stdout and "parameters" in r.stdout, (
        r.stderr
    )
    assert (
        "global batch 4 sequences = 4 per micro-batch x 1 micro-batch x 1 process: 128 tokens"
        in r.stdout
    )
    r = py("sample.py", f"--out_dir={out}", "--num_samples=1", "--steps=8")
    assert r.returncode == 0 and "NFE" in r.stdout, r.stderr


def test_learning_rate_schedule():
    c = dict(learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=110, lr_schedule="cosine")
    lr = [train.get_lr(it, c) for it in range(200)]
    assert lr[0] == pytest.approx(1 / 11) and lr[9] == pytest.approx(10 / 11)  # linear warmup
    assert lr[10] == pytest.approx(1.0) and lr[60] == pytest.approx(0.55)  # cosine: peak, half way
    assert lr[110] == pytest.approx(0.1) and lr[199] == pytest.approx(
        0.1
    )  # min_lr from max_iters on
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))
    assert train.get_lr(50, c | {"lr_schedule": "constant"}) == 1.0


def test_ema_update_rule():
    ema, model = tiny(seed=0), tiny(seed=1)
    before = [p.clone() for p in ema.parameters()]
    train.ema_update(ema, model, 0.9, it=100)  # decay min(0.9, 101 / 110) = 0.9
    for p0, p_ema, p in zip(before, ema.parameters(), model.parameters()):
        torch.testing.assert_close(p_ema, 0.9 * p0 + 0.1 * p)
    before = [p.clone() for p in ema.parameters()]
    train.ema_update(ema, model, 0.9999, it=0)  # warmup: decay (1 + 0) / (10 + 0) = 0.1
    for p0, p_ema, p in zip(before, ema.parameters(), model.parameters()):
        torch.testing.assert_close(p_ema, 0.1 * p0 + 0.9 * p)


def test_evaluation_and_sampling_use_the_ema_weights(dataset, trained, run):
    out, _ = trained
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    ema, _ = cli.load_checkpoint(out / "ckpt.pt")
    raw, _ = cli.load_checkpoint(out / "ckpt.pt", ema=False)
    assert all(torch.equal(ema.state_dict()[k], ckpt["ema"][k]) for k in ckpt["ema"])
    assert all(torch.equal(raw.state_dict()[k], ckpt["model"][k]) for k in ckpt["model"])
    assert not all(torch.equal(ckpt["ema"][k], ckpt["model"][k]) for k in ckpt["model"])
    c = ckpt["train_config"]
    val = prepare.load_dataset(dataset, 32)[1]
    with_ema, with_raw = (
        train.evaluate(m, val, c, cli.precision("cpu")[1])["nelbo"] for m in (ema, raw)
    )
    assert with_ema != with_raw
    code, stdout, _ = run(train, f"--out_dir={out}", "--eval_only=True", f"--dataset={dataset}")
    assert code == 0 and json.loads(stdout.splitlines()[-1])["nelbo"] == pytest.approx(
        with_ema, rel=1e-6
    )
    code, stdout, _ = run(
        sample,
        f"--out_dir={out}",
        "--num_samples=4",
        "--steps=8",
        "--seed=5",
        "--temperature=1",
        "--top_p=1",
    )
    enc = prepare.get_tokenizer("bytes")
    for model, same in ((ema, True), (raw, False)):
        tokens, _ = model.generate(4, 8, temperature=1, top_p=1, generator=gen(5))
        printed = "".join(enc.decode(row.tolist()) + "\n" + "-" * 60 + "\n" for row in tokens)
        assert stdout.startswith(printed) == same


def test_ddp_two_gloo_processes_train_exactly_like_one_and_resume_on_one(dataset, tmp_path, run):
    """torchrun with no batch flag: 2 processes x 1 micro-batch of 4 = the global batch of one process
    with 2 micro-batches of 4; the same sequences and noise, so the same losses and weights. Resumed
    on one process with no batch flag, the run keeps its global batch of 8 and stays on the curve."""
    args = [
        f"--dataset={dataset}",
        "--eval_interval=4",
        *TINY,
    ]  # a constant learning rate after warmup
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "train.py",
            "--device=cpu",
            f"--out_dir={tmp_path / 'ddp'}",
            "--max_iters=4",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "global batch 8 sequences = 4 per micro-batch x 1 micro-batch x 2 processes" in r.stdout
    code, _, err = run(
        train,
        f"--out_dir={tmp_path / 'one'}",
        "--gradient_accumulation_steps=2",
        "--max_iters=8",
        *args,
    )
    assert code == 0, err
    code, stdout, err = run(
        train,
        f"--out_dir={tmp_path / 'ddp'}",
        "--init_from=resume",
        "--max_iters=8",
        f"--dataset={dataset}",
    )
    assert code == 0 and "resuming at step 4" in stdout, err
    assert "global batch 8 sequences = 4 per micro-batch x 2 micro-batches x 1 process" in stdout
    ddp, one = train_losses(tmp_path / "ddp"), train_losses(tmp_path / "one")
    assert sorted(ddp) == list(range(1, 9)) and all(
        ddp[i] == pytest.approx(one[i], rel=1e-5) for i in ddp
    )
    assert max_weight_difference(tmp_path / "ddp", tmp_path / "one") < 1e-5
    # a global batch that cannot be shared out is refused in one line
    code, _, err = run(
        train,
        f"--out_dir={tmp_path / 'ddp'}",
        "--init_from=resume",
        "--max_iters=9",
        f"--dataset={dataset}",
        "--batch_size=3",
    )
    assert (
        code == 2 and "global batch of 8 sequences does not split" in err and err.count("\n") == 1
    )


def test_gradient_accumulation_equals_a_bigger_batch(dataset, tmp_path, run):
    """At alpha_0 = 0 the loss draws no noise that matters: 2 micro-batches of 4 = 1 batch of 8."""
    args = [f"--dataset={dataset}", "--max_iters=3", "--eval_interval=3", "--alpha_0=0", *TINY]
    assert (
        run(train, f"--out_dir={tmp_path / 'accum'}", "--gradient_accumulation_steps=2", *args)[0]
        == 0
    )
    assert run(train, f"--out_dir={tmp_path / 'big'}", *args, "--batch_size=8")[0] == 0
    a, b = train_losses(tmp_path / "accum"), train_losses(tmp_path / "big")
    assert all(a[i] == pytest.approx(b[i], rel=1e-5) for i in (1, 2, 3))
    assert max_weight_difference(tmp_path / "accum", tmp_path / "big") < 1e-5


class NoFloat64(TorchFunctionMode):
    """Fails on any torch operation that makes a float64 tensor (what MPS cannot do)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            assert not (isinstance(t, torch.Tensor) and t.dtype == torch.float64), (
                f"{func} made a float64 tensor"
            )
        return out


def test_without_float64_sampling_and_validation_need_none(dataset, monkeypatch):
    """The MPS path, forced on the CPU: no float64 tensor anywhere, cached = uncached still, and
    validation gives the float64 path's numbers."""
    model = tiny(0.5)
    expected = [model.generate(2, 5, kv_cache=k, generator=gen(4))[0] for k in (True, False)]
    c = dict(eval_iters=2, batch_size=4, block_size=24)
    val = prepare.load_dataset(dataset, 32)[1] % 11
    wide = train.evaluate(model, val, c, cli.precision("cpu")[1])
    monkeypatch.setattr(eso, "has_float64", lambda device: False)
    with NoFloat64():
        tokens = [model.generate(2, 5, kv_cache=k, generator=gen(4))[0] for k in (True, False)]
        narrow = train.evaluate(model, val, c, cli.precision("cpu")[1])
        with pytest.raises(AssertionError, match="float64"):  # the guard itself works
            torch.zeros(2, dtype=torch.float64)
    assert torch.equal(tokens[0], tokens[1]) and not torch.equal(
        tokens[0], expected[0]
    )  # another law, same draws
    assert narrow == pytest.approx(wide, rel=1e-6)


def test_bench_runs_at_tiny_sizes(run, dynamo_eager):
    """bench.py end to end (in this process, tiny sizes, the compiled cases through Dynamo's eager
    backend) so that it cannot rot; its JSON has every figure."""
    import bench

    code, stdout, err = run(
        bench,
        "--lengths=32",
        "--n_layer=1",
        "--n_head=2",
        "--n_embd=32",
        "--repeats=1",
        "--parallel=4",
        "--train_alphas=1,0.5,0",
        "--big_vocab=500",
        "--fresh=False",
    )
    assert code == 0, err
    res = json.loads(stdout.strip().splitlines()[-1])
    methods = {r["method"] for r in res["sampling"]}
    assert {
        "floor_2row",
        "floor_1row",
        "eso_cached",
        "eso_alpha0",
        "ar",
        "eso_T=L/4",
        "eso_uncached",
        "gpt2_vocab",
        "eso_compiled",
        "eso_compiled_T=L/16",
    } <= methods
    ratios = res["ratios"]["32"]
    assert ratios["step_over_2row_floor"] > 0 and 0 < ratios["gpt2_vocab_sampling_share"] < 1
    assert ratios["eso_compiled_over_floor"] > 0 and ratios["compiled_over_eager"] > 0
    compiled = next(r for r in res["sampling"] if r["method"] == "eso_compiled_T=L/16")
    assert compiled["floor_rows"] > 2 and compiled["floor_kv_ms"] > 0 and "compile_s" in compiled
    assert eso.static_window.__name__ == "static_window"  # nothing left patched
    assert ("cached_over_hf_gpt2" in ratios) == ("hf_gpt2" in methods)
    for r in res["training"]:
        assert r["fast"] > 0 and r["dense"] > 0 and r["loss_diff"] < 1e-4 and r["grad_diff"] < 1e-4
    assert eso.sample_tokens.__module__ == "eso"  # nothing left patched


# ============================================================================= robustness


def wait_for(pred, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_and_resume_continues_the_same_curve(dataset, tmp_path, run, sig):
    # The LR is constant (TINY), so max_iters changes nothing but where a run ends: the
    # interrupted run cannot finish before the signal, and the reference stops where the resumed run does.
    args = [f"--dataset={dataset}", "--eval_interval=100000", *TINY]
    out = tmp_path / "run"
    p = subprocess.Popen(
        [sys.executable, "train.py", f"--out_dir={out}", "--max_iters=100000", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_for(
        lambda: (
            (out / "log.jsonl").exists() and len((out / "log.jsonl").read_text().splitlines()) >= 3
        )
    )
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 128 + sig, stderr
    stopped = torch.load(out / "ckpt.pt", weights_only=True)["iter_num"]
    end = stopped + 5
    assert stopped >= 3 and f"at step {stopped}: saved" in stdout
    code, stdout, err = run(
        train,
        f"--out_dir={out}",
        "--init_from=resume",
        f"--max_iters={end}",
        f"--dataset={dataset}",
    )
    assert code == 0 and f"resuming at step {stopped}" in stdout, err
    assert run(train, f"--out_dir={tmp_path / 'ref'}", f"--max_iters={end}", *args)[0] == 0
    a, b = train_losses(tmp_path / "ref"), train_losses(out)
    assert sorted(b) == list(range(1, end + 1))
    assert [b[i] for i in range(1, end + 1)] == [
        a[i] for i in range(1, end + 1)
    ]  # the same curve, exactly


def test_kill_9_leaves_the_previous_checkpoint_loadable(dataset, tmp_path, run):
    out = tmp_path / "run"
    for delay in (0.0, 0.13, 0.31):
        p = subprocess.Popen(
            [
                sys.executable,
                "train.py",
                f"--out_dir={out}",
                f"--dataset={dataset}",
                "--max_iters=100000",
                "--eval_interval=1",
                *TINY,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert wait_for(lambda: (out / "ckpt.pt").exists())
        time.sleep(delay)
        p.kill()
        p.wait()
        cli.load_checkpoint(out / "ckpt.pt")
    code, _, err = run(
        train,
        f"--out_dir={out}",
        "--init_from=resume",
        f"--dataset={dataset}",
        "--max_iters=3",
        "--eval_interval=100",
    )
    assert code == 0, err


def test_interrupted_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    train.save_checkpoint(path, {"version": 1})

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(cli.UserError, match="previous checkpoint is intact"):
        train.save_checkpoint(path, {"version": 2})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(dataset, tmp_path, monkeypatch, run):
    out = tmp_path / "run"
    calls = {"n": 0}
    real_forward = eso.EsoLM.forward

    def poisoned(self, x, draws, loss_type=None, dense=False):
        loss, parts = real_forward(self, x, draws, loss_type, dense)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 7:  # the 7th training step (step 6) goes bad
                loss = loss * float("nan")
        return loss, parts

    monkeypatch.setattr(eso.EsoLM, "forward", poisoned)
    code, _, err = run(
        train,
        f"--dataset={dataset}",
        f"--out_dir={out}",
        "--max_iters=20",
        "--eval_interval=4",
        *TINY,
    )
    err = err.strip()
    assert (
        code == 1 and err.startswith("train.py: error: loss is nan at step 6") and "\n" not in err
    )
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == 4  # the last good one


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoints_that_would_run_code_are_refused(tmp_path, run):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil" / "ckpt.pt"
    path.parent.mkdir()
    torch.save({"model": Exploit(marker), "config": {}, "tokenizer": "bytes", "iter_num": 0}, path)
    with pytest.raises(cli.CheckpointError, match="arbitrary code"):
        cli.load_checkpoint(path)
    code, _, err = run(sample, f"--out_dir={path.parent}")
    assert code == 2 and "arbitrary code" in err
    assert not marker.exists()  # the code did not run...
    torch.load(path, weights_only=False)  # ...and it would have, with a plain unpickler
    assert marker.exists()


# ----------------------------------------------------------------------------- the authors' released models


def reference_dit(V=11, C=32, H=4, n_layer=2, cond=16, seed=0):
    """A state dict in the layout of the authors' EsoLMDiT, random everywhere (adaLN included)."""
    g = gen(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.3  # noqa: E731
    sd = {
        "vocab_embed.embedding": r(V + 1, C),
        "sigma_map.mlp.0.weight": r(cond, 256),
        "sigma_map.mlp.0.bias": r(cond),
        "sigma_map.mlp.2.weight": r(cond, cond),
        "sigma_map.mlp.2.bias": r(cond),
        "rotary_emb.inv_freq": 1.0 / 10000 ** (torch.arange(0, C // H, 2).float() / (C // H)),
        "output_layer.norm_final.weight": 1 + r(C),
        "output_layer.adaLN_modulation.weight": r(2 * C, cond),
        "output_layer.adaLN_modulation.bias": r(2 * C),
        "output_layer.linear.weight": r(V + 1, C),
        "output_layer.linear.bias": r(V + 1),
    }
    for i in range(n_layer):
        sd |= {
            f"blocks.{i}.{k}": v
            for k, v in {
                "norm1.weight": 1 + r(C),
                "attn_qkv.weight": r(3 * C, C),
                "attn_out.weight": r(C, C),
                "norm2.weight": 1 + r(C),
                "mlp.0.weight": r(4 * C, C),
                "mlp.0.bias": r(4 * C),
                "mlp.2.weight": r(C, 4 * C),
                "mlp.2.bias": r(C),
                "adaLN_modulation.weight": r(6 * C, cond),
                "adaLN_modulation.bias": r(6 * C),
            }.items()
        }
    return sd


def reference_dit_logits(sd, tokens, pos, mask, H=4):
    """The DiT with adaLN, written from its equations (sigma = 0; rotate-half rotary at pos; weight-only
    LayerNorms; modulate(x) = x (1 + scale) + shift; x += gate * branch): logits over V + 1 tokens."""
    C = sd["vocab_embed.embedding"].size(1)
    half = sd["sigma_map.mlp.0.weight"].size(1) // 2
    args = 0.0 * torch.exp(-math.log(10000) * torch.arange(half) / half)  # sigma = 0
    feat = torch.cat([torch.cos(args), torch.sin(args)])
    c = F.silu(
        F.linear(
            F.silu(F.linear(feat, sd["sigma_map.mlp.0.weight"], sd["sigma_map.mlp.0.bias"])),
            sd["sigma_map.mlp.2.weight"],
            sd["sigma_map.mlp.2.bias"],
        )
    )
    angles = pos[..., None].float() * sd["rotary_emb.inv_freq"]  # (B, T, d/2)
    cos, sin = (
        torch.cat([angles.cos()] * 2, -1)[:, :, None],
        torch.cat([angles.sin()] * 2, -1)[:, :, None],
    )

    def rotary(t):  # t: (B, T, H, d)
        t1, t2 = t.chunk(2, -1)
        return t * cos + torch.cat([-t2, t1], -1) * sin

    def norm(x, w, shift, scale):
        return F.layer_norm(x, [C]) * w * (1 + scale) + shift

    x = sd["vocab_embed.embedding"][tokens]
    for i in range(len({k.split(".")[1] for k in sd if k.startswith("blocks.")})):
        b = lambda n: sd[f"blocks.{i}.{n}"]  # noqa: E731
        sh1, sc1, g1, sh2, sc2, g2 = F.linear(
            c, b("adaLN_modulation.weight"), b("adaLN_modulation.bias")
        ).chunk(6)
        qkv = F.linear(norm(x, b("norm1.weight"), sh1, sc1), b("attn_qkv.weight"))
        q, k, v = qkv.view(*x.shape[:2], 3, H, -1).unbind(2)  # (B, T, H, d) each
        o = F.scaled_dot_product_attention(
            rotary(q).transpose(1, 2), rotary(k).transpose(1, 2), v.transpose(1, 2), attn_mask=mask
        )
        x = x + g1 * F.linear(o.transpose(1, 2).flatten(2), b("attn_out.weight"))
        y = F.linear(norm(x, b("norm2.weight"), sh2, sc2), b("mlp.0.weight"), b("mlp.0.bias"))
        y = F.gelu(y, approximate="tanh")
        x = x + g2 * F.linear(y, b("mlp.2.weight"), b("mlp.2.bias"))
    shift, scale = F.linear(
        c, sd["output_layer.adaLN_modulation.weight"], sd["output_layer.adaLN_modulation.bias"]
    ).chunk(2)
    return F.linear(
        norm(x, sd["output_layer.norm_final.weight"], shift, scale),
        sd["output_layer.linear.weight"],
        sd["output_layer.linear.bias"],
    )


def test_a_folded_reference_dit_gives_the_same_log_probabilities():
    """EsoLM.from_reference folds the constant adaLN of a random DiT (written in this test from its
    equations) into LayerNorm and projection weights: the same log-probabilities on sorted, partly masked
    inputs, causal (the diffusion term) and through the 2L mask (the sequential term)."""
    sd = reference_dit()
    model = eso.EsoLM.from_reference(
        {"backbone." + k: v for k, v in sd.items()}, n_head=4, block_size=16, alpha_0=0.5
    )
    assert model.config.bias and model.config.vocab_size == 11 and model.config.n_layer == 2
    tokens = torch.randint(0, 12, (2, 16), generator=gen(1))  # 11 = [MASK]
    pos = torch.rand(2, 16, generator=gen(2)).argsort(1)
    causal = eso.prefix_lm_mask(torch.arange(16), 16)
    two_l = eso.sequential_mask(causal)
    with torch.no_grad():
        for idx, p, mask in (
            (tokens, pos, causal),
            (torch.cat([tokens, tokens], 1), torch.cat([pos, pos], 1), two_l),
        ):
            theirs = F.log_softmax(reference_dit_logits(sd, idx, p, mask)[..., :11], -1)
            ours = F.log_softmax(model.logits(model.hidden(idx, p, mask)), -1)
            assert (ours - theirs).abs().max() < 1e-4


class _FakeNode:  # omegaconf's nodes pickle their __dict__, the value under _val
    def __init__(self, value):
        self._val = value


class _FakeDictConfig:  # and its containers under _content
    def __init__(self, d):
        self._content = {
            k: _FakeDictConfig(v) if isinstance(v, dict) else _FakeNode(v) for k, v in d.items()
        }


def lightning_file(path, sd, ema=True, marker=None, **algo):
    """A file shaped like the authors' Lightning checkpoint: the backbone, its EMA (a list in the order of its
    parameters), a config object, a tokenizer-like object from a module that is not installed, and, with
    marker, an object whose unpickling would run a command."""
    import types

    module = types.ModuleType("not_installed_tokenizers")
    module.Tokenizer = type("Tokenizer", (), {"__module__": "not_installed_tokenizers"})
    sys.modules["not_installed_tokenizers"] = module
    params = [k for k in sd if k != "rotary_emb.inv_freq"]
    config = {
        "model": {"n_heads": 4, "length": 16},
        "algo": {"alpha_0": 0.5, "batch_split": 0.5, **algo},
        "data": {"tokenizer_name_or_path": "gpt2"},
    }
    try:
        torch.save(
            {
                "state_dict": {"backbone." + k: v for k, v in sd.items()},
                "global_step": 250_000,
                "hyper_parameters": {
                    "config": _FakeDictConfig(config),
                    "tokenizer": module.Tokenizer(),
                },
                "ema": {
                    "decay": 0.9999,
                    "num_updates": 7,
                    "shadow_params": [sd[k] + 1 for k in params],
                }
                if ema
                else None,
                "callbacks": {"x": Exploit(marker)} if marker else {},
            },
            path,
        )
    finally:
        del sys.modules["not_installed_tokenizers"]


def test_the_authors_checkpoint_loads_with_its_ema_and_runs_nothing(tmp_path):
    sd, marker = reference_dit(), tmp_path / "pwned"
    lightning_file(tmp_path / "esolm.ckpt", sd, marker=marker)
    model, ckpt = cli.load_checkpoint(tmp_path / "esolm.ckpt")
    assert not marker.exists()  # the command was named, stood in for, and never run
    ema = eso.EsoLM.from_reference(
        {k: v + (k != "rotary_emb.inv_freq") for k, v in sd.items()}, 4, 16, 0.5
    )
    for a, b in zip(model.state_dict().values(), ema.state_dict().values()):
        assert torch.equal(
            a, b
        )  # the EMA weights (the shadow list follows the parameters, not the buffer)
    assert (
        ckpt["tokenizer"],
        ckpt["iter_num"],
        model.config.alpha_0,
        model.config.batch_split,
    ) == ("gpt2", 250_000, 0.5, 0.5)
    raw, _ = cli.load_checkpoint(tmp_path / "esolm.ckpt", ema=False)
    assert torch.equal(raw.wte.weight, sd["vocab_embed.embedding"])
    assert eso.EsoLM.from_reference(sd, 4, 16, 0.5, variant="A").config.variant == "A"


def test_the_authors_checkpoint_problems_get_one_clear_line(tmp_path, capsys):
    sd = reference_dit()
    lightning_file(tmp_path / "no_ema.ckpt", sd, ema=False)
    model, ckpt = cli.load_checkpoint(tmp_path / "no_ema.ckpt")
    assert ckpt["ema"] is None and "holds no EMA weights" in capsys.readouterr().err
    for case, broken, msg in [
        ("unknown", sd | {"blocks.0.extra.weight": torch.ones(3)}, "unknown keys"),
        ("missing", {k: v for k, v in sd.items() if "mlp.2.bias" not in k}, "missing keys"),
        ("shape", sd | {"blocks.1.norm2.weight": torch.ones(7)}, "blocks.1.norm2.weight (7,)"),
    ]:
        lightning_file(tmp_path / f"{case}.ckpt", broken, ema=case != "shape")
        with pytest.raises(cli.CheckpointError, match=re.escape(msg)) as e:
            cli.load_checkpoint(tmp_path / f"{case}.ckpt")
        assert "\n" not in str(e.value)


def test_sample_and_eval_take_the_authors_checkpoint(dataset, tmp_path, run, monkeypatch):
    """sample.py --init_from and train.py --eval_only --init_from with an authors'-style file (byte tokens
    stand in for GPT-2's, which need files this machine cannot download)."""
    sd = reference_dit(V=256)
    lightning_file(tmp_path / "esolm.ckpt", sd)
    monkeypatch.setattr(sample, "get_tokenizer", lambda name: prepare.get_tokenizer("bytes"))
    code, out, err = run(
        sample,
        f"--init_from={tmp_path / 'esolm.ckpt'}",
        "--num_samples=2",
        "--steps=4",
        "--prompt=The",
    )
    assert code == 0 and out.count("The") >= 2 and "NFE" in out, err
    real_load = train.load_dataset
    monkeypatch.setattr(
        train,
        "load_dataset",
        lambda *a: (*real_load(*a)[:2], real_load(*a)[2] | {"tokenizer": "gpt2"}),
    )
    code, out, err = run(
        train,
        "--eval_only=True",
        f"--init_from={tmp_path / 'esolm.ckpt'}",
        f"--dataset={dataset}",
        "--eval_iters=2",
        "--batch_size=4",
        "--num_orders=2",
        f"--out_dir={tmp_path}",
    )
    assert code == 0 and "EMA weights" in out and "IW bound (K=2)" in out, err
    assert json.loads(out.strip().splitlines()[-1])["step"] == 250_000


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
        assert {
            "truncated": "truncated or corrupt",
            "random": "truncated or corrupt",
            "not_ours": "not an Eso-LM",
            "bad_config": "incompatible model config",
            "bad_weights": "do not fit",
            "folder": "is a folder",
        }[case] in err, err
    code, _, err = run(sample, f"--out_dir={tmp_path / 'nothing'}")
    assert code == 2 and "no checkpoint at" in err
    code, _, err = run(
        train, f"--out_dir={out}", "--init_from=resume", "--n_layer=3", f"--dataset={dataset}"
    )
    assert code == 2 and "conflicts with the checkpoint" in err


def test_unwritable_output_and_short_corpus_fail_before_training(dataset, tmp_path, run):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, _, err = run(
        train, f"--dataset={dataset}", f"--out_dir={blocker / 'out'}", "--max_iters=1", *TINY
    )
    assert code == 2 and "cannot write to --out_dir" in err
    code, _, err = run(
        train, f"--dataset={dataset}", f"--out_dir={tmp_path / 'o'}", *TINY, "--block_size=100000"
    )
    assert code == 2 and "fewer than one training sequence" in err
    assert not (tmp_path / "o" / "ckpt.pt").exists()
