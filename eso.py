"""
Esoteric Language Models (Eso-LMs), in one file.

Sahoo, Yang, Akhauri, Liu, Singh, Cheng, Liu, Xing, Thickstun, Vahdat: "Esoteric Language
Models", arXiv 2506.01928 (ICML 2026). The equations, figures, algorithms and appendices cited
below are the paper's.

One causal transformer is an autoregressive language model (alpha_0 = 0), a masked diffusion
language model (alpha_0 = 1), or anything between. It is trained with one loss and sampled with
a KV cache, which in variant B (below) serves both phases.

Words. Each is defined here and used in this one sense.
  x             a clean sequence of L tokens, at positions 0..L-1 (1..L in the examples).
  [MASK]        one more token id, after the vocabulary's.
  z             a copy of x in which some positions hold [MASK] (they are masked) and the others
                hold x's tokens (they are clean). In code, `masked` (B, L) bool marks them.
  attention mask  which token may attend to which: True = may attend. The names ending in
                attn_mask, and the builders prefix_lm_mask and sequential_mask, are attention
                masks. "A mask" alone is a [MASK] token.
  phases        sampling runs a diffusion phase, then a sequential phase. The diffusion phase
                (MDM: masked diffusion model) decodes a random subset of the positions, several
                per step. The sequential phase (AR: autoregressive) decodes all the others, one
                per step, left to right.
  t, z_t        diffusion time, in [0, 1]. z_t keeps each token of x with probability
                alpha_t = alpha_0 (1 - (1 - EPS) t), with EPS = 1e-3. So z_0 keeps a share
                alpha_0 of x, and z_1 keeps almost nothing. Training draws t uniformly from
                [T_EPS, 1) (stratified across a batch: sample_t); sampling runs t from 1 down
                to 0.
  alpha_0       in training, the expected share of clean tokens in z_0. In sampling, about the
                share of the masked positions that the diffusion phase decodes; the sequential
                phase decodes the rest.
  sigma         an order: sigma[b, i] is the position placed i-th in row b of a batch. In
                sampling, the position decoded i-th. In the loss, the position that the
                transformer reads i-th (section 7.3 says how this order relates to the model
                that the loss bounds).
  decode order  a sequence laid out by sigma, each token still at its original position (the
                rotary embeddings carry it). The code calls it sorted.
  slot          an index in decode order; "before" means at an earlier slot.
  T, NFE        T is the number of steps of the diffusion schedule; empty steps cost nothing.
                NFE is the number of transformer forwards a sampler spends.
  NELBO         negative evidence lower bound: eq. 7, an upper bound on -log p(x). It is the
                sum of two terms, described where they are computed (section 6). Three models
                share the weights, and each number is about one of them (section 7.4): the
                NELBO bounds a mixture over orders in which a mask sees the masks sorted before
                it; EsoLM.likelihood bounds the sampler that decodes one token per step; a
                sampler that decodes several tokens a step draws from a third law. As computed
                here and in MDLM's code, the NELBO leaves out two slivers: it averages over t in
                [T_EPS, 1] where eq. 7 integrates over [0, 1], and it drops the prior term at
                t = 1. So the number computed is a bound only with alpha_1 log V added back, and
                under a condition on the model (section 7.2).
  kappa         the share of a batch's rows that estimate the diffusion term; the other rows
                estimate the sequential term.
  zero masking  the model never predicts [MASK]: its output layer has no [MASK] row.
  IW bound      an importance-weighted bound on -log p(x). It gets tighter, in expectation, as
                it averages over more orders.
  canvas        the L tokens being sampled: known ones (a prompt) and masks.
  chunk         the tokens that one cached forward feeds.

The two variants differ in one attention mask. Variant B, the paper's model, is causal in decode
order everywhere: a clean token never sees anything decoded after it. So its keys and values
never change, and one KV cache serves both phases. Variant A, an ablation, lets the clean tokens
(its clean block) see each other both ways.

A worked example (Figs. 6-9), printed by `python eso.py` from the functions below. Take
x = ABCDEF at positions 1..6, with B, D and E masked: z_0 = A_C__F (and the same z_t in the
diffusion term).
  Diffusion term, sigma = (3, 1, 6, 4, 5, 2). The transformer reads C A F M M M at positions
  3 1 6 4 5 2 under a plain causal mask. The M slots predict D, E and B from the clean tokens
  and the masks before them.
  Sequential term, sigma = (3, 1, 6, 2, 4, 5): the clean tokens, then the masks left to right.
  (Variant A sorts its clean tokens by position, 1 3 6: they see each other both ways, so their
  order changes nothing. Its printed sequential-term grid shows (1, 3, 6, 2, 4, 5).)
  The transformer reads two halves at the same positions: z_0 in decode order, C A F M M M, and
  x, C A F B D E. The M at position 4 sees itself and the x slots before it, C A F B: the clean
  tokens and the true tokens to its left. It predicts D.
  The cached sampler of variant B, along the sequential term's order (3, 1, 6, 2, 4, 5),
  decodes 2, then 1 diffusion tokens, then 3 sequential ones. Its KV cache records (letters
  name positions; the model draws its own tokens; "keeps" lists the tokens that join the cache
  at that step, for good):
    step 1 feeds M3 M1        keeps -         decodes C3 A1 (diffusion)
    step 2 feeds C3 A1 M6     keeps C3 A1     decodes F6 (diffusion)
    step 3 feeds F6 M2        keeps F6        decodes B2 (sequential)
    step 4 feeds B2 M4        keeps B2        decodes D4 (sequential)
    step 5 feeds D4 M5        keeps D4        decodes E5 (sequential)
  NFE = 5. Each chunk holds the tokens decoded at the step before, now clean, and the masks to
  decode now. The cache keeps a token's keys and values from the first chunk that feeds it clean:
  "one step late". The last token decoded is never fed clean. (Variant A keeps nothing until its
  clean block is whole: section 8's CachedStep has its table.)

Read top to bottom: 1 config; 2 the transformer and its KV cache; 3 noise schedule and orders;
4 attention patterns; 5 sampling pieces; 6 the model: loss, sampler, likelihood; 7 why it is
right: the arguments behind sections 5 and 6, which a first reading may skip; 8 making it fast:
the sequential term's attention and the sampler's cached step, each computing what a plain path
above computes (a test binds each pair); 9 `python eso.py`.
"""

import itertools
import math
import numbers
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-3  # alpha_t = alpha_0 (1 - (1 - EPS) t): the authors' schedule (alpha_1 = EPS alpha_0)
T_EPS = 1e-3  # training draws t from [T_EPS, 1)


# -----------------------------------------------------------------------------
# 1. Config


@dataclass
class EsoConfig:
    block_size: int = 256  # L, the sequence length
    vocab_size: int = 256  # the tokenizer's vocabulary; the model adds one id for [MASK]
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    # the share of tokens clean in z_0 (the diffusion phase makes a hair less: unmask_schedule)
    alpha_0: float = 0.5
    # "B": causal everywhere, a KV cache in both phases; "A": clean tokens attend both ways
    variant: str = "B"
    # "elbo", or "low_var" (diffusion weight 1 in training; the paper's OWT choice at alpha_0 = 1)
    loss_type: str = "elbo"
    batch_split: float | None = None  # kappa; None = the paper's
    # biases in the LayerNorms, the MLP and the head (the authors' models, paper/formats.py)
    bias: bool = False

    def __post_init__(self):
        if not 0.0 <= self.alpha_0 <= 1.0:
            raise ValueError(f"alpha_0 must lie in [0, 1], got {self.alpha_0}")
        if self.variant not in ("A", "B"):
            raise ValueError(f"variant must be 'A' or 'B', got {self.variant!r}")
        if self.loss_type not in ("elbo", "low_var"):
            raise ValueError(f"loss_type must be 'elbo' or 'low_var', got {self.loss_type!r}")
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(
                f"n_embd ({self.n_embd}) must split into n_head ({self.n_head}) heads of even size"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.batch_split is None:
            self.batch_split = paper_batch_split(self.alpha_0)
        if not batch_split_fits(self.batch_split, self.alpha_0):
            raise ValueError(
                f"batch_split {self.batch_split} does not fit alpha_0 {self.alpha_0}: use 1 at "
                "alpha_0 = 1, 0 at alpha_0 = 0, and a value strictly between 0 and 1 otherwise "
                "(the paper uses 0.5)"
            )


def paper_batch_split(alpha_0):
    """The paper's kappa: 1 at alpha_0 = 1 (no sequential term), 0 at alpha_0 = 0 (no diffusion
    term), 0.5 otherwise (Table 4: below 0.5 training diverges)."""
    if alpha_0 == 1:
        return 1.0
    if alpha_0 == 0:
        return 0.0
    return 0.5


def batch_split_fits(kappa, alpha_0):
    """Whether kappa gives rows to exactly the terms that alpha_0 has."""
    if alpha_0 == 1:
        return kappa == 1
    if alpha_0 == 0:
        return kappa == 0
    return 0 < kappa < 1


# -----------------------------------------------------------------------------
# 2. The transformer: pre-norm GPT blocks, rotary embeddings at original positions, a KV cache


def rotary_tables(block_size, head_dim, base=10000.0):
    """cos and sin (L, hd) of the rotary embedding's angles, for every position and every pair
    of a head's dimensions (pair i is dimensions i and i + hd/2, the "rotate half" layout)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(block_size).float(), inv_freq)  # (L, hd/2)
    cos = torch.cat([angles.cos(), angles.cos()], -1)
    sin = torch.cat([angles.sin(), angles.sin()], -1)
    return cos, sin


def apply_rotary(x, cos, sin):
    """Rotate each pair (x1, x2) = (x_i, x_{i + hd/2}) of x (..., n, hd) by its angle:
    (x1 cos - x2 sin, x2 cos + x1 sin), in float32. cos and sin (B, 1, n, hd) are gathered at
    each token's original position, so a token keeps its position in any order."""
    xf = x.float()
    x1, x2 = xf.chunk(2, -1)
    turned = torch.cat([-x2, x1], -1)  # each pair turned by 90 degrees
    return torch.addcmul(xf * cos, turned, sin).type_as(x)


class Linear(nn.Module):
    """y = x @ weight (+ bias), the weight stored (in, out) as GPT-2's Conv1D: on CPUs, the one-
    and two-token products of cached decoding run about 20% faster in this layout than
    nn.Linear's."""

    def __init__(self, n_in, n_out, bias=False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None

    def forward(self, x):
        if self.bias is None:
            return x @ self.weight
        return x @ self.weight + self.bias


class KVCache:
    """The sampler's KV cache: a key and a value per layer for each of the L slots, in decode
    order (slot i holds the token decoded i-th).

    Before a forward, the caller sets `slots` (a 1-D tensor): the slots of the tokens it feeds.
    In each layer, update writes their keys and values there and hands back the keys and values
    of the first n_keys slots, which the attention reads. Slots [0, length) hold clean tokens for
    good; the others are provisional, and are overwritten when fed again."""

    def __init__(self, n_layer, shape, dtype, device):  # shape: (B, nh, L, hd)
        # Zeros, not torch.empty: the compiled sampler (compiled.py) reads whole blocks of slots,
        # some not written yet. The attention mask hides them, but a NaN there would leak through
        # (a NaN value times its zero weight is still NaN).
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.length = 0
        self.slots = None

    def update(self, layer, k, v, n_keys):
        """Write k, v (B, nh, n, hd) at self.slots; return the keys and values of the first n_keys
        slots (B, nh, n_keys, hd)."""
        # written at a tensor of slots: no shape depends on where
        self.k[layer][:, :, self.slots] = k
        self.v[layer][:, :, self.slots] = v
        return self.k[layer][:, :, :n_keys], self.v[layer][:, :, :n_keys]

    def reset(self):
        """Empty it, in place: the same buffers (compiled steps may hold their addresses)."""
        for buffer in self.k + self.v:
            buffer.zero_()
        self.length = 0
        self.slots = None


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.qkv = Linear(config.n_embd, 3 * config.n_embd)
        self.proj = Linear(config.n_embd, config.n_embd)

    def forward(self, x, cos, sin, attn_mask, cache=None, layer=0):
        B, n, C = x.shape  # n tokens
        qkv = self.qkv(x).view(B, n, 3, self.n_head, C // self.n_head)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, nh, n, hd)
        # rotary on q and k (not v), before k enters the cache: qkv[:2] is q and k stacked,
        # (2, B, nh, n, hd), so one call turns both and unpacking splits them
        q, k = apply_rotary(qkv[:2], cos, sin)
        v = qkv[2]
        if cache is not None:
            # the keys are the cache's first slots, as many as the attention mask has columns
            k, v = cache.update(layer, k, v, n_keys=attn_mask.size(-1))
        p = self.dropout if self.training else 0.0
        if isinstance(attn_mask, SequentialPattern):  # the sequential term's fast path (section 8)
            y = attn_mask.attend(q, k, v, p)
        else:
            is_causal = attn_mask is None
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=p
            )
        y = self.proj(y.transpose(1, 2).reshape(B, n, C))
        if p:
            y = F.dropout(y, p, True)
        return y


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc = Linear(config.n_embd, 4 * config.n_embd, config.bias)
        self.proj = Linear(4 * config.n_embd, config.n_embd, config.bias)
        self.dropout = config.dropout

    def forward(self, x):
        y = self.proj(F.gelu(self.fc(x), approximate="tanh"))
        if self.training and self.dropout:
            y = F.dropout(y, self.dropout, True)
        return y


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = Attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, attn_mask, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), cos, sin, attn_mask, cache, layer)
        return x + self.mlp(self.ln_2(x))


# -----------------------------------------------------------------------------
# 3. Noise schedule and orders


def alpha(t, alpha_0):
    """alpha_t = alpha_0 (1 - (1 - EPS) t): the probability that a token is clean at time t."""
    return alpha_0 * (1 - (1 - EPS) * t)


def sample_t(n, device, generator=None):
    """n stratified times in [T_EPS, 1): (u + i) / n, i < n, mapped onto it (the authors call
    them antithetic)."""
    u = torch.rand(1, device=device, generator=generator)
    t = (u + torch.arange(n, device=device)) / n  # < 1: one time in each of n equal strata
    return (1 - T_EPS) * t + T_EPS


def diffusion_order(masked, u):
    """sigma (B, L): clean positions first, then masked ones (masked (B, L) bool), each group
    sorted by the keys u (B, L), which lie in [0, 1): a mask's key, 2 + u, sorts after every
    clean one."""
    return torch.argsort(masked * 2.0 + u, dim=1)


def sequential_order(in_sequential_phase, u):
    """sigma (B, L): first the positions that in_sequential_phase (B, L) bool leaves out, sorted
    by the keys u in [0, 1); then the positions it marks, left to right, as the sequential phase
    decodes them. In training: z_0's clean tokens, then its masks."""
    L = in_sequential_phase.size(1)
    ascending = torch.arange(L, device=in_sequential_phase.device) / L  # keys in [0, 1)
    keys = torch.where(in_sequential_phase, ascending, u)
    # diffusion_order puts the marked positions last; their keys l / L sort them left to right
    return diffusion_order(in_sequential_phase, keys)


def unpermute(sorted_tokens, sigma):
    """The inverse of gather(1, sigma): tokens in decode order back to position order."""
    return torch.empty_like(sorted_tokens).scatter_(1, sigma, sorted_tokens)


# -----------------------------------------------------------------------------
# 4. The attention patterns (Figs. 6-9): attention masks over slots, True = may attend


def prefix_lm_mask(slots, n_keys, prefix=0):
    """(B or 1, 1, len(slots), n_keys) bool, on the device of `slots`: queries at the decode
    slots `slots` (1-D LongTensor) against the keys at slots 0..n_keys-1, causal in decode order
    (key slot <= query slot), plus a bidirectional block over the first `prefix` slots, variant
    A's clean tokens (prefix: 0 for B, an int, or a (B,) tensor, a count per row). The x half of
    sequential_mask is this attention mask too."""
    q = slots.view(1, 1, -1, 1)  # query slots
    k = torch.arange(n_keys, device=slots.device).view(1, 1, 1, -1)  # key slots
    causal = k <= q
    if isinstance(prefix, int) and prefix == 0:
        return causal
    prefix = torch.as_tensor(prefix, device=slots.device).view(-1, 1, 1, 1)  # (B or 1, 1, 1, 1)
    clean_block = (q < prefix) & (k < prefix)
    return causal | clean_block


def sequential_mask(x_attn_mask):
    """(B or 1, 1, 2L, 2L) attention mask over [z_0 sorted ; x sorted] (eq. 26-32, Fig. 9), from
    the x half's own attention mask x_attn_mask (B or 1, 1, L, L), a prefix_lm_mask.

    The rules:
      z slot i -> itself and x slots j < i (for a mask: all the clean tokens and the true
                  tokens to its left, since sequential_order puts the clean tokens first, then
                  the masks left to right);
      x slot i -> as x_attn_mask (causal; variant A: plus its clean block);
      nothing attends to a z slot but itself.
    For variant B and L = 3 (1 = may attend; `python eso.py` prints the grids for L = 6):
             z0 z1 z2  x0 x1 x2
        z0    1  .  .   .  .  .
        z1    .  1  .   1  .  .
        z2    .  .  1   1  1  .
        x0    .  .  .   1  .  .
        x1    .  .  .   1  1  .
        x2    .  .  .   1  1  1
    The outputs of the z half at its masks are the predictions. Its clean slots only keep the
    two halves the same length (section 8 skips those clean in every row, in whole groups of
    128; the loss zeroes the others)."""
    L = x_attn_mask.size(-1)
    i = torch.arange(L, device=x_attn_mask.device)
    z_to_z = i[:, None] == i[None, :]  # (L, L): the diagonal
    z_to_x = i[:, None] > i[None, :]  # (L, L): strictly earlier x slots
    z_queries = torch.cat([z_to_z, z_to_x], dim=1)  # (L, 2L)
    z_queries = z_queries.expand(x_attn_mask.size(0), 1, L, 2 * L)
    x_queries = torch.cat([torch.zeros_like(x_attn_mask), x_attn_mask], dim=-1)
    return torch.cat([z_queries, x_queries], dim=-2)


# -----------------------------------------------------------------------------
# 5. Sampling pieces: the arguments, the schedule, the order, one token draw


def whole(name, value, minimum=1):
    """value as an int if it is a whole number >= minimum (2.0 counts as 2), else a ValueError."""
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    try:
        ok = is_number and value == int(value) and int(value) >= minimum
    except (ValueError, OverflowError):  # nan, inf
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a whole number of at least {minimum}, got {value!r}")
    return int(value)


def check_sampling_args(steps, alpha_0, temperature, top_p):
    """The sampling arguments, checked: returns steps as an int; anything else is a ValueError."""
    if not 0.0 <= alpha_0 <= 1.0:
        raise ValueError(f"alpha_0 must lie in [0, 1], got {alpha_0}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be 0 (greedy) or above, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    return whole("steps", steps)


def unmask_schedule(n_masked, steps, alpha_0, generator, device):
    """The sizes of the non-empty diffusion steps, in the order they run (Alg. 2). They are drawn
    without a loop over the T steps, because the paper's speed protocol uses T = 1e6.

    What it draws. Each of the n_masked masks joins the diffusion phase with probability p_mdm,
    about alpha_0 (see below). A mask that joins is decoded at one of the T steps, drawn uniformly
    and independently of the other masks. The masks that do not join are left to the sequential
    phase. The sizes count the masks of each step that has any, in step order.
    sampling_order then picks which masks those are. The rows of a batch share the sizes, so
    they are not independent samples, though each row alone has Alg. 2's law.

    An example: n_masked = 4, steps T = 2 (numbered 0 and 1; step 0 runs first), alpha_0 = 0.5.
    Each mask joins with probability about 0.5. Say two masks join:
      both draw step 1          sizes [2]      one diffusion step of 2 tokens, then 2 sequential
      they draw steps 0 and 1   sizes [1, 1]   two diffusion steps of 1, then 2 sequential
    and if no mask joins, sizes is [] and the sequential phase decodes all 4.

    p_mdm against alpha_0. p_mdm = (alpha_0 - alpha_1) / (1 - alpha_1) lies a hair below alpha_0
    (0.49975 for 0.5), because the schedule's alpha_1 = EPS alpha_0 is not quite 0. Training and
    the likelihood use alpha_0 itself. Section 7.1 shows that these draws have the law of Alg. 2's
    step-by-step chain.
    """
    alpha_1 = alpha(1.0, alpha_0)
    p_mdm = (alpha_0 - alpha_1) / (1 - alpha_1)  # 1 exactly at alpha_0 = 1
    in_mdm = torch.rand(n_masked, device=device, generator=generator) < p_mdm
    step = torch.randint(steps, (n_masked,), device=device, generator=generator)
    _, counts = step[in_mdm].unique(return_counts=True)
    return counts.tolist()


def random_permutations(rows, n, device, generator=None):
    """(rows, n): an independent uniformly random permutation of 0..n-1 in each row."""
    return torch.rand(rows, n, device=device, generator=generator).argsort(1)


def sampling_order(known, sizes, block_order=False, generator=None):
    """(sigma, sizes): the order sigma (B, L), sigma[b, i] = the position decoded i-th in row b,
    and the diffusion step sizes (the schedule's, or with block_order the streams' of
    block_streams).

    sigma lists three groups. First the known tokens, left to right (variant B's cached sampler
    feeds them once, as the first step's clean tokens). Then the diffusion positions: sum(sizes)
    of the masked positions, a random subset of each row in random order, cut into steps by
    sizes. Then the sequential positions, the other masked ones, left to right."""
    B, L = known.shape
    n_diffusion = sum(sizes)
    positions = torch.arange(L, device=known.device)
    # (B, L): the known positions ascending, then the masked ones ascending. A known position
    # gets the key position - L, below every masked position's key, so it sorts first.
    base = torch.argsort(torch.where(known, positions - L, positions), dim=1)
    n_known = int(known[0].sum())
    masked_positions = base[:, n_known:]  # (B, N), ascending
    N = masked_positions.size(1)
    shuffled = masked_positions.gather(1, random_permutations(B, N, known.device, generator))
    diffusion = shuffled[:, :n_diffusion]  # (B, n): a random subset, in random order
    sequential = shuffled[:, n_diffusion:].sort(1).values  # (B, N - n): the rest, ascending
    if block_order and n_diffusion:
        diffusion, sizes = block_streams(diffusion, len(sizes), generator)
    return torch.cat([base[:, :n_known], diffusion, sequential], dim=1), sizes


def block_streams(diffusion, n_streams, generator=None):
    """The authors' block ("subcontext", App. E.10) order, made to work for any L, alpha_0,
    prompt and T: (the diffusion positions (B, n) in the order decoded, the step sizes).

    It keeps one thing of the schedule: S = n_streams, its number of non-empty diffusion steps.
    The diffusion positions, in ascending order, are dealt into S streams like cards: the r-th
    goes to stream r mod S. Each step decodes one stream, in random order. So no two tokens of a
    step are closer than S positions, and the sizes are as even as they can be. The larger
    streams go first. Among streams of one size, each row draws which step decodes which.
    An example: p0 < ... < p7 and S = 3 give the streams {p0, p3, p6}, {p1, p4, p7} and
    {p2, p5}, so the sizes are [3, 3, 2]. Each row decodes the two big streams first, in an order
    of its own, then {p2, p5}.
    At alpha_0 = 1 with no prompt, the streams are {r, r + S, ...} for r < S: what the authors
    call blocks (their sets exactly, when S divides L)."""
    B, n = diffusion.shape
    S = n_streams
    big = n % S  # streams 0..big-1 hold one position more than the others
    sizes = [n // S + int(step < big) for step in range(S)]
    device = diffusion.device
    # which step decodes each stream: the big streams in the first steps, in random order
    large_first = random_permutations(B, big, device, generator)
    small_next = big + random_permutations(B, S - big, device, generator)
    step_of_stream = torch.cat([large_first, small_next], 1)  # (B, S)
    stream = torch.arange(n, device=device) % S  # (n,): the stream of the j-th position from left
    step = step_of_stream[:, stream]  # (B, n): the step that decodes it
    # One sort does two things. The key is step * n + within_step, with within_step < n, so
    # sorting by it groups the positions by step, in step order, and shuffles each step's own
    # positions (by within_step).
    within_step = random_permutations(B, n, device, generator)  # (B, n), values < n
    key = step * n + within_step
    ascending = diffusion.sort(1).values
    return ascending.gather(1, key.argsort(1)), sizes


def has_float64(device):
    """Apple's MPS has no float64; CPUs and CUDA do."""
    return torch.device(device).type != "mps"


def top_p_filter(logits, top_p):
    """logits (..., V) with -inf outside the top-p nucleus: the smallest set of most likely
    tokens whose mass reaches top_p (Holtzman et al.). A token whose preceding mass is exactly
    top_p is left out; the authors' code (utils.top_k_top_p_filtering, after Thomas Wolf's gist:
    out when that mass exceeds top_p) keeps it."""
    if top_p >= 1.0:
        return logits
    sorted_logits, idx = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs
    # the top token has no mass before it: always kept
    sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, -math.inf)
    return torch.full_like(logits, -math.inf).scatter(-1, idx, sorted_logits)


def sample_tokens(logits, temperature=1.0, top_p=1.0, generator=None):
    """One token per row of logits (..., V) from softmax(logits / temperature), cut to the top-p
    nucleus, by Gumbel-max in float64, as the authors' code does: float32 Gumbel noise is capped
    near 16.6 (its uniforms have 24 bits), which starves the tail of a large vocabulary. Without
    float64 (MPS): sample_tokens_float32, below, draws from the same distribution.

    Temperature 0 is the limit of a sharper and sharper softmax: greedy decoding, the most likely
    token of each row, with no random draw."""
    if temperature == 0:
        return logits.argmax(-1)
    if not has_float64(logits.device):
        return sample_tokens_float32(logits, temperature, top_p, generator)
    logits = top_p_filter(logits.double() / temperature, top_p)  # (..., V)
    u = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
    return (logits - torch.log(-torch.log(u))).argmax(-1)


def sample_tokens_float32(logits, temperature=1.0, top_p=1.0, generator=None):
    """sample_tokens without float64 (MPS): an inverse CDF in float32.

    The probabilities are summed from the smallest up. Then a small token is added to a small
    running sum, and keeps its share to float32's precision. Summed largest first, every token
    below 2^-25 would add nothing to a running sum near 1 and never be drawn, however much mass
    the tail holds in all. With a float32 uniform, each token is drawn with its probability to
    within about 2^-23."""
    logits = top_p_filter(logits.float() / temperature, top_p)
    probs, order = logits.softmax(-1).sort(dim=-1)  # (..., V) ascending: the tail first
    cdf = probs.cumsum(-1)
    u = 1 - torch.rand(*logits.shape[:-1], 1, device=logits.device, generator=generator)  # (0, 1]
    first = (cdf < u * cdf[..., -1:]).sum(-1, keepdim=True)  # the first token whose cdf >= u
    first = first.clamp(max=logits.size(-1) - 1)
    return order.gather(-1, first).squeeze(-1)


# -----------------------------------------------------------------------------
# 6. The model: the transformer, the hybrid NELBO, the sampler, the likelihood


class Draws(NamedTuple):
    """Every random draw of one evaluation of the loss but dropout's (EsoLM.draws): given them,
    the loss is a function of the model and x alone.

    The first t.size(0) rows estimate the diffusion term, the others the sequential term."""

    t: torch.Tensor  # (n_diff,) the times of the diffusion rows
    masked: torch.Tensor  # (B, L) bool: z_t in the diffusion rows, z_0 in the sequential rows
    sigma: torch.Tensor  # (B, L) each row's order, clean tokens first
    n_skip: int = 0  # decode slots clean in every sequential row, which the fast path skips


class EsoLM(nn.Module):
    def __init__(self, config: EsoConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size + 1, config.n_embd)  # + [MASK] (id vocab_size)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        # no [MASK] row: zero masking
        self.lm_head = Linear(config.n_embd, config.vocab_size, config.bias)
        cos, sin = rotary_tables(config.block_size, config.n_embd // config.n_head)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections, attn.proj and mlp.proj
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def mask_id(self):  # [MASK] is the id after the vocabulary's
        return self.config.vocab_size

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def hidden(self, idx, pos, attn_mask=None, cache=None):
        """Final hidden states (B, n, C) of tokens idx (B, n) at original positions pos (B, n).

        attn_mask: None (without a cache) is causal over idx; a bool attention mask (True = may
        attend) broadcastable to (B, nh, n, keys); or a SequentialPattern. With a cache, the
        tokens sit at its slots cache.slots (KVCache), and the attention reads the first
        attn_mask.size(-1) slots of the cache: the attention mask's columns are its keys."""
        cos = self.rope_cos[pos].unsqueeze(1)  # (B, 1, n, hd)
        sin = self.rope_sin[pos].unsqueeze(1)
        x = self.drop(self.wte(idx))
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, attn_mask, cache, layer)
        return self.ln_f(x)

    def logits(self, h):
        """Float32 logits (..., V) of h. bf16 logits (the head under autocast) move probabilities
        by percents: with no gradient taken (sampling, likelihoods, validation) the head runs in
        float32. Training's head stays in the autocast dtype, which is faster."""
        if torch.is_grad_enabled():
            return self.lm_head(h).float()
        with torch.autocast(h.device.type, enabled=False):
            return self.lm_head(h.float())

    # The hybrid NELBO (eq. 7) -----------------------------------------------------------------
    def diffusion_rows(self, B):
        """How many of B rows estimate the diffusion term: round(kappa B), and one row per term at
        least."""
        kappa = self.config.batch_split
        if not 0 < kappa < 1:
            return round(kappa * B)
        if B < 2:
            raise ValueError(
                f"a batch of {B} row cannot be split between the two terms (batch_split {kappa})"
            )
        return min(max(round(kappa * B), 1), B - 1)

    def draws(self, x, generator=None):
        """Every random draw of the loss of x (B, L) (see Draws): the first diffusion_rows(B) rows
        get stratified times and z_t (diffusion_draws), the others z_0 (sequential_draws)."""
        B, L = x.shape
        n_diff = self.diffusion_rows(B)
        t = torch.zeros(0, device=x.device)
        masked = []
        sigma = []
        if n_diff > 0:
            t = sample_t(n_diff, x.device, generator)
            m, s = self.diffusion_draws(t, L, generator)
            masked.append(m)
            sigma.append(s)
        n_skip = 0
        if n_diff < B:
            m, s = self.sequential_draws(B - n_diff, L, x.device, generator)
            masked.append(m)
            sigma.append(s)
            n_skip = skippable(m)  # an int read back from the draws, outside any compiled graph
        return Draws(t, torch.cat(masked), torch.cat(sigma), n_skip)

    def diffusion_draws(self, t, L, generator=None):
        """(masked, sigma) (n, L) of z_t for the times t (n,): each token masked with probability
        1 - alpha_t, clean tokens first, both groups in random order."""
        n = t.size(0)
        masked_prob = 1 - alpha(t, self.config.alpha_0)
        masked = torch.rand(n, L, device=t.device, generator=generator) < masked_prob[:, None]
        u = torch.rand(n, L, device=t.device, generator=generator)
        return masked, diffusion_order(masked, u)

    def sequential_draws(self, n, L, device, generator=None):
        """(masked, sigma) (n, L) of z_0: each token masked with probability 1 - alpha_0, clean
        tokens first in random order (variant A: left to right), then the masks left to right."""
        masked = torch.rand(n, L, device=device, generator=generator) < 1 - self.config.alpha_0
        u = torch.rand(n, L, device=device, generator=generator)
        if self.config.variant == "A":
            # Under A the clean tokens attend to each other both ways, so their order among
            # themselves changes nothing: they go in position order, as the authors' code has it.
            u = torch.arange(L, device=device).expand(n, L) / L
        return masked, sequential_order(masked, u)

    def forward(self, x, draws, loss_type=None, dense=False):
        """Per-token hybrid NELBO (nats) of clean tokens x (B, L) for given draws, and its parts.

        The first rows (as many as draws.t holds) estimate the diffusion term, the rest the
        sequential term. Each part is a sum over masked tokens divided by all tokens of its rows,
        and the loss is their sum: an estimate of the per-token NELBO (with loss_type elbo, which
        validation always uses). Each row gives one term only, so one row's loss is no estimate
        of its own sequence's NELBO; the batch's loss estimates the NELBO averaged over the data,
        without bias. dense=True: the sequential term's plain path (section 8 holds the fast
        one)."""
        B = x.size(0)
        n_diff = draws.t.size(0)
        zero = x.new_zeros((), dtype=torch.float32)
        diffusion = zero
        sequential = zero
        if n_diff > 0:
            rows = slice(0, n_diff)
            diffusion = self.diffusion_nll(
                x[rows], draws.t, draws.masked[rows], draws.sigma[rows], loss_type
            )
        if n_diff < B:
            rows = slice(n_diff, B)
            sequential = self.sequential_nll(
                x[rows], draws.masked[rows], draws.sigma[rows], dense, draws.n_skip
            )
        parts = {"diffusion": diffusion.detach(), "sequential": sequential.detach()}
        return diffusion + sequential, parts

    def loss(self, x, loss_type=None, generator=None, dense=False):
        """forward with fresh draws: the loss of x (B, L) and its parts."""
        return self(x, self.draws(x, generator), loss_type, dense)

    def diffusion_nll(self, x, t, masked, sigma, loss_type=None):
        """The diffusion term of the NELBO (eq. 7), per token, for given draws: t (B,), masked
        (B, L) bool (z_t), sigma (B, L) with the clean tokens first.

        The term is MDLM's continuous-time bound on the diffusion phase (Sahoo et al. 2024):
            E_{t, z_t} [ sum over masked l of  -alpha'_t / (1 - alpha_t) * -log p(x_l | z_t) ].
        alpha'_t = -alpha_0 (1 - EPS), so a mask's weight is alpha_0 (1 - EPS) / (1 - alpha_t).
        The transformer reads z_t in decode order under a plain causal mask (variant A: the clean
        block attends both ways), so the i-th mask sees itself, the clean tokens and the i - 1
        masks before it.
        Section 7.3 says what the term bounds, and why it is a bound although its masks see
        masks. Section 7.2 says what it leaves out, as MDLM's code does."""
        B, L = x.shape
        z = torch.where(masked, self.mask_id, x)
        # (B, L) each, in decode order
        z_sorted = z.gather(1, sigma)
        x_sorted = x.gather(1, sigma)
        masked_sorted = masked.gather(1, sigma)
        attn_mask = None  # B: plain causal
        if self.config.variant == "A":  # the clean block attends both ways
            slots = torch.arange(L, device=x.device)
            attn_mask = prefix_lm_mask(slots, L, (~masked).sum(1))
        logits = self.logits(self.hidden(z_sorted, sigma, attn_mask))
        nll = F.cross_entropy(logits.flatten(0, 1), x_sorted.flatten(), reduction="none")
        nll = nll.view(B, L)
        if (loss_type or self.config.loss_type) == "elbo":
            # -alpha'_t / (1 - alpha_t), alpha'_t = -alpha_0 (1 - EPS)
            weight = self.config.alpha_0 * (1 - EPS) / (1 - alpha(t, self.config.alpha_0))
        else:  # low_var: plain masked cross-entropy (training only)
            weight = torch.ones_like(t)
        return (nll * masked_sorted * weight[:, None]).sum() / (B * L)

    def sequential_nll(self, x, masked, sigma, dense=False, n_skip=None):
        """The sequential term of the NELBO (eq. 7), per token, for given draws: masked (B, L)
        bool (z_0), sigma (B, L) with the clean tokens first, then the masks left to right (as
        sequential_order makes it).

        The term is the exact NLL of the sequential phase given z_0:
            E_{z_0} [ sum over masked l of  -log p(x_l | clean tokens of z_0, x at masked l' < l) ].
        Why two halves, [z_0 ; x] in decode order, and not a shift by one as in GPT? The sampler
        predicts the token at position l from a [MASK] token at position l, so training must do
        the same. A shift by one would predict position l from the slot before it, whose token
        sits at another position, so the model would have to be told which position comes next.
        One network serves every order, the random diffusion and likelihood orders too. So each
        query must carry its own target position: the [MASK] at l carries l in its rotary
        embedding. The later slots must read the true x_l, but the slot at l cannot hold it: the
        prediction at l would then read the token it predicts. So the true tokens come from a
        second half. The z slot of l sees itself and the x slots before it: the clean tokens,
        and x at the masked positions left of l.
        dense=True: the plain path; else section 8's fast one, the same numbers
        (without dropout)."""
        B, L = x.shape
        logp = self.sequential_logprobs(x, masked, sigma, dense, n_skip)
        return -(logp * masked.gather(1, sigma)).sum() / (B * L)

    def sequential_logprobs(self, x, masked, sigma, dense=False, n_skip=None):
        """log p(x at each slot) (B, L), in decode order, from one forward of both halves
        [z_0 ; x] through sequential_mask: the outputs of the z half predict.

        dense=False takes section 8's fast path, fast_sequential_logprobs, which computes the
        same numbers with less work (n_skip: what it may leave out)."""
        if not dense:
            return fast_sequential_logprobs(self, x, masked, sigma, n_skip)
        L = x.size(1)
        z = torch.where(masked, self.mask_id, x)
        z_sorted = z.gather(1, sigma)  # (B, L) in decode order
        x_sorted = x.gather(1, sigma)
        slots = torch.arange(L, device=x.device)
        x_attn_mask = prefix_lm_mask(slots, L)  # B: the x half is causal
        if self.config.variant == "A":  # plus its clean block, both ways
            x_attn_mask = prefix_lm_mask(slots, L, (~masked).sum(1))
        tokens = torch.cat([z_sorted, x_sorted], 1)  # (B, 2L)
        positions = torch.cat([sigma, sigma], 1)
        h = self.hidden(tokens, positions, sequential_mask(x_attn_mask))[:, :L]  # the z half
        logp = F.log_softmax(self.logits(h), dim=-1)  # (B, L, V)
        return logp.gather(-1, x_sorted[:, :, None]).squeeze(-1)

    # Sampling (Alg. 3; the diffusion phase's step sizes are Alg. 2's, from unmask_schedule) ----
    @torch.no_grad()
    def generate(
        self,
        num_samples,
        steps,
        *,
        alpha_0=None,
        temperature=1.0,
        top_p=1.0,
        canvas=None,
        block_order=False,
        kv_cache=True,
        generator=None,
        callback=None,
    ):
        """Sample (num_samples, L) tokens: (tokens, nfe), tokens without the mask id, nfe the
        forwards spent: plan, then decode.

        steps: T, the steps of the diffusion schedule. Each mask picks its step at random, so
        some steps get several masks. Once T is much larger than L, most diffusion tokens get a
        step of their own; once it is much larger than L^2, with probability close to 1 every one
        does (the birthday problem: n tokens on T steps all differ with probability about
        exp(-n^2 / 2T)). The paper uses T = 1e6.
        alpha_0: sampling-time alpha_0 (None = the model's). The model has no time input, so any
        runs, but it samples best near the alpha_0 it was trained at. A lower one leaves more to
        the sequential phase, which spends one NFE a token: so more NFE, unless T is already
        so large that most diffusion tokens have a step of their own.
        temperature, top_p: at 1 and 1 each row follows the sampler's own law at this T, which
        is neither the NELBO's model nor the likelihood's (section 7.4). The rows of one call
        share the step sizes (unmask_schedule), so they are not independent of each other;
        separate calls are.
        canvas: (num_samples or 1, L), known tokens kept exactly and the mask id elsewhere (a
        prompt, an infilling template), as many masks in every row.
        block_order: see block_streams. The rest: see decode.
        """
        alpha_0 = self.config.alpha_0 if alpha_0 is None else alpha_0
        steps = check_sampling_args(steps, alpha_0, temperature, top_p)
        canvas, sigma, sizes = self.plan(
            num_samples,
            steps,
            alpha_0=alpha_0,
            canvas=canvas,
            block_order=block_order,
            generator=generator,
        )
        return self.decode(
            canvas,
            sigma,
            sizes,
            temperature=temperature,
            top_p=top_p,
            kv_cache=kv_cache,
            generator=generator,
            callback=callback,
        )

    def plan(
        self, num_samples, steps, *, alpha_0=None, canvas=None, block_order=False, generator=None
    ):
        """(canvas, sigma, sizes): what a sample will decode, drawn before any forward, the same
        for every path: the canvas (num_samples, L) (all masks by default), the order sigma
        (B, L) and the sizes of the diffusion steps (the sequential steps follow, one token
        each)."""
        alpha_0 = self.config.alpha_0 if alpha_0 is None else alpha_0
        steps = check_sampling_args(steps, alpha_0, 1.0, 1.0)
        canvas = self._check_canvas(num_samples, canvas, self.wte.weight.device)
        known = canvas != self.mask_id  # (B, L)
        n_masked = int((~known[0]).sum())
        sizes = unmask_schedule(n_masked, steps, alpha_0, generator, canvas.device)
        sigma, sizes = sampling_order(known, sizes, block_order, generator)  # (B, L)
        return canvas, sigma, sizes

    @torch.no_grad()
    def decode(
        self,
        canvas,
        sigma,
        sizes,
        *,
        temperature=1.0,
        top_p=1.0,
        kv_cache=True,
        generator=None,
        callback=None,
    ):
        """Decode the masks of canvas (B, L) in the order sigma (B, L) (Alg. 3): the known tokens
        come first (in variant B, fed as the first step's clean tokens), then diffusion steps of
        sizes[i] tokens, then one token per step. Returns (tokens, nfe).

        kv_cache=True steps with a KV cache (section 8's CachedStep). kv_cache=False is the plain
        path, all L slots through the transformer at every step (uncached_step): the same tokens.
        callback(tokens, nfe): after every step, with the canvas in position order."""
        step = self.uncached_step
        if kv_cache:
            step = CachedStep(self, self.kv_cache(canvas.size(0)))
        return self.decode_steps(
            canvas, sigma, sizes, step, temperature, top_p, generator, callback
        )

    @torch.no_grad()
    def decode_steps(
        self,
        canvas,
        sigma,
        sizes,
        step,
        temperature=1.0,
        top_p=1.0,
        generator=None,
        callback=None,
    ):
        """decode's loop, given its step: step(canvas, sigma, done, k, n_clean0) returns the
        hidden states (B, k, C) of the k masks that it decodes (uncached_step, or a CachedStep).
        The compiled sampler (compiled.py) passes a step of its own."""
        L = self.config.block_size
        # every row holds as many masks (generate checks it), so row 0 counts for all
        n_known = int((canvas[0] != self.mask_id).sum())
        n_clean0 = n_known + sum(sizes)  # the clean tokens of z_0: known and diffusion tokens
        sizes = list(sizes) + [1] * (L - n_clean0)  # the sequential phase: one token per step
        canvas = canvas.gather(1, sigma)  # (B, L): canvas[b, i] = the token at position sigma[b, i]
        done = n_known  # canvas[:, :done] is decoded
        nfe = 0
        for k in sizes:  # k = the number of tokens this step decodes
            h = step(canvas, sigma, done, k, n_clean0)  # (B, k, C)
            canvas[:, done : done + k] = sample_tokens(
                self.logits(h), temperature, top_p, generator
            )
            done += k
            nfe += 1
            if callback is not None:
                callback(unpermute(canvas, sigma), nfe)
        return unpermute(canvas, sigma), nfe

    def uncached_step(self, canvas, sigma, done, k, n_clean0):
        """The plain path's step: all L slots of the decode-order canvas through the
        transformer; returns the hidden states (B, k, C) of this step's k masks. (Section 8's
        CachedStep feeds only the slots its KV cache lacks.)"""
        attn_mask = None  # B: plain causal
        if self.config.variant == "A":
            slots = torch.arange(canvas.size(1), device=canvas.device)
            attn_mask = prefix_lm_mask(slots, canvas.size(1), min(done, n_clean0))
        return self.hidden(canvas, sigma, attn_mask)[:, done : done + k]

    def kv_cache(self, batch):
        """An empty KVCache for `batch` rows, in the dtype of the keys (the autocast dtype under
        autocast)."""
        cfg = self.config
        shape = (batch, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head)
        return KVCache(cfg.n_layer, shape, self.cache_dtype(), self.wte.weight.device)

    def cache_dtype(self):
        """The dtype of the keys and values: the autocast dtype under autocast, else the
        weights'."""
        device = self.wte.weight.device
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
        return self.wte.weight.dtype

    def _check_canvas(self, num_samples, canvas, device):
        L = self.config.block_size
        mask_id = self.mask_id
        num_samples = whole("num_samples", num_samples)
        if canvas is None:
            return torch.full((num_samples, L), mask_id, dtype=torch.long, device=device)
        canvas = torch.as_tensor(canvas, device=device)
        if canvas.dim() == 1:
            canvas = canvas[None]
        if (
            canvas.dtype != torch.long
            or canvas.size(1) != L
            or canvas.size(0) not in (1, num_samples)
        ):
            raise ValueError(
                f"canvas must be a LongTensor of shape ({num_samples} or 1, {L}), got "
                f"{tuple(canvas.shape)} {canvas.dtype}"
            )
        if canvas.min() < 0 or canvas.max() > mask_id:
            raise ValueError(f"canvas tokens must lie in [0, {mask_id}] ({mask_id} = [MASK])")
        n_masks = (canvas == mask_id).sum(1)
        if (n_masks != n_masks[0]).any():
            raise ValueError(
                "every canvas row must hold the same number of masks (the step schedule is shared)"
            )
        return canvas.expand(num_samples, L).clone()

    # Likelihood (Thm 3.1) ---------------------------------------------------------------------
    @torch.no_grad()
    def likelihood(self, x, num_orders, generator=None, dense=False):
        """The importance-weighted (IW) bound on the NLL of x (B, L), in nats per token
        (Thm 3.1 and B.4), of the sampler that decodes one token per step (T much larger than
        L^2). Its diffusion phase decodes a random subset of the positions, each position in it
        with probability alpha_0, in random order. (The sampler itself uses unmask_schedule's
        p_mdm, a hair below alpha_0.) Its sequential phase decodes the rest, left to right. The
        training NELBO bounds a nearby model that shares the weights, so the two numbers need not
        agree (section 7.4).

        One order in one forward. Fix an order sigma. Then
        p(x | sigma) = prod_l p(x_sigma(l) | x_sigma(<l)), and one forward of both halves through
        the sequential pattern gives all L factors: [all masks ; x sorted by sigma], in which each
        z slot sees its own [MASK] and the true tokens before it.

        The bound. The model's p(x) is the mean of p(x | sigma) over the law of orders above.
        This draws K = num_orders orders from that law itself: the proposal is the prior over
        orders, so each importance weight p(x, sigma_k) / q(sigma_k) is just p(x | sigma_k). The
        mean of the K values p(x | sigma_k) estimates p(x) without bias. By Jensen,
        E[-log mean] >= -log p(x): an upper bound. Its gap shrinks as K grows (Burda et al.
        2016): the mean of more orders varies less, so -log of it is less biased."""
        # at alpha_0 = 0 every position is sequential, so A's clean block is empty: A = B
        if self.config.variant != "B" and self.config.alpha_0 > 0:
            raise ValueError(
                "the one-forward any-order bound needs variant B (or alpha_0 = 0): under variant "
                "A the clean tokens' representations change as tokens arrive"
            )
        num_orders = whole("num_orders", num_orders)
        B, L = x.shape
        all_masks = torch.ones_like(x, dtype=torch.bool)  # z: every position a [MASK]
        log_p = []
        for _ in range(num_orders):
            u = torch.rand(B, L, device=x.device, generator=generator)
            sequential_phase = u >= self.config.alpha_0
            keys = torch.rand(B, L, device=x.device, generator=generator)
            sigma = sequential_order(sequential_phase, keys)
            logp = self.sequential_logprobs(x, all_masks, sigma, dense, n_skip=0)
            log_p.append(logp.sum(1))  # (B,)
        log_px = torch.logsumexp(torch.stack(log_p), 0) - math.log(num_orders)  # (B,)
        return -log_px.mean() / L


# -----------------------------------------------------------------------------
# 7. Why it is right: the arguments behind sections 5 and 6
#
# The docstrings above say what each function computes. These four arguments say why that is
# the paper's method. A first reading may skip them.
#
# 7.1 unmask_schedule draws the step sizes of Alg. 2.
# Alg. 2 starts at time 1 with every position masked. It walks time down to 0 in T equal steps,
# t_0 = 1 > t_1 > ... > t_T = 0. Its step k, from t_{k-1} to t_k, decodes each remaining mask
# independently with probability (alpha(t_k) - alpha(t_{k-1})) / (1 - alpha(t_{k-1})): the
# chance, under the forward process, that a position masked at t_{k-1} is clean at t_k. The
# schedule's alpha_1 = EPS alpha_0 is not quite 0, so at time 1 a position is masked with
# probability 1 - alpha_1, not 1. The sampler's all-mask start conditions on it. Follow one mask:
#   - given that it is masked at time 1, it is still masked when step k begins with probability
#     (1 - alpha(t_{k-1})) / (1 - alpha_1):
#     the product of the earlier steps' survival factors (1 - alpha(t_j)) / (1 - alpha(t_{j-1})),
#     in which each numerator cancels the next denominator;
#   - so step k decodes it with probability (alpha(t_k) - alpha(t_{k-1})) / (1 - alpha_1);
#   - alpha is linear in t and the steps are equal, so this difference is the same at every
#     step: each step gets p_mdm / T, and the T steps together get
#     p_mdm = (alpha_0 - alpha_1) / (1 - alpha_1).
# So each mask, independently, joins the diffusion phase with probability p_mdm and is decoded at a
# step drawn uniformly from the T: what unmask_schedule draws. Its step j = 0..T-1 is Alg. 2's
# step k = j + 1 (step 0 runs first, at time 1). The masks are exchangeable, so drawing the counts
# there and the positions in sampling_order gives the chain's law.
# The order within a step is uniformly random too (sampling_order shuffles it). It does not change
# which positions a step decodes, but it changes the predictions, since a step's masks see the
# masks sorted before them: that is why a sampler with several tokens a step has a law of its own
# (7.4).
#
# 7.2 What the NELBO leaves out, and how much.
# The prior term at t = 1 is dropped. z_1 keeps each token with probability alpha_1 = EPS alpha_0.
# Take a prior in which each position is, with that same probability alpha_1, a uniformly random
# token, and otherwise a mask. Against it, the term is alpha_1 log V nats per token (3.5e-4 at
# train.py's alpha_0 = 0.0625 with V = 256 bytes): at each position, z_1 holds x's token with
# probability alpha_1 where the prior puts alpha_1 / V on it, which gives alpha_1 log V, and the
# masks' probabilities agree, which gives 0. Against the sampler's all-mask start it is,
# strictly, infinite. It is infinite in MDLM too, whose schedule also keeps alpha_1 = EPS (its
# alpha_0 is 1).
# And t is drawn uniformly from [T_EPS, 1), not [0, 1). So the estimate is the mean of the
# diffusion term's integrand over [T_EPS, 1] (its integral there, divided by 1 - T_EPS), where the
# NELBO wants its integral over [0, 1]:
#   estimate - integral = T_EPS (mean over [T_EPS, 1] - mean over [0, T_EPS]).
# The integrand is the weight alpha_0 (1 - EPS) / (1 - alpha_t) times the loss summed over the
# masks of z_t, of which there are L (1 - alpha_t) on average. So it is the constant
# alpha_0 (1 - EPS) L times the mean loss at a mask (the expected loss summed over the masks,
# divided by their expected number). The mean over [0, T_EPS] is not negative, so
# for any model the estimate exceeds the integral by at most a share T_EPS (0.1%) of itself.
# It falls below the integral only if the integrand's mean over [0, T_EPS] exceeds its mean over
# [T_EPS, 1]: if the loss at a mask is larger, on average, at the times near 0, where the masks
# see more clean tokens. For the true conditionals it cannot be, since seeing more tokens lowers
# the expected entropy (H(X | Y, Z) <= H(X | Y)). For a trained model that is expected, not
# guaranteed.
# So the bound that follows rests on a condition of the model: that the loss at a mask falls with
# more clean tokens (expected, not guaranteed). Under it, the time sliver only raises the number,
# and adding back the dropped prior term, alpha_1 log V nats per token, gives at least the full
# NELBO. So the computed NELBO, in expectation over its draws, plus alpha_1 log V is an upper bound
# on -log p(x), for the model that starts from this prior, not from all masks (alpha_1 log V is
# 3.5e-4 for train.py's default model, whose NELBO is about 1.45).
#
# 7.3 What the diffusion term bounds, and why it is a bound although its masks see masks.
# Eq. 7 splits -log p(x) in two, with z_0 drawn from q(z_0 | x), the forward process at t = 0:
#   -log p(x) <= E_{z_0} [ -log p(x | z_0) ] + KL( q(z_0 | x) || p(z_0) ).
# The sequential term is the first part, exactly. The diffusion term, with the prior term at
# t = 1, bounds the second: how far the diffusion phase's law of z_0 is from the forward
# process's. Why it bounds it:
#   - Both laws of z_0 are the ends of chains that start at z_1. The KL between the laws of the
#     ends is at most the KL between the laws of the whole paths.
#   - The path KL is the prior term, KL(q(z_1 | x) || p(z_1)), plus each reverse step's expected
#     KL(q(z_s | z_t, x) || p(z_s | z_t)).
#   - In continuous time the sum of the steps' KLs is MDLM's integral: the diffusion term.
# So the two terms do not overlap. The sequential term scores the tokens that z_0 masks, given z_0.
# The diffusion term scores the tokens that the diffusion phase writes, the clean tokens of z_0,
# each as it unmasks. Which positions stay masked costs it nothing: with zero masking and clean
# tokens carried over, the reverse process unmasks at the forward process's rates, so each step's
# KL is the chance of unmasking a position times -log p(x_l) (MDLM's integrand).
# Their sizes: the diffusion term counts like alpha_0 L token losses, each the mean loss at a
# mask, since its weight times the expected number of masks is alpha_0 (1 - EPS) L at every t
# (7.2). The sequential term masks each token with probability 1 - alpha_0, so it counts the
# other (1 - alpha_0) L.
# In diffusion_nll the i-th mask in decode order sees itself, the clean tokens and the i - 1 masks
# before it. A sampler along the same order differs: by the step that decodes the i-th mask, it has
# decoded the masks sorted before it, so it sees them clean, all but those of its own step. Here
# they are all still masks. Seeing masks where a sampler sees tokens does not break the bound:
#   - The order comes from random keys u, drawn apart from z_t: sigma = diffusion_order(masked, u).
#   - Fix u. A mask carries no token, only its position. So the predictions at the masks are a
#     function of z_t alone (given the fixed u): a denoiser f_u.
#   - MDLM's bound holds for any denoiser: any map from z_t to distributions over the
#     vocabulary at its masks, with no mass on [MASK] (zero masking); clean tokens are carried
#     over as they are. The path-KL argument above uses nothing else of the denoiser. So for
#     each u, the NELBO with f_u (the diffusion term plus the sequential term) bounds
#     -log p_u(x).
#   - p_u is the model whose diffusion phase is MDLM's continuous-time reverse process run with
#     f_u. It decodes one mask at a time, from f_u's predictions on the z_t of that moment. (A
#     sampler with finite T is another model.)
#   - The sequential rows draw keys of their own. The NELBO is the sum of the two terms'
#     expectations, so fixing both sets of keys gives the same argument.
#   - By Jensen, the mean of these bounds over u bounds -log of the mean of p_u(x): the model
#     bounded is that mixture over u, which 7.4 describes.
#
# 7.4 Which model each number is about.
#   - The NELBO bounds that mixture over u. In its diffusion phase a mask sees the masks sorted
#     before it, and the clean tokens are sorted by u. In its sequential phase the clean tokens
#     of z_0 are sorted by the sequential rows' own keys.
#   - EsoLM.likelihood bounds the sampler that decodes one token per step, with alpha_0 in place
#     of p_mdm (unmask_schedule says how close they are). There each token sees the tokens
#     decoded before it and its own [MASK], and no other mask. The clean tokens are sorted by
#     when they were decoded.
#   - The two models share the weights but not the law, so the two numbers need not agree. A
#     sampler that decodes several tokens a step draws from a third law.
#   - The NELBO's models start at time 1 from 7.2's prior, which keeps a share alpha_1 of random
#     tokens, not from all masks. What the NELBO computes is their bound without the prior term,
#     over t in [T_EPS, 1] and divided by 1 - T_EPS (7.2).
#   - The IW bound leaves out nothing: its model starts from all masks.


# -----------------------------------------------------------------------------
# 8. Making it fast. Each fast path computes what a plain path above computes, and a test binds
# the two:
#   - SequentialPattern, the sequential term's attention, against sequential_mask (dense=True):
#     the same numbers (without dropout, which the two paths draw differently);
#   - CachedStep, the sampler's step with a KV cache, against EsoLM.uncached_step: the same
#     tokens (the logits agree to float rounding).
# (The compiled sampler, compile machinery with process-wide state, is in compiled.py.)


class SequentialPattern:
    """The sequential term's attention without the waste of the dense path's sequential_mask,
    whose z-to-z block is its diagonal and x-to-z block empty.

    It feeds [x sorted ; the z slots from n_skip on], L + m tokens (m = L - n_skip), and computes
      x slot i -> x slots j <= i: SDPA's causal kernel (variant A: x_attn_mask, its prefix-LM);
      z slot i -> x slots j < i, and itself: groups of GROUP z queries, each group against the
                  x slots before its last z slot and its own z keys (a size x size block of
                  z-to-z scores); the group's attention mask then cuts each query's x keys to
                  those before it, and keeps the diagonal of the z-to-z block.
    The dense path lays out [z ; x]; this one puts x first, [x ; z], so that every group's x keys
    are a leading piece of the x half (x_sizes cuts it).
    Nothing attends to a z slot but itself, so leaving some out changes no other output: the z
    slots before n_skip, clean in every row (clean tokens come first), are not fed; clean ones
    after it are, and the loss zeroes them."""

    GROUP = 128  # z queries per attention call

    def __init__(self, L, n_skip, x_attn_mask, device):
        self.L = L
        self.n_skip = n_skip
        self.x_attn_mask = x_attn_mask
        group_starts = range(0, L - n_skip, self.GROUP)
        self.z_sizes = [min(self.GROUP, L - n_skip - a) for a in group_starts]  # z slots per group
        # Slots are decode-order slots 0..L-1 (z slot s is token L + s - n_skip of the fed
        # tensor). An example: L = 6, n_skip = 2, GROUP = 2. The z slots 2..5 form two groups,
        # (2, 3) and (4, 5). Group (2, 3) reads the x slots [0, 3) and its own z keys 2 and 3;
        # group (4, 5) reads the x slots [0, 5) and its z keys 4 and 5. A group's attention mask
        # then cuts each query's x keys to the strictly earlier ones: z slot 4 sees x [0, 4).
        # Each group's last z slot (3 and 5 in the example): the group reads the x slots before it.
        last_slots = [n_skip + a - 1 for a in itertools.accumulate(self.z_sizes)]
        # The x half cut at the last slots, so that group c reads pieces 0..c: [0, 3), [3, 5)
        # and [5, 6) in the example (the last piece is fed, but no group reads it).
        self.x_sizes = [e - s for s, e in zip([0] + last_slots, last_slots + [L])]
        # group c: its z queries against [x slots < last[c] ; its own z keys]
        self.group_attn_masks = []
        for size, last in zip(self.z_sizes, last_slots):
            slot = last + 1 - size + torch.arange(size, device=device)[:, None]  # (size, 1)
            to_x = torch.arange(last, device=device) < slot  # strictly earlier x slots
            to_z = torch.eye(size, dtype=torch.bool, device=device)  # itself
            self.group_attn_masks.append(torch.cat([to_x, to_z], 1))

    def attend(self, q, k, v, dropout_p=0.0):  # q, k, v: (B, nh, L + m, hd)
        sdpa = F.scaled_dot_product_attention
        m = q.size(2) - self.L
        qx, qz = q.split([self.L, m], 2)
        kx, kz = k.split([self.L, m], 2)
        vx, vz = v.split([self.L, m], 2)
        is_causal = self.x_attn_mask is None
        ys = [
            sdpa(qx, kx, vx, attn_mask=self.x_attn_mask, is_causal=is_causal, dropout_p=dropout_p)
        ]
        # Split, not slice: the backward of a slice fills a zero tensor of the full size, per
        # group.
        kx = kx.split(self.x_sizes, 2)
        vx = vx.split(self.x_sizes, 2)
        groups = zip(
            qz.split(self.z_sizes, 2), kz.split(self.z_sizes, 2), vz.split(self.z_sizes, 2)
        )
        for c, (qc, kc, vc) in enumerate(groups):
            keys = torch.cat([*kx[: c + 1], kc], 2)  # (B, nh, last + size, hd)
            values = torch.cat([*vx[: c + 1], vc], 2)
            ys.append(
                sdpa(qc, keys, values, attn_mask=self.group_attn_masks[c], dropout_p=dropout_p)
            )
        return torch.cat(ys, 2)  # (B, nh, L + m, hd)


def skippable(masked):
    """n_skip for z_0 masks (B, L): the slots clean in every row, in whole groups of
    SequentialPattern.GROUP (a handful of shapes: few graphs compiled)."""
    group = SequentialPattern.GROUP
    return int((~masked).sum(1).min()) // group * group


def fast_sequential_logprobs(model, x, masked, sigma, n_skip=None):
    """EsoLM.sequential_logprobs through SequentialPattern: the same log-probabilities (B, L).

    It feeds [x in decode order ; the z slots from n_skip on], L + (L - n_skip) tokens: x comes
    first so that every group of z queries reads a leading piece of the x half. The z slots
    before n_skip are clean in every row (clean tokens come first): they are never scored, so
    they are not fed, and their log-probabilities are given as 0. n_skip=None: skippable(masked).
    """
    L = x.size(1)
    if n_skip is None:
        n_skip = skippable(masked)
    z = torch.where(masked, model.mask_id, x)
    z_sorted = z.gather(1, sigma)  # (B, L) in decode order
    x_sorted = x.gather(1, sigma)
    x_attn_mask = None  # B: SDPA's causal kernel over the x half
    if model.config.variant == "A":
        slots = torch.arange(L, device=x.device)
        x_attn_mask = prefix_lm_mask(slots, L, (~masked).sum(1))
    pattern = SequentialPattern(L, n_skip, x_attn_mask, x.device)
    tokens = torch.cat([x_sorted, z_sorted[:, n_skip:]], 1)  # (B, 2L - n_skip)
    positions = torch.cat([sigma, sigma[:, n_skip:]], 1)
    h = model.hidden(tokens, positions, pattern)[:, L:]  # (B, L - n_skip, C): the z slots fed
    logp = F.log_softmax(model.logits(h), dim=-1)
    logp_x = logp.gather(-1, x_sorted[:, n_skip:, None]).squeeze(-1)  # (B, L - n_skip)
    return F.pad(logp_x, (n_skip, 0))  # (B, L): 0 at the skipped slots


class CachedStep:
    """decode's step with the KV cache: called as EsoLM.uncached_step is, and it returns the
    same hidden states (B, k, C) of this step's k masks, up to float rounding. done counts the
    slots decoded before this step (canvas[:, :done]); this step decodes the slots
    [done, done + k), and decode adds k to done after it. One CachedStep serves one decode: it
    empties its cache when made.

    Variant B decodes as an AR model with a cache does. cache.length counts the slots the cache
    holds; each step sets it after its forward. Before the step, the cache holds slots
    [0, cache.length): every token decoded before the last step (a prompt counts as decoded at a
    step 0, so the first step feeds it). The step feeds the slots from cache.length to done + k:
    the tokens the last step decoded, clean now, then this step's k masks, causal in decode
    order. After it, the cache holds [0, done): the last step's tokens join it, their keys and
    values written by this forward, the first that feeds them clean. So a token's keys and
    values are kept one step late. This is exact: a clean token's keys and values depend only on
    itself and the tokens at earlier slots (those decoded at earlier steps, and those decoded at
    the same step as it and sorted before it), which never change, and no later step reads a
    mask's.

    Variant A differs by an attention mask: its clean block, the first min(done, n_clean0)
    slots, attends both ways. While it grows (the diffusion phase), its keys and values change
    with every token that joins it, so each such step feeds the whole block and the cache keeps
    nothing. From the first sequential step on, the block is whole: that step keeps it
    (App. D.3), and A decodes as B.

    What each step feeds, and what the cache holds after it:
      B, every step                           slots [cache.length, done + k)   [0, done)
      A, while done < n_clean0 (diffusion)    slots [0, done + k)              nothing
      A, its first sequential step            slots [0, done + 1)              [0, done)
      A, from then on                         as B
    A's first sequential step is B's rule applied to an empty cache: cache.length = 0, so it
    feeds every slot, and keeps the clean block, which is every token decoded so far.

    Variant A on the worked example (n_clean0 = 3), as `python eso.py` prints it (B's table is
    in the top docstring). Steps 1 and 2 feed the block decoded so far (empty at step 1) and
    their masks, and keep nothing. Step 3, the first sequential one, feeds every slot and keeps
    the whole block. From step 4 on, A decodes as B:
        step 1 feeds M3 M1        keeps -         decodes C3 A1 (diffusion)
        step 2 feeds C3 A1 M6     keeps -         decodes F6 (diffusion)
        step 3 feeds C3 A1 F6 M2  keeps C3 A1 F6  decodes B2 (sequential)
        step 4 feeds B2 M4        keeps B2        decodes D4 (sequential)
        step 5 feeds D4 M5        keeps D4        decodes E5 (sequential)

    The names below, on the worked example's step 3 (B): the cache holds slots 0, 1 (C3 A1),
    so start = cache.length = 2; done = 3 and k = 1. The step feeds slots [2, 4), F6 M2, sets
    keep = 3, and returns the hidden states from slot done on: h[:, done - start:], the M2."""

    def __init__(self, model, cache):
        self.model = model
        self.cache = cache  # a KVCache (EsoLM.kv_cache)
        cache.reset()

    def __call__(self, canvas, sigma, done, k, n_clean0):
        clean_block = 0  # slots that attend both ways (variant A)
        keep = done  # after this step the cache holds slots [0, keep)
        if self.model.config.variant == "A":
            clean_block = min(done, n_clean0)
            if done < n_clean0:
                keep = 0
        start = self.cache.length  # the first slot fed: the cache holds the ones before it
        h = self.feed(canvas, sigma, start, done + k, clean_block)  # (B, done + k - start, C)
        self.cache.length = keep
        return h[:, done - start :]  # (B, k, C): this step's masks, the last k of the slots fed

    def feed(self, canvas, sigma, lo, hi, clean_block):
        """Hidden states (B, hi - lo, C) of the slots [lo, hi) of the decode-order canvas (B, L),
        through the cache: they write their keys and values at their slots, and attend to the
        slots [0, hi), causal in decode order, plus both ways within the first clean_block. (The
        compiled sampler overrides this.)"""
        self.cache.slots = torch.arange(lo, hi, device=canvas.device)
        attn_mask = prefix_lm_mask(self.cache.slots, hi, clean_block)  # (1, 1, hi - lo, hi)
        return self.model.hidden(canvas[:, lo:hi], sigma[:, lo:hi], attn_mask, self.cache)


# -----------------------------------------------------------------------------
# 9. `python eso.py`: the worked example of the docstring, from the functions above

LEGEND = """\
How to read it: each grid is an attention mask in decode order, one row per query and one
column per key, both labelled token + position (M = [MASK]); '█' = the row may attend to the
column, '·' = it may not. A sampler step "feeds" a chunk, "keeps" the clean tokens whose keys and
values the cache holds from then on, and "decodes" new tokens. C3 is the token decoded at position
3: the letters name positions (x's tokens), and the tiny random model draws tokens of its own.
In the sequential term's grids, the z rows of clean tokens (A1, C3, F6) are computed but never
scored: only the masks' rows predict. (Section 8's fast path skips the leading ones that are
clean in every row of a batch, in whole groups of 128.)"""


def print_grid(title, labels, mask):
    """One attention mask (queries x keys) as a grid of '█' (may attend) and '·'."""
    print(f"\n{title}\n      " + " ".join(f"{s:>3}" for s in labels))
    for label, row in zip(labels, mask.tolist()):
        cells = " ".join("  █" if allowed else "  ·" for allowed in row)
        print(f"  {label:>3} {cells}")


def show_example():
    """The docstring's worked example: the attention masks of variants A and B for x = ABCDEF,
    z_0 = A_C__F, then the cached sampler's steps along the sequential term's order, in B and A."""
    x = list("ABCDEF")
    masked = torch.tensor([[0, 1, 0, 1, 1, 0]], dtype=torch.bool)
    u = torch.tensor([[0.2, 0.9, 0.1, 0.3, 0.5, 0.4]])  # random keys giving the paper's orders
    print(LEGEND)
    for variant in ("B", "A"):
        n_clean = 3 if variant == "A" else 0
        x_attn_mask = prefix_lm_mask(torch.arange(6), 6, n_clean)  # (1, 1, 6, 6)
        keys = u
        if variant == "A":  # A's sequential term: clean tokens by position
            keys = torch.arange(6.0)[None] / 6
        terms = [
            ("diffusion term: z", diffusion_order(masked, u), x_attn_mask, False),
            (
                "sequential term: [z_0 ; x]",
                sequential_order(masked, keys),
                sequential_mask(x_attn_mask),
                True,
            ),
        ]
        for term, sigma, mask, two_halves in terms:
            order = sigma[0].tolist()
            labels = [("M" if masked[0, p] else x[p]) + str(p + 1) for p in order]
            if two_halves:
                labels += [x[p] + str(p + 1) for p in order]
            sigma_text = tuple(p + 1 for p in order)
            print_grid(
                f"Eso-LM ({variant}), {term} sorted by sigma = {sigma_text}", labels, mask[0, 0]
            )
    order = sequential_order(masked, u)[0].tolist()  # the sampler's sigma, 0-based
    sigma_text = tuple(p + 1 for p in order)
    print(f"\nThe cached sampler of variant B, along the sequential term's order {sigma_text}:")
    show_sampler_steps(x, order, "B")
    print(
        "\nThe cached sampler of variant A, the same order (nothing kept until the block is whole):"
    )
    show_sampler_steps(x, order, "A")


def show_sampler_steps(x, order, variant):
    """Decode along the order (sigma[0] as a list) with a tiny random model of `variant`,
    printing what each step fed, what the cache keeps from then on, and what it decoded (the
    tables of the docstring, for B, and of CachedStep, for A)."""
    torch.manual_seed(0)
    config = EsoConfig(block_size=6, vocab_size=6, n_layer=1, n_head=2, n_embd=16, variant=variant)
    model = EsoLM(config)
    sizes = [2, 1]  # the diffusion steps; then one token per step
    step = CachedStep(model, model.kv_cache(1))
    steps = []  # (slots fed, slots kept) per step

    def record(tokens, nfe):
        steps.append((step.cache.slots.tolist(), step.cache.length))

    canvas = torch.full((1, 6), model.mask_id)
    model.decode_steps(canvas, torch.tensor([order]), sizes, step, callback=record)

    def tag(slot, done):  # a slot >= done held a [MASK] when it was fed
        token = "M" if slot >= done else x[order[slot]]
        return f"{token}{order[slot] + 1}"

    done = 0  # tokens decoded before the step
    kept_before = 0  # slots the cache kept before the step
    for i, (fed, kept) in enumerate(steps):
        feeds = " ".join(tag(s, done) for s in fed)
        keeps = " ".join(tag(s, done) for s in range(kept_before, kept)) or "-"
        new = " ".join(x[order[s]] + str(order[s] + 1) for s in fed if s >= done)
        phase = "diffusion" if i < len(sizes) else "sequential"
        print(f"    step {i + 1} feeds {feeds:<11}  keeps {keeps:<8}  decodes {new} ({phase})")
        done = fed[-1] + 1
        kept_before = kept
    print(f"  NFE = {len(steps)}.")


if __name__ == "__main__":
    show_example()
