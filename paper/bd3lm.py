"""
BD3-LM, the block diffusion language model, on the core's transformer.

Arriola, Gokaslan, Chiu, Yang, Qi, Han, Sahoo, Kuleshov: "Block Diffusion: Interpolating Between
Autoregressive and Diffusion Language Models", ICLR 2025 (arXiv 2503.09573); their code is
kuleshov-group/bd3lms, read at 1c3e8f4 (file names and line numbers below are theirs). It is
the Eso-LM paper's semi-autoregressive baseline.

The sequence of L tokens is cut into blocks of L' = block_len tokens. Across blocks the model is
autoregressive: block b is generated given the clean blocks before it. Within a block it is a
masked diffusion model (MDLM, Sahoo et al. 2024) with bidirectional attention. So L' = 1 is an
autoregressive model and L' = L is MDLM.

Nothing here is a second network: BD3LM wraps an eso.EsoLM and hands its transformer
(EsoLM.hidden, EsoLM.logits) its own attention masks, its own loss and its own sampler. The
transformer has no time input, as in the Eso-LM paper's baselines.

Words, as in eso.py: x or x_0, the clean sequence; x_t, a copy in which some tokens are masked
(hold [MASK]); t, diffusion time; alpha_t = 1 - t, the probability that a token is still clean
at time t, the BD3-LM authors' schedule (their noise_schedule.py LogLinearNoise masks with
probability t and weights by 1/t); NFE, the transformer forwards a sampler spends.

Read top to bottom: 1 attention masks; 2 the model: draws, loss, sampler; 3 checkpoints.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoint
import eso

# -----------------------------------------------------------------------------
# 1. Attention masks (True = may attend)


def block_diffusion_mask(L, block_len, device):
    """(1, 1, 2L, 2L) bool: the training attention mask over [x_t ; x_0] (the BD3-LM paper's
    Sec. 3.2 and Fig. 2; their models/dit.py block_diff_mask, line 30).

    Index i < L is token i of x_t, index i >= L is token i - L of x_0; the block of either is
    its position // block_len. A query may attend to a key when one of three parts allows it:
      block-diagonal       the same block in the same half (x_t's block sees itself, and so does
                           x_0's, both ways);
      offset block-causal  an x_t query sees the x_0 blocks strictly before its own;
      block-causal         an x_0 query sees the x_0 blocks at or before its own.
    No x_0 query ever sees x_t, so the x_0 half computes what the sampler's finished blocks
    compute, and each x_t block sees exactly what the sampler feeds while decoding it."""
    i = torch.arange(2 * L, device=device)
    in_x0 = i >= L  # (2L,)
    block = (i % L) // block_len  # (2L,) the block of each index, in either half
    q_x0 = in_x0[:, None]  # (2L, 1) queries
    k_x0 = in_x0[None, :]  # (1, 2L) keys
    q_block = block[:, None]
    k_block = block[None, :]
    block_diagonal = (q_block == k_block) & (q_x0 == k_x0)
    offset_block_causal = (q_block > k_block) & ~q_x0 & k_x0
    block_causal = (q_block >= k_block) & q_x0 & k_x0
    mask = block_diagonal | offset_block_causal | block_causal  # (2L, 2L)
    return mask[None, None]


def block_causal_mask(n, block_len, device):
    """(1, 1, n, n) bool over n clean tokens at positions 0..n-1: a query sees the blocks at or
    before its own. The x_0 half of block_diffusion_mask; the uncached sampler's mask (their
    dit.py indexes block_diff_mask's x_0 corner for it when sampling without a cache)."""
    block = torch.arange(n, device=device) // block_len
    return (block[:, None] >= block[None, :])[None, None]


# -----------------------------------------------------------------------------
# 2. The model


class BD3LM(nn.Module):
    """Block diffusion on an eso.EsoLM's transformer, with blocks of block_len tokens.

    Training (forward, loss) runs the authors' one forward over [x_t ; x_0]; for one block
    (block_len = L, MDLM) it runs x_t alone, bidirectionally, which computes the same. Sampling
    (generate) decodes block after block with a KV cache of the finished blocks."""

    def __init__(self, transformer: eso.EsoLM, block_len: int):
        super().__init__()
        L = transformer.config.block_size
        block_len = eso.whole("block_len", block_len)
        if L % block_len:
            raise ValueError(
                f"block_len ({block_len}) must divide the sequence length L = block_size ({L})"
            )
        self.transformer = transformer
        self.block_len = block_len
        self.n_blocks = L // block_len

    @property
    def config(self):  # the transformer's EsoConfig (its alpha_0 plays no part here)
        return self.transformer.config

    @property
    def mask_id(self):
        return self.transformer.mask_id

    # Training ---------------------------------------------------------------------------------
    def draws(self, x, generator=None):
        """(t, masked), both (B, L), for clean tokens x (B, L): every random draw of the loss.

        t: one time per (row, block), repeated over the block's tokens, stratified across the
        batch and the blocks as the authors' `_sample_t` (diffusion.py line 768, "antithetic"):
        the B * n_blocks times take one stratum of [0, 1) each, with a uniform of their own in
        it, then are mapped into [T_EPS, 1]. masked: each token masked with probability
        1 - alpha_t = t, as their q_xt masks.

        This is the plain schedule, t uniform in [T_EPS, 1]: not the authors' clipped one
        (eps_min, eps_max searched per block_len, with `_resample_q_xt` redrawing until the
        masked share lies in the clip), a variance-reduction trick on top."""
        B, L = x.shape
        n = B * self.n_blocks
        u = torch.rand(B, self.n_blocks, device=x.device, generator=generator)
        stratum = torch.arange(n, device=x.device).view(B, self.n_blocks)
        t = (stratum + u) / n  # (B, n_blocks): one time in each of n equal strata of [0, 1)
        t = (1 - eso.T_EPS) * t + eso.T_EPS
        t = t.repeat_interleave(self.block_len, dim=1)  # (B, L): a block's tokens share its t
        masked = torch.rand(B, L, device=x.device, generator=generator) < t  # 1 - alpha_t = t
        return t, masked

    def denoise_logits(self, x_t, x_0, dense=False):
        """Logits (B, L, V) at every token of x_t (B, L), predicting x_0 (B, L): each block sees
        itself in x_t and the clean blocks before it.

        The authors' way (dense, and always for more than one block): one forward over
        [x_t ; x_0], 2L tokens, both halves at the original positions 0..L-1 (rotary), under
        block_diffusion_mask; only the x_t half's outputs are kept. For one block (L' = L) no
        x_t query sees x_0 at all, and nothing scored reads the x_0 half: x_t alone through
        bidirectional attention computes the same (MDLM's forward)."""
        B, L = x_t.shape
        net = self.transformer
        if self.n_blocks == 1 and not dense:
            positions = torch.arange(L, device=x_t.device).expand(B, L)
            everything = torch.ones(1, 1, L, L, dtype=torch.bool, device=x_t.device)
            return net.logits(net.hidden(x_t, positions, everything))
        tokens = torch.cat([x_t, x_0], dim=1)  # (B, 2L)
        positions = torch.arange(L, device=x_t.device).repeat(2).expand(B, 2 * L)
        mask = block_diffusion_mask(L, self.block_len, x_t.device)  # (1, 1, 2L, 2L)
        h = net.hidden(tokens, positions, mask)[:, :L]  # (B, L, C): the x_t half
        return net.logits(h)

    def nelbo(self, x, t, masked, dense=False):
        """The per-token NELBO estimate (nats) of clean tokens x (B, L) for given draws: t and
        masked (B, L), as draws makes them.

        Each block is MDLM's continuous-time bound given the clean blocks before it (the BD3-LM
        paper's eq. 8): the masked tokens' -log p(x_l | x_t's block, x_0's earlier blocks),
        weighted by -alpha'_t / (1 - alpha_t) = 1/t (alpha_t = 1 - t). The sum over
        masked tokens is divided by all B * L tokens. The [MASK] logit is excluded: the core's
        head has no [MASK] row (zero masking)."""
        B, L = x.shape
        x_t = torch.where(masked, self.mask_id, x)
        logits = self.denoise_logits(x_t, x, dense)  # (B, L, V)
        nll = F.cross_entropy(logits.flatten(0, 1), x.flatten(), reduction="none")
        nll = nll.view(B, L)
        weight = 1 / t  # -alpha'_t / (1 - alpha_t), (B, L)
        return (nll * masked * weight).sum() / (B * L)

    def forward(self, x, draws, dense=False):
        """(loss, parts) for clean tokens x (B, L) and draws (t, masked): the parts a training
        loop written for Eso-LM logs, all of it the diffusion term."""
        t, masked = draws
        loss = self.nelbo(x, t, masked, dense)
        parts = {"diffusion": loss.detach(), "sequential": torch.zeros_like(loss.detach())}
        return loss, parts

    def loss(self, x, generator=None):
        """forward with fresh draws: (loss, parts) of x (B, L)."""
        return self(x, self.draws(x, generator))

    # Sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self, num_samples, steps, *, temperature=1.0, top_p=1.0, kv_cache=True, generator=None
    ):
        """Sample (num_samples, L) tokens, block after block, left to right: (tokens, nfe).

        Each block starts all masks and runs T' = steps steps of the MDLM sampler: the count of
        tokens each step unmasks is the binomial schedule of T' steps at alpha_0 = 1
        (eso.unmask_schedule), drawn per block and shared by the rows; each row picks which of
        its masks at random (a random order of the block's positions); the steps that unmask
        nothing are skipped, at no forward (the authors' `_ddpm_caching_update` reuses p_x0
        while nothing changes). The new tokens are drawn from the step's logits with
        eso.sample_tokens (temperature, nucleus top_p, Gumbel-max, in float64).

        A step's forward feeds the current block, its clean tokens so far and its masks, which
        attends to itself both ways and to the finished blocks. With kv_cache, a KV cache (slots
        = positions) holds the finished blocks, and each finished block costs one more forward
        of the clean block that writes its keys and values, as the authors' `store_kv` forward
        (diffusion.py, `_ddpm_caching_update`): the Eso-LM paper's Table 15 counts it (L' = 4,
        T' = 1: NFE 512 for L = 1024, two per block). Their code runs it after the last block
        too, whose keys nothing reads; so does this, so that NFE counts as theirs.
        kv_cache=False is the uncached reference: every step runs the finished blocks and the
        current one through the transformer under the block-causal mask, no store forward; the
        same draws in the same order, so the same tokens. For one block (L' = L) the sampler is
        MDLM: one bidirectional block, no cache, no store forward.

        Where the authors' `_semi_ar_sampler` (line 979) differs: it sets the first token to
        BOS (here every position is sampled); it defaults to first-hitting
        (`sampling.first_hitting`: one token per step at a random mask, batch 1 only), the
        T' >> L' limit of this schedule; and its T' steps sit on t = linspace(1, 0, T') with
        dt = 1/T', so for T' >= 2 the last one starts at t = 0, where the update divides by zero.
        Here T' equal steps tile [0, 1] (eso.unmask_schedule).

        nfe counts the forwards made."""
        steps = eso.check_sampling_args(steps, 1.0, temperature, top_p)
        num_samples = eso.whole("num_samples", num_samples)
        net = self.transformer
        device = net.wte.weight.device
        L = self.config.block_size
        x = torch.full((num_samples, L), self.mask_id, dtype=torch.long, device=device)
        cache = None
        if kv_cache and self.n_blocks > 1:
            cache = net.kv_cache(num_samples)
        nfe = 0
        for b in range(self.n_blocks):
            lo = b * self.block_len
            hi = lo + self.block_len
            sizes = eso.unmask_schedule(self.block_len, steps, 1.0, generator, device)
            # (B, L'): each row's order of the block's positions (0..L'-1 within the block)
            order = eso.random_permutations(num_samples, self.block_len, device, generator)
            done = 0  # the tokens of the block decoded so far
            for k in sizes:  # k: the tokens this step unmasks
                h = self.block_hidden(x, b, cache)  # (B, L', C)
                chosen = order[:, done : done + k]  # (B, k) positions within the block
                index = chosen[:, :, None].expand(-1, -1, h.size(-1))  # (B, k, C)
                logits = net.logits(h.gather(1, index))  # (B, k, V)
                tokens = eso.sample_tokens(logits, temperature, top_p, generator)  # (B, k)
                x[:, lo:hi] = x[:, lo:hi].scatter(1, chosen, tokens)
                done += k
                nfe += 1
            if cache is not None:
                self.block_hidden(x, b, cache)  # the clean block writes its keys and values
                cache.length = hi
                nfe += 1
        return x, nfe

    def block_hidden(self, x, b, cache=None):
        """Hidden states (B, L', C) of block b of the canvas x (B, L), whose blocks before b are
        clean: block b attends to itself both ways and to the blocks before it.

        With a cache, which holds the blocks before b: block b's L' tokens alone, at their
        positions (slots = positions), which write their keys and values at those slots (a
        later forward overwrites them: provisional until the block's store forward). Without:
        blocks 0..b, all through the transformer under the block-causal mask."""
        net = self.transformer
        B = x.size(0)
        lo = b * self.block_len
        hi = lo + self.block_len
        if cache is not None:
            cache.slots = torch.arange(lo, hi, device=x.device)
            positions = cache.slots.expand(B, self.block_len)
            # block b's queries against every slot [0, hi): the finished blocks and itself
            mask = torch.ones(1, 1, self.block_len, hi, dtype=torch.bool, device=x.device)
            return net.hidden(x[:, lo:hi], positions, mask, cache)
        positions = torch.arange(hi, device=x.device).expand(B, hi)
        mask = block_causal_mask(hi, self.block_len, x.device)  # (1, 1, hi, hi)
        return net.hidden(x[:, :hi], positions, mask)[:, lo:hi]


# -----------------------------------------------------------------------------
# 3. Checkpoints: ours (checkpoint.py), with the method and block_len beside the weights


def state(model, tokenizer, iter_num, **extra):
    """A checkpoint dict of ours for a BD3LM: the transformer's weights and config as
    checkpoint.state writes them (so checkpoint.load reads them as an EsoLM), plus the plain
    values "method": "bd3lm" and "block_len": L'."""
    net = model.transformer
    return checkpoint.state(
        net,
        net.config,
        tokenizer,
        iter_num,
        method="bd3lm",
        block_len=model.block_len,
        **extra,
    )


def load(path, device="cpu", ema=True):
    """(BD3LM, checkpoint dict) of a file that state and checkpoint.save wrote: the core's
    loader builds the EsoLM (with its EMA weights when it has them), wrapped here."""
    net, ckpt = checkpoint.load(path, device, ema, method=None)
    if ckpt.get("method") != "bd3lm":
        raise checkpoint.CheckpointError(
            f"{path} is not a BD3-LM checkpoint (its method is {ckpt.get('method')!r}); load "
            "it with checkpoint.load"
        )
    try:
        model = BD3LM(net, ckpt.get("block_len"))
    except ValueError as e:
        raise checkpoint.CheckpointError(f"{path} holds an unusable block_len: {e}") from None
    return model.eval(), ckpt
