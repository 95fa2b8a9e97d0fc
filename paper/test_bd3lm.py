"""Tests for paper/bd3lm.py, BD3-LM on the core's transformer. Offline, CPU, tiny models with large
random weights (the tiny fixture); from the repository root: `pytest paper/test_bd3lm.py`.

The sections follow bd3lm.py: the attention masks, the loss (its limits L' = 1, an AR model, and
L' = L, MDLM), the sampler, checkpoints."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import checkpoint
import eso
from paper import bd3lm
from paper.bd3lm import BD3LM


def gen(seed, device="cpu"):
    return torch.Generator(device).manual_seed(seed)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine two threads contend:
    one is faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def count_forwards(net):
    """A list that grows by one at every forward of the transformer net (its final LayerNorm
    runs once per forward), and the hook's handle."""
    calls = []
    handle = net.ln_f.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


def test_block_len_must_divide_the_length(tiny):
    with pytest.raises(ValueError, match="must divide"):
        BD3LM(tiny(L=16), 3)
    with pytest.raises(ValueError, match="block_len"):
        BD3LM(tiny(L=16), 0)


# ----------------------------------------------------------------------------- 1. masks


def brute_block_diffusion_mask(L, block_len):
    """The training mask as the BD3-LM paper words it, query by query: a token of x_t sees its
    own block of x_t and the earlier blocks of x_0; a token of x_0 sees its own and the earlier
    blocks of x_0, and nothing of x_t."""
    mask = torch.zeros(2 * L, 2 * L, dtype=torch.bool)
    for q in range(2 * L):
        for k in range(2 * L):
            q_in_x0 = q >= L
            k_in_x0 = k >= L
            q_block = (q % L) // block_len
            k_block = (k % L) // block_len
            if not q_in_x0:
                own_block = not k_in_x0 and k_block == q_block
                earlier_clean = k_in_x0 and k_block < q_block
                mask[q, k] = own_block or earlier_clean
            else:
                mask[q, k] = k_in_x0 and k_block <= q_block
    return mask


@pytest.mark.parametrize("L, block_len", [(6, 1), (6, 2), (6, 3), (6, 6), (8, 4)])
def test_block_diffusion_mask_matches_brute_force(L, block_len):
    mask = bd3lm.block_diffusion_mask(L, block_len, "cpu")
    assert mask.shape == (1, 1, 2 * L, 2 * L)
    assert torch.equal(mask[0, 0], brute_block_diffusion_mask(L, block_len))


def test_block_size_one_mask_is_eso_lms_sequential_mask_exactly():
    """With L' = 1 the block-diffusion mask over [x_t ; x_0] equals Eso-LM's sequential mask over
    [z_0 ; x] (eso.sequential_mask of the causal x_mask), in position order, exactly: entry for
    entry, the z-slot self-attention included. An x_t (z) query sees its own block, which is
    itself (the z-to-z diagonal), and the x_0 blocks strictly before it (the x slots j < i); an
    x_0 query sees x_0 at or before it (causal), and nothing attends to x_t but itself. So "Eso-
    LM's sequential mask is BD3-LM's with block size 1" holds with no exception; in decode order
    it holds for the sequence sorted by sigma."""
    L = 7
    causal = eso.prefix_lm_mask(torch.arange(L), L)  # (1, 1, L, L)
    expected = eso.sequential_mask(causal)  # (1, 1, 2L, 2L)
    assert torch.equal(bd3lm.block_diffusion_mask(L, 1, "cpu"), expected)


# ----------------------------------------------------------------------------- 2. the loss


def test_times_are_stratified_over_rows_and_blocks_and_shared_within_a_block(tiny):
    L = 16
    block_len = 4
    model = BD3LM(tiny(L=L), block_len)
    x = torch.randint(0, 11, (5, L), generator=gen(0))
    t, masked = model.draws(x, gen(1))
    assert t.shape == masked.shape == (5, L)
    t_block = t.view(5, 4, block_len)
    assert (t_block == t_block[:, :, :1]).all()  # one t per (row, block)
    n = 5 * 4
    strata = ((t_block[:, :, 0] - eso.T_EPS) / (1 - eso.T_EPS) * n).floor()
    assert strata.flatten().sort().values.tolist() == list(range(n))
    assert (t >= eso.T_EPS).all() and (t <= 1).all()


def ar_nll(net, x):
    """The AR NLL (nats per token) of the network, -sum_l log p(x_l | x_<l) / L, written
    independently of bd3lm: Eso-LM's loss at alpha_0 = 0 on the same transformer, which is its
    sequential term with every token masked, left to right (a [MASK] at l sees itself and x_<l)."""
    config = dataclasses.replace(net.config, alpha_0=0.0, batch_split=None)
    ar_model = eso.EsoLM(config)
    ar_model.load_state_dict(net.state_dict())
    loss, parts = ar_model.eval().loss(x)
    assert parts["diffusion"] == 0
    return loss


@torch.no_grad()
def test_block_size_one_nelbo_is_the_ar_nll_in_expectation(tiny):
    """L' = 1 is an autoregressive model.

    At t = 1 with every token masked (the authors' L' = 1 validation: eps_min = eps_max = 1), the
    loss is the AR NLL exactly. Over the draws: a token is scored with probability
    1 - alpha_t = t and weighted 1/t, and its prediction sees only itself and x_<l, so given any
    t its expected contribution is its AR term: the estimator is exactly unbiased for the AR NLL.
    That expectation over the masks is taken exactly below (the loss is linear in which tokens
    are masked), and the whole estimator's mean over draws lies within 4 standard errors of
    it."""
    L = 16
    net = tiny(L=L)
    model = BD3LM(net, 1)
    x = torch.randint(0, 11, (32, L), generator=gen(0))
    ar = ar_nll(net, x)
    every = torch.ones(32, L, dtype=torch.bool)
    at_one = model.nelbo(x, torch.ones(32, L), every)
    torch.testing.assert_close(at_one, ar, rtol=1e-5, atol=1e-5)

    # Exactly over the masks, at drawn times: sum_l P(l masked | t_l) * (the loss with l alone
    # masked), one row.
    row = x[:1]
    t, _ = model.draws(row, gen(1))  # (1, L)
    expectation = 0.0
    for position in range(L):
        alone = torch.zeros(1, L, dtype=torch.bool)
        alone[0, position] = True
        p_masked = t[0, position]  # 1 - alpha_t
        expectation += p_masked * model.nelbo(row, t, alone)
    torch.testing.assert_close(expectation, ar_nll(net, row), rtol=1e-5, atol=0)

    # The estimator as training draws it
    g = gen(2)
    losses = torch.stack([model.loss(x, g)[0] for _ in range(300)])
    mean = losses.mean()
    standard_error = losses.std() / len(losses) ** 0.5
    assert abs(mean - ar) < 4 * standard_error, (mean, ar, standard_error)


@torch.no_grad()
def test_one_block_loss_is_an_independently_written_mdlm_nelbo(tiny):
    """L' = L is MDLM: for the same draws, one bidirectional forward over z_t, masked tokens
    weighted by -alpha'_t / (1 - alpha_t), summed and divided by all tokens."""
    L = 16
    net = tiny(L=L)
    model = BD3LM(net, L)
    B = 6
    x = torch.randint(0, 11, (B, L), generator=gen(0))
    loss, parts = model.loss(x, gen(3))
    assert parts["sequential"] == 0
    t, masked = model.draws(x, gen(3))  # the same draws again
    assert (t == t[:, :1]).all()  # one block: one t per row
    z_t = torch.where(masked, net.mask_id, x)
    both_ways = torch.ones(L, L, dtype=torch.bool)
    logits = net.lm_head(net.hidden(z_t, torch.arange(L).expand(B, L), both_ways))
    ce = F.cross_entropy(logits.transpose(1, 2), x, reduction="none")  # (B, L)
    alpha_t = 1 - t  # the BD3-LM authors' schedule
    alpha_prime = -1.0
    weight = -alpha_prime / (1 - alpha_t)
    expected = (ce * masked * weight).sum() / (B * L)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("block_len", [1, 4, 16])
def test_one_block_fast_path_equals_the_2l_forward(block_len, tiny):
    """x_t alone through bidirectional attention (L' = L) computes what [x_t ; x_0] under the
    block-diffusion mask does; for L' < L both calls run the 2L forward."""
    L = 16
    model = BD3LM(tiny(L=L), block_len)
    x = torch.randint(0, 11, (4, L), generator=gen(0))
    t, masked = model.draws(x, gen(4))
    fast = model.nelbo(x, t, masked)
    dense = model.nelbo(x, t, masked, dense=True)
    torch.testing.assert_close(fast, dense, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_training_sees_what_the_sampler_feeds(tiny):
    """For each block b, the training forward's logits at x_t's block b equal the sampler's step
    logits for a canvas whose blocks before b are clean and block b is x_t's: training and
    sampling condition alike (whatever the canvas holds after block b)."""
    L = 16
    block_len = 4
    net = tiny(L=L)
    model = BD3LM(net, block_len)
    x = torch.randint(0, 11, (3, L), generator=gen(0))
    _, masked = model.draws(x, gen(5))
    x_t = torch.where(masked, net.mask_id, x)
    trained = model.denoise_logits(x_t, x)  # (B, L, V)
    for b in range(model.n_blocks):
        lo = b * block_len
        hi = lo + block_len
        canvas = torch.randint(0, 12, (3, L), generator=gen(b))  # anything after block b
        canvas[:, :lo] = x[:, :lo]
        canvas[:, lo:hi] = x_t[:, lo:hi]
        sampled = net.logits(model.block_hidden(canvas, b))  # (B, L', V)
        torch.testing.assert_close(sampled, trained[:, lo:hi], rtol=1e-4, atol=1e-4)


def test_training_on_a_tiny_structured_corpus_lowers_the_loss(tiny):
    """Rows count up from a random start, mod V: once learnt, each block is easy given the one
    before it."""
    L = 16
    V = 11
    net = tiny(L=L, V=V, big=False)
    model = BD3LM(net, 4).train()
    g = gen(0)

    def batch(n):
        start = torch.randint(0, V, (n, 1), generator=g)
        return (start + torch.arange(L)) % V

    held_out = batch(64)
    with torch.no_grad():
        before = model.loss(held_out, gen(1))[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(100):
        loss, _ = model.loss(batch(32), g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = model.loss(held_out, gen(1))[0]
    assert after < 0.25 * before, (before, after)


# ----------------------------------------------------------------------------- 3. the sampler


@pytest.mark.parametrize("block_len", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("steps", [3, 1000])
def test_cached_sampler_equals_the_uncached_one_and_counts_its_forwards(block_len, steps, tiny):
    L = 16
    net = tiny(L=L)
    model = BD3LM(net, block_len)
    calls, handle = count_forwards(net)
    samples = {}
    try:
        for kv_cache in (True, False):
            calls.clear()
            tokens, nfe = model.generate(
                5, steps, temperature=2.0, top_p=0.95, kv_cache=kv_cache, generator=gen(7)
            )
            assert nfe == len(calls)
            samples[kv_cache] = tokens
    finally:
        handle.remove()
    assert torch.equal(samples[True], samples[False])
    assert (samples[True] < net.mask_id).all()
    # no sampler looks exact by accident: many tokens, and rows that differ
    assert len(samples[True].unique()) > 3
    assert len({tuple(row) for row in samples[True].tolist()}) > 2


@pytest.mark.parametrize("block_len", [1, 4, 16])
def test_many_steps_decode_one_token_per_step_one_step_a_block_per_step(block_len, tiny):
    """T' = 10^6: a step unmasks two tokens of a block with probability below 10^-4 here, so one
    token per step: NFE = L, plus one store forward per block with the cache (L' < L). T' = 1:
    each block in one step, so NFE = 2 per block with the cache (the Eso-LM paper's Table 15
    count), 1 without, and 1 for MDLM (L' = L)."""
    L = 16
    model = BD3LM(tiny(L=L), block_len)
    n_blocks = L // block_len
    store_forwards = n_blocks if block_len < L else 0
    _, nfe = model.generate(3, 10**6, generator=gen(8))
    assert nfe == L + store_forwards
    _, nfe = model.generate(3, 10**6, kv_cache=False, generator=gen(8))
    assert nfe == L
    tokens, nfe = model.generate(3, 1, generator=gen(9))
    assert nfe == n_blocks + store_forwards
    assert (tokens < model.mask_id).all()
    _, nfe = model.generate(3, 1, kv_cache=False, generator=gen(9))
    assert nfe == n_blocks


@pytest.mark.parametrize("block_len", [4, 16])
def test_every_tensor_is_made_on_the_models_device(block_len, tiny, made_without_device):
    model = BD3LM(tiny(L=16, big=False), block_len)
    x = torch.randint(0, 11, (2, 16), generator=gen(0))
    torch.set_default_device("meta")
    try:
        with made_without_device() as spy:
            for kv_cache in (True, False):
                model.generate(2, 3, top_p=0.9, kv_cache=kv_cache, generator=gen(1))
            model.train()
            model.loss(x, gen(2))[0].backward()
            model.eval()
    finally:
        torch.set_default_device(None)
    assert spy.calls == []


# ----------------------------------------------------------------------------- 4. checkpoints


def test_checkpoints_load_with_the_core_loader_and_as_bd3lm(tmp_path, tiny):
    """A BD3-LM file is ours in format: the core loader reads its transformer when asked for any
    method, refuses it in one line when asked for an Eso-LM, and bd3lm.load reads it whole."""
    model = BD3LM(tiny(L=16), 4)
    path = tmp_path / "ckpt.pt"
    checkpoint.save(path, bd3lm.state(model, "bytes", 7, best_val_loss=1.5))
    with pytest.raises(checkpoint.CheckpointError, match="holds a bd3lm model, not an Eso-LM"):
        checkpoint.load(path)
    core, ckpt = checkpoint.load(path, method=None)
    assert ckpt["method"] == "bd3lm" and ckpt["block_len"] == 4 and ckpt["iter_num"] == 7
    loaded, _ = bd3lm.load(path)
    assert isinstance(core, eso.EsoLM) and loaded.block_len == 4
    for name, weight in model.transformer.state_dict().items():
        assert torch.equal(core.state_dict()[name], weight)
        assert torch.equal(loaded.transformer.state_dict()[name], weight)
    plain = tmp_path / "eso.pt"
    checkpoint.save(plain, checkpoint.state(core, core.config, "bytes", 0))
    with pytest.raises(checkpoint.CheckpointError, match="not a BD3-LM checkpoint"):
        bd3lm.load(plain)


def test_the_baselines_train_on_train_py_s_schedule_and_load_back(dataset, tmp_path, run):
    """paper/train_bd3lm.py: its learning rate is train.py's at every step, for both schedules;
    a tiny run writes a checkpoint of ours that loads back as the BD3-LM it trained."""
    import types

    import train
    from paper import train_bd3lm

    for schedule in ("cosine", "constant"):
        c = types.SimpleNamespace(
            learning_rate=1e-3, min_lr=1e-4, warmup_iters=7, max_iters=50, lr_schedule=schedule
        )
        assert [train_bd3lm.get_lr(i, c) for i in range(60)] == [
            train.get_lr(i, c) for i in range(60)
        ]
    out = tmp_path / "bd3"
    flags = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4"]
    flags += ["--max_iters=4", "--eval_interval=2", "--eval_iters=1", "--log_interval=1"]
    code, stdout, err = run(train_bd3lm, f"--dataset={dataset}", f"--out_dir={out}", *flags)
    assert code == 0 and "BD3-LM L'=4" in stdout and "step 4: val NELBO" in stdout, err
    model, ckpt = bd3lm.load(out / "ckpt.pt")
    assert model.block_len == 4 and ckpt["iter_num"] == 4 and ckpt["method"] == "bd3lm"
    code, _, err = run(train_bd3lm, f"--dataset={dataset}", f"--out_dir={out}", "--block_len=5")
    assert code == 2 and "must divide" in err
