"""
Esoteric Language Models (Eso-LMs), in one file.

Sahoo, Yang, Akhauri, Liu, Singh, Cheng, Liu, Xing, Thickstun, Vahdat: "Esoteric Language Models",
arXiv 2506.01928 (ICML 2026). Equations, figures, algorithms and appendices cited below are the paper's.

One causal transformer that is an autoregressive language model (alpha_0 = 0), a masked diffusion
language model (alpha_0 = 1) or anything between, trained with one loss and sampled with one KV cache.

Words, each defined here and used in this one sense:
  x, [MASK], z  x: a clean sequence of L tokens at positions 0..L-1 (1..L in the examples). [MASK]: one more
                token id. z: a copy of x in which some positions are masked (hold [MASK]), the others clean.
  mask          a [MASK] token, at a masked position; "attention mask" is always said in full.
  phases        sampling runs a diffusion phase (MDM: masked diffusion model), which decodes a random subset
                of the positions, several per step, then a sequential phase (AR: autoregressive), which
                decodes all the remaining ones, one per step, left to right.
  t, z_t        diffusion time: z_t keeps each token of x with probability alpha_t = alpha_0 (1 - (1 - EPS) t)
                (EPS = 1e-3; alpha'_t: its derivative), from z_0 to z_1, almost all masks. Sampling runs t
                from 1 to 0; training draws it uniformly from [T_EPS, 1] (T_EPS = 1e-3).
  alpha_0       the share of clean tokens in z_0, which the diffusion phase makes and the sequential phase
                completes: in sampling, the expected share of positions that the diffusion phase decodes.
  sigma, slot   an order: sigma[b, i] is the position decoded i-th in batch row b. "In decode order" (the code
                says sorted), a sequence lists its tokens by sigma, each at its original position (through
                rotary embeddings); a slot is an index in that list; "before" means at an earlier slot.
  T, NFE        T: the steps of the diffusion schedule (empty ones cost nothing). NFE: the transformer
                forwards a sampler spends, one per non-empty step.
  NELBO         negative evidence lower bound: an upper bound on -log p(x). The paper's (eq. 7) has two terms:
                  sequential  E_{z_0} [ sum over masked l: -log p(x_l | clean tokens of z_0, x at masked l' < l) ]
                  diffusion   E_{t, z_t} [ sum over masked l: -alpha'_t / (1 - alpha_t) * -log p(x_l | z_t) ]
                the exact NLL of the sequential phase given z_0, and the continuous-time bound of MDLM (a
                masked diffusion LM, Sahoo et al. 2024) on the diffusion phase's, which omits, as theirs, the
                prior term at t = 1 and draws t from [T_EPS, 1].
  kappa         the share of a batch's rows that estimate the diffusion term; the others: the sequential.
  zero masking  the model never predicts [MASK]: its output layer has no [MASK] row.
  IW bound      an importance-weighted bound on -log p(x), tightening as it averages more orders (likelihood).
  canvas, chunk the L tokens being sampled (known ones, a prompt, and masks); the tokens one cached forward feeds.

Variant B (the paper's model) is causal in decode order everywhere: a clean token never sees anything
decoded after it, so its keys and values never change and one KV cache serves both phases. Variant A
(an ablation) lets the clean tokens (its clean block) see each other both ways: another attention mask.

A worked example (Figs. 6-9), printed by `python eso.py` from the functions below, with its masks:
x = ABCDEF at positions 1..6; B, D and E masked, as z_0 = A_C__F (and as z_t in the diffusion term).
  Diffusion term, sigma = (3, 1, 6, 4, 5, 2): the transformer reads C A F M M M at positions 3 1 6 4 5 2
  under a plain causal mask; the M slots predict D, E, B from the clean tokens and the earlier masks.
  Sequential term, sigma = (3, 1, 6, 2, 4, 5), masks left to right: two halves at the same positions,
  z_0 in decode order, C A F M M M, and x, C A F B D E. The M at position 4 sees itself and the x slots
  before it, C A F B (the clean tokens and the true tokens to its left), and predicts D.
  The cached sampler along that order (2, then 1 diffusion tokens, then 3 sequential ones), as its KV
  cache records it (letters name positions; the model draws its own tokens):
    step 1 feeds M3 M1       keeps -      decodes C3 A1 (diffusion)
    step 2 feeds C3 A1 M6    keeps C3 A1  decodes F6 (diffusion)
    step 3 feeds F6 M2       keeps F6     decodes B2 (sequential)
    step 4 feeds B2 M4       keeps B2     decodes D4 (sequential)
    step 5 feeds D4 M5       keeps D4     decodes E5 (sequential)
  NFE = 5. A chunk holds the tokens decoded at the step before, now clean, whose keys and values the
  cache keeps ("one step late"), and the masks to decode now; the last token is never fed.

Read top to bottom: 1 config; 2 the transformer, KV cache; 3 noise schedule, orders; 4 attention patterns;
5 sampling pieces; 6 the model: loss, sampler, likelihood; 7 the authors' released models; 8 making it fast
(each fast path beside the plain one it equals, bound by a test); 9 `python eso.py`.
"""

import itertools
import math
import numbers
import weakref
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-3  # alpha_t = alpha_0 (1 - (1 - EPS) t): the authors' schedule (alpha_1 = EPS alpha_0)
T_EPS = 1e-3  # training draws t from [T_EPS, 1]


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
    alpha_0: float = (
        0.5  # share of tokens clean in z_0 (the diffusion phase makes a hair less: unmask_schedule)
    )
    variant: str = "B"  # "B": causal everywhere, KV cache in both phases; "A": clean tokens attend bidirectionally
    loss_type: str = "elbo"  # "elbo" or "low_var" (diffusion weight 1 in training; the paper's choice at alpha_0 = 1)
    batch_split: Optional[float] = None  # kappa; None = the paper's
    bias: bool = False  # biases in the LayerNorms, the MLP and the head (the authors' models: from_reference)

    def __post_init__(self):
        if not 0.0 <= self.alpha_0 <= 1.0:
            raise ValueError(f"alpha_0 must lie in [0, 1], got {self.alpha_0}")
        if self.variant not in ("A", "B") or self.loss_type not in ("elbo", "low_var"):
            raise ValueError(
                f"variant must be 'A' or 'B' (got {self.variant!r}) and loss_type 'elbo' or 'low_var' "
                f"(got {self.loss_type!r})"
            )
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(
                f"n_embd ({self.n_embd}) must split into n_head ({self.n_head}) heads of even size"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if (
            self.batch_split is None
        ):  # the paper: kappa = 1 at alpha_0 = 1, 0 at alpha_0 = 0, else 0.5
            self.batch_split = 1.0 if self.alpha_0 == 1 else 0.0 if self.alpha_0 == 0 else 0.5
        k, a = self.batch_split, self.alpha_0
        if (a == 1 and k != 1) or (a == 0 and k != 0) or (0 < a < 1 and not 0 < k < 1):
            raise ValueError(
                f"batch_split {k} does not fit alpha_0 {a}: use 1 at alpha_0 = 1, 0 at alpha_0 = 0, "
                "and a value strictly between 0 and 1 otherwise (the paper uses 0.5)"
            )


# -----------------------------------------------------------------------------
# 2. The transformer: pre-norm GPT blocks, rotary embeddings at original positions, a KV cache


def rotary_tables(block_size, head_dim, base=10000.0):
    """cos and signed sin (L, hd) for the non-interleaved ("rotate half") rotary embedding."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(block_size).float(), inv_freq)  # (L, hd/2)
    return torch.cat([angles.cos()] * 2, -1), torch.cat([-angles.sin(), angles.sin()], -1)


def apply_rotary(x, cos, sin):
    """Rotate pairs (x_i, x_{i + hd/2}) of x (..., n, hd) by each token's angle, in float32, with cos, sin
    (B, 1, n, hd) gathered at each token's *original* position. x.roll(hd/2) is [x2, x1]: with sin's
    first half negated, x cos + roll(x) sin rotates each pair."""
    xf = x.float()
    return torch.addcmul(xf * cos, xf.roll(x.size(-1) // 2, -1), sin).type_as(x)


class Linear(nn.Module):
    """y = x @ weight (+ bias), the weight stored (in, out) as GPT-2's Conv1D: on CPUs, the one- and
    two-token products of cached decoding run about 20% faster in this layout than nn.Linear's."""

    def __init__(self, n_in, n_out, bias=False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out)) if bias else None

    def forward(self, x):
        return x @ self.weight if self.bias is None else x @ self.weight + self.bias


class KVCache:
    """The sampler's KV cache: a key and a value per token and layer, in decode order (slot i holds the token
    decoded i-th), for all L slots. The caller sets `slots` (1-D tensor), those of the tokens a forward feeds;
    the forward writes their keys and values there, and its attention reads as many slots from 0 as its mask
    has columns. Slots [0, length) hold clean tokens for good, the rest is provisional (overwritten when fed
    again). The buffers start at zero: hidden slots hold finite numbers (a NaN would leak through softmax)."""

    def __init__(self, n_layer, shape, dtype, device):  # shape: (B, nh, L, hd)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.length, self.slots = 0, None

    def update(self, layer, k, v):  # k, v: (B, nh, n, hd) at self.slots
        self.k[layer][:, :, self.slots] = (
            k  # written at a tensor of slots: no shape depends on where
        )
        self.v[layer][:, :, self.slots] = v
        return self.k[layer], self.v[layer]  # (B, nh, L, hd)


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.qkv = Linear(config.n_embd, 3 * config.n_embd)
        self.proj = Linear(config.n_embd, config.n_embd)

    def forward(self, x, cos, sin, attn_mask, cache=None, layer=0):
        B, n, C = x.shape  # n tokens
        qkv = (
            self.qkv(x).view(B, n, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)
        )  # (3, B, nh, n, hd)
        q, k = apply_rotary(
            qkv[:2], cos, sin
        )  # rotary on q and k (not v), before k enters the cache
        v = qkv[2]
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nh, L, hd): every slot
            k, v = (
                k[:, :, : attn_mask.size(-1)],
                v[:, :, : attn_mask.size(-1)],
            )  # the slots the mask covers
        p = self.dropout if self.training else 0.0
        if isinstance(attn_mask, SequentialPattern):  # the sequential term's fast path (section 8)
            y = attn_mask.attend(q, k, v, p)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None, dropout_p=p
            )
        y = self.proj(y.transpose(1, 2).reshape(B, n, C))
        return F.dropout(y, p, True) if p else y


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.fc = Linear(config.n_embd, 4 * config.n_embd, config.bias)
        self.proj = Linear(4 * config.n_embd, config.n_embd, config.bias)
        self.dropout = config.dropout

    def forward(self, x):
        y = self.proj(F.gelu(self.fc(x), approximate="tanh"))
        return F.dropout(y, self.dropout, True) if self.training and self.dropout else y


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
    """n stratified times in [T_EPS, 1]: (u + i) / n, i < n, mapped onto it (the authors call them antithetic)."""
    u = torch.rand(1, device=device, generator=generator)
    t = (u + torch.arange(n, device=device)) / n  # < 1: one time in each of n equal strata
    return (1 - T_EPS) * t + T_EPS


def diffusion_order(masked, u):
    """sigma (B, L): clean positions first, then masked ones (masked (B, L) bool), each group by the keys u."""
    return torch.argsort(masked * 2.0 + u, dim=1)


def sequential_order(last, u):
    """sigma (B, L): the positions not in `last` (B, L) bool first, sorted by the keys u; then those in it,
    left to right: in training, z_0's clean tokens, then its masks (the sequential phase's positions)."""
    L = last.size(1)
    ascending = torch.arange(L, device=last.device) / L
    return diffusion_order(last, torch.where(last, ascending, u))


def unpermute(sorted_tokens, sigma):  # the inverse of gather(1, sigma): back to position order
    return torch.empty_like(sorted_tokens).scatter_(1, sigma, sorted_tokens)


# -----------------------------------------------------------------------------
# 4. The attention patterns (Figs. 6-9): masks over slots, True = may attend


def prefix_lm_mask(slots, n_keys, prefix=0):
    """(B or 1, 1, len(slots), n_keys) bool, on the device of `slots`: queries at the decode slots `slots`
    (1-D LongTensor) against the keys at slots 0..n_keys-1, causal in decode order (key slot <= query
    slot), plus a bidirectional block over the first `prefix` slots, variant A's clean tokens (prefix:
    0 for B, an int, or a (B,) tensor, a count per row). The x half of sequential_mask is this mask too."""
    q = slots.view(1, 1, -1, 1)  # query slots
    k = torch.arange(n_keys, device=slots.device).view(1, 1, 1, -1)  # key slots
    if isinstance(prefix, int) and prefix == 0:
        return k <= q
    prefix = torch.as_tensor(prefix, device=slots.device).view(-1, 1, 1, 1)  # (B or 1, 1, 1, 1)
    return (k <= q) | ((q < prefix) & (k < prefix))


def sequential_mask(x_mask):
    """(B or 1, 1, 2L, 2L) mask over [z_0 sorted ; x sorted] (eq. 26-32, Fig. 9), from the x half's own
    mask x_mask (B or 1, 1, L, L), a prefix_lm_mask. z slot i -> itself and x slots j < i (the clean
    tokens and the true tokens to its left); x slot i -> as x_mask (causal; variant A: plus its clean
    block); nothing attends to a z slot but itself. The outputs of the z half are the predictions."""
    L = x_mask.size(-1)
    i = torch.arange(L, device=x_mask.device)
    z_queries = torch.cat([i[:, None] == i[None, :], i[:, None] > i[None, :]], dim=1)  # (L, 2L)
    z_queries = z_queries.expand(x_mask.size(0), 1, L, 2 * L)
    x_queries = torch.cat([torch.zeros_like(x_mask), x_mask], dim=-1)
    return torch.cat([z_queries, x_queries], dim=-2)


# -----------------------------------------------------------------------------
# 5. Sampling pieces: the arguments, the schedule, the order, one token draw


def whole(name, value, minimum=1):
    """value as an int if it is a whole number >= minimum (2.0 counts as 2), else a ValueError."""
    try:
        ok = (
            isinstance(value, numbers.Real)
            and not isinstance(value, bool)
            and value == int(value) >= minimum
        )
    except (ValueError, OverflowError):  # nan, inf
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a whole number of at least {minimum}, got {value!r}")
    return int(value)


def check_sampling_args(steps, alpha_0, temperature, top_p):
    """The sampling arguments, checked: returns steps as an int; anything else is a ValueError."""
    for ok, why in (
        (0.0 <= alpha_0 <= 1.0, f"alpha_0 must lie in [0, 1], got {alpha_0}"),
        (temperature > 0, f"temperature must be above 0, got {temperature}"),
        (0.0 < top_p <= 1.0, f"top_p must lie in (0, 1], got {top_p}"),
    ):
        if not ok:
            raise ValueError(why)
    return whole("steps", steps)


def unmask_schedule(n_masked, steps, alpha_0, generator, device):
    """Sizes of the non-empty diffusion steps, in time order (Alg. 2), in one vectorised draw.

    Step i = 0..T-1 runs t from t_i = 1 - i/T to s_i = t_i - 1/T = t_{i+1} and unmasks
    n ~ Binomial(remaining masks, p_i), p_i = (alpha_s - alpha_t) / (1 - alpha_t). A binomial
    over the remaining masks is each mask unmasking on its own with probability p_i, so follow
    one mask: its chance to be unmasked exactly at step i is the product of surviving the steps
    before, 1 - p_j = (1 - alpha_{s_j}) / (1 - alpha_{t_j}), and that product telescopes:
        prod_{j<i} (1 - p_j) = (1 - alpha_{t_i}) / (1 - alpha_1),
        P(step i) = (1 - alpha_{t_i}) / (1 - alpha_1) * p_i = (alpha_{s_i} - alpha_{t_i}) / (1 - alpha_1).
    alpha is linear in t and the steps are equal, so this is the same for every step: each mask
    is unmasked at all with probability (alpha_0 - alpha_1) / (1 - alpha_1), then at a uniformly
    random step, independently of the others: two draws per mask, however large T is (the paper's
    speed protocol uses T = 1e6). Masks not drawn go to the sequential phase. This draws how many
    masks each step unmasks, and sampling_order which ones: masks are exchangeable, so the two
    draws have the law of the step-by-step one. The sizes are shared by the rows of a batch.

    The chain starts at t = 1 from all masks, where the schedule would have alpha_1 = EPS alpha_0 clean,
    so the diffusion phase makes (alpha_0 - alpha_1) / (1 - alpha_1), a hair less than alpha_0 (0.49975
    for 0.5); training and the likelihood use alpha_0 itself.
    """
    p_mdm = (alpha_0 - alpha(1.0, alpha_0)) / (1 - alpha(1.0, alpha_0))  # 1 exactly at alpha_0 = 1
    in_mdm = torch.rand(n_masked, device=device, generator=generator) < p_mdm
    step = torch.randint(steps, (n_masked,), device=device, generator=generator)
    return step[in_mdm].unique(return_counts=True)[1].tolist()


def sampling_order(known, sizes, block_order=False, generator=None):
    """(sigma, sizes): sigma (B, L), sigma[b, i] = the position decoded i-th in row b, and the diffusion
    step sizes (the schedule's, or with block_order the streams'). sigma lists the known tokens first,
    left to right (fed once, as the first step's clean tokens); then the diffusion positions, sum(sizes)
    of the masks, a random subset per row in random order, cut into steps by sizes; then the
    sequential positions, the other masks, left to right.

    block_order=True is the authors' block ("subcontext", App. E.10) order, strided, for any L, alpha_0,
    prompt and T: the diffusion positions, in ascending order, are dealt into S streams, S = the number of
    non-empty diffusion steps, the r-th to stream r mod S (p0 < ... < p7 and S = 3 give {p0, p3, p6},
    {p1, p4, p7}, {p2, p5}), and each step decodes one stream, in random order: no two tokens of a step
    are closer than S positions. The larger streams go first; each row draws which stream a step decodes
    among those of its size. At alpha_0 = 1, S dividing L, step j decodes {p, p + S, ...}, as theirs.
    """
    B, L = known.shape
    dev, n = known.device, sum(sizes)
    pos = torch.arange(L, device=dev)
    base = torch.argsort(
        torch.where(known, pos - L, pos), dim=1
    )  # (B, L): known ascending, then masks ascending
    n_known = int(known[0].sum())
    masks = base[:, n_known:]  # (B, N) masked positions, ascending
    drawn = masks.gather(1, torch.rand(masks.shape, device=dev, generator=generator).argsort(1))
    diffusion, sequential = drawn[:, :n], drawn[:, n:].sort(1).values  # (B, n), (B, N - n)
    if block_order and n:
        S, big = (
            len(sizes),
            n % len(sizes),
        )  # streams 0..big-1 hold one position more than the others
        sizes = [n // S + (step < big) for step in range(S)]
        shuffle = lambda m: torch.rand(B, m, device=dev, generator=generator).argsort(1)  # noqa: E731
        step_of_stream = torch.cat(
            [shuffle(big), big + shuffle(S - big)], 1
        )  # (B, S): a size class each
        stream = (
            torch.arange(n, device=dev) % S
        )  # (n,): the stream of the j-th diffusion position from the left
        key = step_of_stream[:, stream] * n + shuffle(
            n
        )  # (B, n) integers: by step, at random inside one
        diffusion = diffusion.sort(1).values.gather(1, key.argsort(1))
    return torch.cat([base[:, :n_known], diffusion, sequential], dim=1), sizes


def has_float64(device):
    """Apple's MPS has no float64; CPUs and CUDA do."""
    return torch.device(device).type != "mps"


def top_p_filter(logits, top_p):
    """logits (..., V) with -inf outside the top-p nucleus: the smallest set of most likely tokens
    whose mass reaches top_p (Holtzman et al.). A token whose preceding mass is exactly top_p is
    left out; the authors' code (Hugging Face's rule: out when that mass exceeds top_p) keeps it."""
    if top_p >= 1.0:
        return logits
    sorted_logits, idx = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs
    sorted_logits = sorted_logits.masked_fill(
        mass_before >= top_p, -math.inf
    )  # the top token: always kept
    return torch.full_like(logits, -math.inf).scatter(-1, idx, sorted_logits)


def sample_tokens(logits, temperature=1.0, top_p=1.0, generator=None):
    """One token per row of logits (..., V) from softmax(logits / temperature), cut to the top-p
    nucleus, by Gumbel-max in float64, as the paper: float32 Gumbel noise is capped near 16.6 (its
    uniforms have 24 bits), which starves the tail of a large vocabulary. Without float64 (MPS):
    sample_tokens_float32 (section 8)."""
    if not has_float64(logits.device):
        return sample_tokens_float32(logits, temperature, top_p, generator)
    logits = top_p_filter(logits.double() / temperature, top_p)  # (..., V)
    u = torch.rand(logits.shape, dtype=torch.float64, device=logits.device, generator=generator)
    return (logits - torch.log(-torch.log(u))).argmax(-1)


# -----------------------------------------------------------------------------
# 6. The model: the transformer, the hybrid NELBO, the sampler, the likelihood


class Draws(NamedTuple):
    """Every random draw of one evaluation of the loss (EsoLM.draws) but dropout's: with them the loss is a
    pure function, one graph under torch.compile (a generator would break it)."""

    t: torch.Tensor  # (n_diff,) the times of the first n_diff rows (diffusion_rows), which estimate the diffusion term
    masked: torch.Tensor  # (B, L) bool: z_t in those rows, z_0 in the others (the sequential term)
    sigma: torch.Tensor  # (B, L) each row's order, clean tokens first
    n_skip: (
        int  # the sequential rows' slots clean in all of them, in whole groups (SequentialPattern)
    )


class EsoLM(nn.Module):
    def __init__(self, config: EsoConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size + 1, config.n_embd)  # + [MASK] (id vocab_size)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = Linear(
            config.n_embd, config.vocab_size, config.bias
        )  # no [MASK] row: zero masking
        cos, sin = rotary_tables(config.block_size, config.n_embd // config.n_head)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if name.endswith("proj.weight"):  # attn.proj and mlp.proj
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
        """Final hidden states (B, n, C) of tokens idx (B, n) at original positions pos (B, n). attn_mask:
        None (without a cache) is causal over idx; a bool mask (True = may attend) broadcastable to (B, nh,
        n, keys); or a SequentialPattern. With a cache, the tokens sit at its slots cache.slots (KVCache)."""
        cos = self.rope_cos[pos].unsqueeze(1)  # (B, 1, n, hd)
        sin = self.rope_sin[pos].unsqueeze(1)
        x = self.drop(self.wte(idx))
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, attn_mask, cache, layer)
        return self.ln_f(x)

    def logits(self, h):
        """Float32 logits (..., V) of h. bf16 logits (the head under autocast) move probabilities by percents:
        with no gradient taken (sampling, likelihoods, validation) the head runs in float32; training's, faster, not."""
        if torch.is_grad_enabled():
            return self.lm_head(h).float()
        with torch.autocast(h.device.type, enabled=False):
            return self.lm_head(h.float())

    # The hybrid NELBO (eq. 7) -----------------------------------------------------
    def diffusion_rows(self, B):
        """How many of B rows estimate the diffusion term: round(kappa B), and one row per term at least."""
        kappa = self.config.batch_split
        if not 0 < kappa < 1:
            return round(kappa * B)
        if B < 2:
            raise ValueError(
                f"a batch of {B} row cannot be split between the two terms (batch_split {kappa})"
            )
        return min(max(round(kappa * B), 1), B - 1)

    def draws(self, x, generator=None):
        """Every random draw of the loss of x (B, L) (see Draws). The first diffusion_rows(B) rows get a time
        t and z_t (each token masked with probability 1 - alpha_t), clean first, both groups shuffled; the
        others z_0 (masked with probability 1 - alpha_0), clean first (shuffled; variant A: left to
        right), masks left to right."""
        (B, L), dev, cfg = x.shape, x.device, self.config
        n_diff = self.diffusion_rows(B)
        t, masked, sigma = torch.zeros(0, device=dev), [], []
        if n_diff > 0:
            t = sample_t(n_diff, dev, generator)
            masked.append(
                torch.rand(n_diff, L, device=dev, generator=generator)
                < (1 - alpha(t, cfg.alpha_0))[:, None]
            )
            sigma.append(
                diffusion_order(masked[-1], torch.rand(n_diff, L, device=dev, generator=generator))
            )
        if n_diff < B:
            masked.append(
                torch.rand(B - n_diff, L, device=dev, generator=generator) < 1 - cfg.alpha_0
            )
            u = torch.rand(B - n_diff, L, device=dev, generator=generator)
            if (
                cfg.variant == "A"
            ):  # clean tokens in position order, as the authors' code (A's clean block is
                u = (
                    torch.arange(L, device=dev).expand(B - n_diff, L) / L
                )  # bidirectional: the loss is the same)
            sigma.append(sequential_order(masked[-1], u))
        masked = torch.cat(masked)
        n_skip = SequentialPattern.skippable(masked[n_diff:]) if n_diff < B else 0
        return Draws(t, masked, torch.cat(sigma), n_skip)

    def forward(self, x, draws, loss_type=None, dense=False):
        """Per-token hybrid NELBO (nats) of clean tokens x (B, L) for given draws, and its two parts.

        The first rows (as many as draws.t holds) estimate the diffusion term, the rest the sequential
        term; each part is a sum over masked tokens divided by all tokens of its rows, and the loss is
        their sum: an estimate of the per-token NELBO (with loss_type elbo, which validation always uses). No
        randomness but dropout and no value read back from a tensor: one compiled graph per shape."""
        B, n_diff = x.size(0), draws.t.size(0)
        zero = x.new_zeros((), dtype=torch.float32)
        diffusion = (
            self.diffusion_nll(
                x[:n_diff], draws.t, draws.masked[:n_diff], draws.sigma[:n_diff], loss_type
            )
            if n_diff > 0
            else zero
        )
        sequential = (
            self.sequential_nll(
                x[n_diff:], draws.masked[n_diff:], draws.sigma[n_diff:], dense, draws.n_skip
            )
            if n_diff < B
            else zero
        )
        return diffusion + sequential, {
            "diffusion": diffusion.detach(),
            "sequential": sequential.detach(),
        }

    def loss(self, x, loss_type=None, generator=None, dense=False):
        """forward with fresh draws: the loss of x (B, L) and its parts."""
        return self(x, self.draws(x, generator), loss_type, dense)

    def diffusion_nll(self, x, t, masked, sigma, loss_type=None):
        """The diffusion term (eq. 7) / L for given draws: t (B,), masked (B, L) bool (z_t), sigma clean first."""
        B, L = x.shape
        z = torch.where(masked, self.mask_id, x)
        z_sorted, x_sorted, m_sorted = (
            a.gather(1, sigma) for a in (z, x, masked)
        )  # (B, L) in decode order
        slots = torch.arange(L, device=x.device)
        mask = (
            prefix_lm_mask(slots, L, (~masked).sum(1)) if self.config.variant == "A" else None
        )  # B: plain causal
        logits = self.logits(self.hidden(z_sorted, sigma, mask))
        nll = F.cross_entropy(logits.flatten(0, 1), x_sorted.flatten(), reduction="none").view(B, L)
        if (
            loss_type or self.config.loss_type
        ) == "elbo":  # -alpha'_t / (1 - alpha_t), alpha'_t = -alpha_0 (1 - EPS)
            weight = self.config.alpha_0 * (1 - EPS) / (1 - alpha(t, self.config.alpha_0))
        else:  # low_var: plain masked cross-entropy (training only)
            weight = torch.ones_like(t)
        return (nll * m_sorted * weight[:, None]).sum() / (B * L)

    def sequential_nll(self, x, masked, sigma, dense=False, n_skip=None):
        """The sequential term (eq. 7) / L for given draws: masked (B, L) bool (z_0), sigma (B, L) with the
        clean tokens first (as sequential_order makes it; the fast path counts on it), masks ascending.

        Why two halves, [z_0 ; x] in decode order, not a shift by one as in GPT: the sampler predicts the
        token at position l from a [MASK] token carrying l's position, so training must too; and that
        slot cannot also hold x_l for the later slots to read (it would see its own answer). So the true
        tokens come from a second half: the z slot of l sees itself and the x slots before it (the clean
        tokens, and x at the masked positions left of l). dense=True: the dense path, 2L tokens through
        sequential_mask; else the fast one (section 8)."""
        B, L = x.shape
        logp = self._sequential_logprobs(x, masked, sigma, dense, n_skip)
        return -(logp * masked.gather(1, sigma)).sum() / (B * L)

    def _sequential_logprobs(self, x, masked, sigma, dense=False, n_skip=None):
        """log p(x at each slot) (B, L) from one forward of both halves: [z_0 ; x] in decode order (dense) or
        [x ; z_0 from slot n_skip on] (fast: the slots before n_skip, clean in every row, get log p = 0)."""
        L = x.size(1)
        z = torch.where(masked, self.mask_id, x)
        z_sorted, x_sorted = z.gather(1, sigma), x.gather(1, sigma)  # (B, L) in decode order
        slots = torch.arange(L, device=x.device)
        x_mask = (
            prefix_lm_mask(slots, L, (~masked).sum(1)) if self.config.variant == "A" else None
        )  # B: causal
        if dense:
            mask = sequential_mask(prefix_lm_mask(slots, L) if x_mask is None else x_mask)
            h, n_skip = (
                self.hidden(torch.cat([z_sorted, x_sorted], 1), torch.cat([sigma, sigma], 1), mask)[
                    :, :L
                ],
                0,
            )
        else:
            n_skip = SequentialPattern.skippable(masked) if n_skip is None else n_skip
            pattern = SequentialPattern(L, n_skip, x_mask, x.device)
            h = self.hidden(
                torch.cat([x_sorted, z_sorted[:, n_skip:]], 1),
                torch.cat([sigma, sigma[:, n_skip:]], 1),
                pattern,
            )[:, L:]  # (B, L - n_skip, C): the z slots
        logp = F.log_softmax(self.logits(h), dim=-1)
        return F.pad(logp.gather(-1, x_sorted[:, n_skip:, None]).squeeze(-1), (n_skip, 0))

    # Sampling (Alg. 3) --------------------------------------------------------------
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
        compile=False,
        generator=None,
        callback=None,
    ):
        """Sample (num_samples, L) tokens: (tokens, nfe), tokens without the mask id, nfe the forwards spent.

        steps: T (only T >> L, e.g. 1e6, gives about one token per step: steps are drawn independently).
        alpha_0: sampling-time alpha_0 (None = the model's); the model has no time input, so any runs: a
        lower one leaves more to the sequential phase (better text, more NFE). canvas: (num_samples or 1,
        L), known tokens kept exactly and the mask id elsewhere (a prompt, an infilling template), as many
        masks in every row. block_order: see sampling_order; the rest: decode. The plan (step sizes, then
        sigma) is drawn first, the same for every path.
        """
        cfg, device = self.config, self.wte.weight.device
        alpha_0 = cfg.alpha_0 if alpha_0 is None else alpha_0
        steps = check_sampling_args(steps, alpha_0, temperature, top_p)
        canvas = self._check_canvas(num_samples, canvas, device)
        known = canvas != self.mask_id  # (B, L)
        sizes = unmask_schedule(
            int((~known[0]).sum()), steps, alpha_0, generator, device
        )  # diffusion steps
        sigma, sizes = sampling_order(known, sizes, block_order, generator)  # (B, L)
        return self.decode(
            canvas,
            sigma,
            sizes,
            temperature=temperature,
            top_p=top_p,
            kv_cache=kv_cache,
            compile=compile,
            generator=generator,
            callback=callback,
        )

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
        compile=False,
        generator=None,
        callback=None,
    ):
        """Decode the masks of canvas (B, L) in the order sigma (B, L): the known tokens come first (fed as
        the first step's clean tokens), then diffusion steps of sizes[i] tokens, then one token per step.
        kv_cache=False is the uncached path, all L slots through the transformer at every step, clean then
        masked in decode order: the same tokens. compile=True compiles the cached step (section 8).
        callback(tokens, nfe): after every step, with the canvas in position order."""
        L, n_known = self.config.block_size, int((canvas[0] != self.mask_id).sum())
        n_clean0 = n_known + sum(sizes)  # the clean tokens of z_0: known and diffusion tokens
        sizes = list(sizes) + [1] * (L - n_clean0)  # the sequential phase: one token per step
        canvas = canvas.gather(1, sigma)  # (B, L): canvas[b, i] = the token at position sigma[b, i]
        cache = (
            (kept_cache(self, canvas.size(0)) if compile else self.kv_cache(canvas.size(0)))
            if kv_cache
            else None
        )
        step = compiled_decode_step(canvas.device) if compile and kv_cache else None
        done, nfe = n_known, 0  # canvas[:, :done] is decoded
        for k in sizes:  # k = the number of tokens this step decodes
            if kv_cache:
                h = self._cached_step(canvas, sigma, done, k, cache, n_clean0, step)
            else:
                mask = (
                    prefix_lm_mask(torch.arange(L, device=canvas.device), L, min(done, n_clean0))
                    if self.config.variant == "A"
                    else None
                )  # B: plain causal
                h = self.hidden(canvas, sigma, mask)[:, done : done + k]
            canvas[:, done : done + k] = sample_tokens(
                self.logits(h), temperature, top_p, generator
            )
            done, nfe = done + k, nfe + 1
            if callback is not None:
                callback(unpermute(canvas, sigma), nfe)
        return unpermute(canvas, sigma), nfe

    def _cached_step(self, canvas, sigma, done, k, cache, n_clean0, compiled=None):
        """One forward with the KV cache; returns the hidden states (B, k, C) of this step's k masks.

        Variant B reads as AR decoding with a cache: it holds every token decoded before the last step; feed
        the tokens decoded at the last step (now clean: their keys and values written one step late), then
        this step's k masks, causal in decode order; keep the clean tokens' entries. Exact: a clean token's
        keys and values depend only on the tokens decoded before it, which never change, and no later step
        reads a mask's. Variant A differs by a mask: its clean block (the first min(done, n_clean0) slots)
        attends both ways, so while it grows (the diffusion phase) its keys and values change with every
        token that joins it: each such step feeds it all and keeps nothing, the first sequential step keeps
        it (App. D.3), and A then decodes as B (at alpha_0 = 1, never)."""
        variant_a = self.config.variant == "A"
        prefix = min(done, n_clean0) if variant_a else 0
        lo, hi = (
            cache.length,
            done + k,
        )  # the slots fed: the last step's tokens (A: the block), then k masks
        n_keys = hi  # the slots attended
        if compiled is not None:  # a handful of shapes per run (see static_window)
            lo, hi, n_keys = static_window(lo, hi, self.config.block_size)
        cache.slots = torch.arange(lo, hi, device=canvas.device)
        mask = prefix_lm_mask(cache.slots, n_keys, prefix)  # (1, 1, hi - lo, n_keys)
        h = (compiled or EsoLM.hidden)(self, canvas[:, lo:hi], sigma[:, lo:hi], mask, cache)
        cache.length = (
            done if not variant_a or done >= n_clean0 else 0
        )  # keep the clean tokens (A: once complete)
        return h[:, done - lo : done + k - lo]

    def kv_cache(self, batch):
        """An empty KVCache for `batch` rows, in the dtype of the keys (the autocast dtype under autocast)."""
        dev, cfg = self.wte.weight.device, self.config
        dtype = (
            torch.get_autocast_dtype(dev.type)
            if torch.is_autocast_enabled(dev.type)
            else self.wte.weight.dtype
        )
        return KVCache(
            cfg.n_layer, (batch, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head), dtype, dev
        )

    def _check_canvas(self, num_samples, canvas, device):
        L, mask_id = self.config.block_size, self.mask_id
        num_samples = whole("num_samples", num_samples)
        if canvas is None:
            return torch.full((num_samples, L), mask_id, dtype=torch.long, device=device)
        canvas = torch.as_tensor(canvas, device=device)
        canvas = canvas[None] if canvas.dim() == 1 else canvas
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

    # Likelihood (Thm 3.1) --------------------------------------------------------------
    @torch.no_grad()
    def likelihood(self, x, num_orders, generator=None, dense=False):
        """The importance-weighted (IW) bound on the NLL of x (B, L), in nats per token (Thm 3.1).

        Decoding one token per step along an order sigma gives p(x | sigma) = prod_l p(x_sigma(l) |
        x_sigma(<l)), and one forward of [all masks ; x sorted by sigma] through the sequential pattern
        gives all L factors. The model's p(x) (one token per step, no prompt) is the mean of p(x | sigma) over
        the sampler's orders: a random subset first (each position with probability alpha_0 here; a hair
        more than the sampler's, see unmask_schedule), in random order, then the rest left to right. So for K
        orders drawn that way the mean of p(x | sigma_k) estimates p(x) without bias, and by Jensen E[-log
        mean] >= -log p(x): an upper bound, tighter as K grows."""
        if (
            self.config.variant != "B" and self.config.alpha_0 > 0
        ):  # at alpha_0 = 0, A has no clean block: A = B
            raise ValueError(
                "the one-forward any-order bound needs variant B (or alpha_0 = 0): under variant A "
                "the clean tokens' representations change as tokens arrive"
            )
        num_orders = whole("num_orders", num_orders)
        B, L = x.shape
        all_masks = torch.ones_like(x, dtype=torch.bool)  # z: every position a [MASK]
        log_p = []
        for _ in range(num_orders):
            sequential_phase = (
                torch.rand(B, L, device=x.device, generator=generator) >= self.config.alpha_0
            )
            sigma = sequential_order(
                sequential_phase, torch.rand(B, L, device=x.device, generator=generator)
            )
            log_p.append(
                self._sequential_logprobs(x, all_masks, sigma, dense, n_skip=0).sum(1)
            )  # (B,)
        log_px = torch.logsumexp(torch.stack(log_p), 0) - math.log(num_orders)  # (B,)
        return -log_px.mean() / L


# -----------------------------------------------------------------------------
# 7. The authors' released models, folded into this one


def from_reference(state_dict, n_head, block_size, alpha_0, **config):
    """An EsoLM with the weights of the authors' EsoLMDiT (keys with or without "backbone."); n_head,
    block_size, alpha_0 and any other EsoConfig field come from their checkpoint's config.

    Their DiT modulates each block by c = silu(sigma_map(s)) (adaLN), s a noise level (their "sigma", not an
    order). Eso-LMs run with s = 0, so c and every modulation (shift, scale, gate = adaLN(c)) are constants:
        LN(x) w (1 + scale) + shift  is a LayerNorm with weight w (1 + scale) and bias shift;
        x + gate (y W^T + b)         is a projection with W's rows and b scaled by gate.
    So theirs is a pre-norm transformer with biases in the LayerNorms, the MLP and the head (bias=True). The
    [MASK] row of their output layer (its logit is set to -1e6) is dropped; weights go (out, in) -> (in, out)."""
    sd = {k.removeprefix("backbone."): v.float() for k, v in state_dict.items()}
    inv_freq = sd.pop(
        "rotary_emb.inv_freq", None
    )  # their one buffer: the rotary frequencies, which must be ours
    (V1, C), (cond, freq) = sd["vocab_embed.embedding"].shape, sd["sigma_map.mlp.0.weight"].shape
    n_layer = len(
        {k.split(".")[1] for k in sd if k.startswith("blocks.")}
    )  # their network, name by name:
    layout = {
        "vocab_embed.embedding": (V1, C),
        "sigma_map.mlp.0.weight": (cond, freq),
        "sigma_map.mlp.0.bias": (cond,),
        "sigma_map.mlp.2.weight": (cond, cond),
        "sigma_map.mlp.2.bias": (cond,),  # the timestep MLP
        "output_layer.norm_final.weight": (C,),
        "output_layer.adaLN_modulation.weight": (2 * C, cond),
        "output_layer.adaLN_modulation.bias": (2 * C,),
        "output_layer.linear.weight": (V1, C),
        "output_layer.linear.bias": (V1,),
    }
    for i in range(n_layer):
        layout |= {
            f"blocks.{i}.{k}": v
            for k, v in {
                "norm1.weight": (C,),
                "attn_qkv.weight": (3 * C, C),
                "attn_out.weight": (C, C),
                "norm2.weight": (C,),
                "mlp.0.weight": (4 * C, C),
                "mlp.0.bias": (4 * C,),
                "mlp.2.weight": (C, 4 * C),
                "mlp.2.bias": (C,),
                "adaLN_modulation.weight": (6 * C, cond),
                "adaLN_modulation.bias": (6 * C,),
            }.items()
        }
    unknown, missing = sorted(set(sd) - set(layout)), sorted(set(layout) - set(sd))
    shapes = [
        f"{k} {tuple(sd[k].shape)}, not {layout[k]}"
        for k in layout
        if k in sd and sd[k].shape != layout[k]
    ]
    if unknown or missing or shapes:
        raise ValueError(
            "not the authors' EsoLMDiT: "
            + "; ".join(
                f"{what} {names[:3]}"
                for what, names in (
                    ("unknown keys", unknown),
                    ("missing keys", missing),
                    ("shapes", shapes),
                )
                if names
            )
        )
    model = EsoLM(
        EsoConfig(
            block_size=block_size,
            vocab_size=V1 - 1,
            n_layer=n_layer,
            n_head=n_head,
            n_embd=C,
            alpha_0=alpha_0,
            bias=True,
            **config,
        )
    )
    base = 1.0 / 10000.0 ** (torch.arange(0, C // n_head, 2).float() / (C // n_head))
    if inv_freq is not None and (
        inv_freq.shape != base.shape or not torch.allclose(inv_freq.float().cpu(), base)
    ):
        raise ValueError(
            f"its rotary frequencies are not those of base 10000 over {C // n_head} dimensions per head"
        )
    # c at s = 0: the timestep features cos(0 f), then sin(0 f), are ones, then zeros
    features = torch.cat([torch.ones(freq // 2), torch.zeros(freq - freq // 2)])
    c = F.silu(
        F.linear(
            F.silu(F.linear(features, sd["sigma_map.mlp.0.weight"], sd["sigma_map.mlp.0.bias"])),
            sd["sigma_map.mlp.2.weight"],
            sd["sigma_map.mlp.2.bias"],
        )
    )
    ours = {"wte.weight": sd["vocab_embed.embedding"]}
    for i in range(n_layer):
        b = lambda name: sd[f"blocks.{i}.{name}"]  # noqa: E731
        shift1, scale1, gate1, shift2, scale2, gate2 = F.linear(
            c, b("adaLN_modulation.weight"), b("adaLN_modulation.bias")
        ).chunk(6)
        ours |= {
            f"blocks.{i}.ln_1.weight": b("norm1.weight") * (1 + scale1),
            f"blocks.{i}.ln_1.bias": shift1,
            f"blocks.{i}.attn.qkv.weight": b(
                "attn_qkv.weight"
            ).T,  # rows: q, k, v, each head by head
            f"blocks.{i}.attn.proj.weight": (b("attn_out.weight") * gate1[:, None]).T,
            f"blocks.{i}.ln_2.weight": b("norm2.weight") * (1 + scale2),
            f"blocks.{i}.ln_2.bias": shift2,
            f"blocks.{i}.mlp.fc.weight": b("mlp.0.weight").T,
            f"blocks.{i}.mlp.fc.bias": b("mlp.0.bias"),
            f"blocks.{i}.mlp.proj.weight": (b("mlp.2.weight") * gate2[:, None]).T,
            f"blocks.{i}.mlp.proj.bias": b("mlp.2.bias") * gate2,
        }
    shift, scale = F.linear(
        c, sd["output_layer.adaLN_modulation.weight"], sd["output_layer.adaLN_modulation.bias"]
    ).chunk(2)
    ours |= {
        "ln_f.weight": sd["output_layer.norm_final.weight"] * (1 + scale),
        "ln_f.bias": shift,
        "lm_head.weight": sd["output_layer.linear.weight"][:-1].T,  # without the [MASK] row
        "lm_head.bias": sd["output_layer.linear.bias"][:-1],
    }
    model.load_state_dict(ours)
    return model.eval()


EsoLM.from_reference = staticmethod(from_reference)  # as nanoGPT's GPT.from_pretrained


# -----------------------------------------------------------------------------
# 8. Making it fast. Each fast path computes what a plain path above computes, and a test binds them.


class SequentialPattern:
    """The sequential term's attention without the waste of the dense path's sequential_mask, whose
    z-to-z block is its diagonal and x-to-z block empty. It feeds [x sorted ; the z slots from n_skip
    on], L + m tokens (m = L - n_skip), and computes
      x slot i -> x slots j <= i: SDPA's causal kernel (variant A: its prefix-LM mask, x_mask);
      z slot i -> x slots j < i, and itself: groups of GROUP z queries, each against the x slots
                  before its last query and its own z keys (a size x size block of z-to-z scores, of
                  which the mask keeps the diagonal).
    x comes first, so every group's x keys are a leading piece of the x half (x_sizes cuts it). Nothing
    attends to a z slot but itself, so leaving some out changes no other output: the z slots before n_skip,
    clean in every row (clean tokens come first), are not fed; clean ones after it are, and the loss zeroes them."""

    GROUP = 128  # z queries per attention call

    @classmethod
    def skippable(cls, masked):
        """n_skip for z_0 masks (B, L): the slots clean in every row, in whole groups (few graphs compiled)."""
        return int((~masked).sum(1).min()) // cls.GROUP * cls.GROUP

    def __init__(self, L, n_skip, x_mask, device):
        self.L, self.n_skip, self.x_mask = L, n_skip, x_mask
        self.z_sizes = [
            min(self.GROUP, L - n_skip - a) for a in range(0, L - n_skip, self.GROUP)
        ]  # z slots per group
        ends = [
            n_skip + a - 1 for a in itertools.accumulate(self.z_sizes)
        ]  # group c's last slot: it sees x < it
        self.x_sizes = [
            e - s for s, e in zip([0] + ends, ends + [L])
        ]  # the x slots in pieces [0, ends[0]), ...
        # e.g. L = 6, n_skip = 2, GROUP = 2: z groups (2, 3), (4, 5); ends 3, 5; x pieces [0, 3), [3, 5), [5, 6)
        self.masks = []  # group c: its z queries against [x slots < ends[c] ; its own z keys]
        for size, end in zip(self.z_sizes, ends):
            slot = (
                end + 1 - size + torch.arange(size, device=device)[:, None]
            )  # (size, 1): the queries' slots
            to_x = torch.arange(end, device=device) < slot  # strictly earlier x slots
            self.masks.append(
                torch.cat([to_x, torch.eye(size, dtype=torch.bool, device=device)], 1)
            )

    def attend(self, q, k, v, dropout_p=0.0):  # q, k, v: (B, nh, L + m, hd)
        sdpa = F.scaled_dot_product_attention
        (qx, qz), (kx, kz), (vx, vz) = (t.split([self.L, t.size(2) - self.L], 2) for t in (q, k, v))
        ys = [
            sdpa(
                qx,
                kx,
                vx,
                attn_mask=self.x_mask,
                is_causal=self.x_mask is None,
                dropout_p=dropout_p,
            )
        ]
        # Split, not slice: the backward of a slice fills a zero tensor of the full size, per group.
        kx, vx = kx.split(self.x_sizes, 2), vx.split(self.x_sizes, 2)
        for c, (qc, kc, vc) in enumerate(zip(*(t.split(self.z_sizes, 2) for t in (qz, kz, vz)))):
            keys, values = (
                torch.cat([*kx[: c + 1], kc], 2),
                torch.cat([*vx[: c + 1], vc], 2),
            )  # (B, nh, end + size, hd)
            ys.append(sdpa(qc, keys, values, attn_mask=self.masks[c], dropout_p=dropout_p))
        return torch.cat(ys, 2)  # (B, nh, L + m, hd)


KEY_BLOCK = 128  # the compiled step attends over a multiple of this many cache slots
_COMPILED_STEPS = {}  # torch.compile mode -> the compiled cached step
_KEPT_CACHES = weakref.WeakKeyDictionary()  # model -> the KVCache its compiled steps write


def static_window(lo, hi, L):
    """(lo, hi, n_keys) of the compiled cached step for the chunk of slots [lo, hi): static shapes. The
    chunk is widened to the next size in 1, 2, 3, 4, 6, 8, 12, 16, ... (at most L) by feeding earlier
    slots again (clean tokens: the same keys and values, up to rounding) or, near the start, the next
    ones (not decoded yet: what they write is overwritten before it is read); the keys attended are
    rounded up to a multiple of KEY_BLOCK (the causal mask hides those past each query)."""
    n = hi - lo
    P = 1 << (n - 1).bit_length()  # the next power of two
    P = min(3 * P // 4 if 3 * P // 4 >= n else P, L)
    hi = max(hi, P)
    return hi - P, hi, min(-(-hi // KEY_BLOCK) * KEY_BLOCK, L)


def kept_cache(model, batch):
    """The model's own KV cache, zeroed: its compiled steps see the same buffers every call (CUDA graphs: static)."""
    kept, dev = _KEPT_CACHES.get(model), model.wte.weight.device
    dtype = (
        torch.get_autocast_dtype(dev.type)
        if torch.is_autocast_enabled(dev.type)
        else model.wte.weight.dtype
    )
    if kept is None or (kept.k[0].size(0), kept.k[0].dtype, kept.k[0].device) != (
        batch,
        dtype,
        dev,
    ):
        kept = _KEPT_CACHES[model] = model.kv_cache(batch)
        for buffer in kept.k + kept.v if dev.type == "cuda" else []:
            torch._dynamo.mark_static_address(buffer)
    for buffer in kept.k + kept.v:
        buffer.zero_()
    kept.length = 0
    return kept


def compiled_decode_step(device):
    """EsoLM.hidden under torch.compile for the cached sampler: inductor; on CUDA mode="reduce-overhead" (CUDA
    graphs: a step replays in one launch). The tokens fed have static shapes (static_window); the keys
    attended, the mask's last dimension, are dynamic: Dynamo compiles once per model and chunk size (CUDA
    graphs record one per length: KEY_BLOCK keeps their count small)."""
    mode = "reduce-overhead" if torch.device(device).type == "cuda" else None
    if mode not in _COMPILED_STEPS:
        hidden = torch.compile(EsoLM.hidden, mode=mode, dynamic=False, fullgraph=True)
        # a graph per chunk size and model: Dynamo's default limit (8 per function) is too few
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)

        def step(model, tokens, pos, mask, cache):
            torch._dynamo.maybe_mark_dynamic(mask, 3)
            if mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs have been read
            return hidden(model, tokens, pos, mask, cache)

        _COMPILED_STEPS[mode] = step
    return _COMPILED_STEPS[mode]


def sample_tokens_float32(logits, temperature=1.0, top_p=1.0, generator=None):
    """sample_tokens without float64 (MPS): an inverse CDF in float32, summed from the smallest
    probability up, so that each partial sum is as small as the mass summed so far and a token's share
    is off by at most 2^-24 of it; with the 2^-24 resolution of a float32 uniform, each token is drawn
    with its probability to within about 2^-23. Summed largest first, every token below 2^-25 would add
    nothing to a running sum near 1 and never be drawn, whatever mass the tail holds in all."""
    logits = top_p_filter(logits.float() / temperature, top_p)
    probs, order = logits.softmax(-1).sort(dim=-1)  # (..., V) ascending: the tail first
    cdf = probs.cumsum(-1)
    u = 1 - torch.rand(
        *logits.shape[:-1], 1, device=logits.device, generator=generator
    )  # in (0, 1]
    first = (
        (cdf < u * cdf[..., -1:]).sum(-1, keepdim=True).clamp(max=logits.size(-1) - 1)
    )  # first cdf >= u
    return order.gather(-1, first).squeeze(-1)


# -----------------------------------------------------------------------------
# 9. `python eso.py`: the worked example of the docstring, from the functions above


def show_example():
    """The docstring's worked example: the masks of variants A and B for x = ABCDEF, z_0 = A_C__F (queries by
    keys, in decode order, labelled token + position, M = [MASK]; '█' = may attend), then the sampler's steps."""
    x, masked = list("ABCDEF"), torch.tensor([[0, 1, 0, 1, 1, 0]], dtype=torch.bool)
    u = torch.tensor([[0.2, 0.9, 0.1, 0.3, 0.5, 0.4]])  # random keys giving the paper's orders

    def grid(title, labels, mask):
        print(f"\n{title}\n      " + " ".join(f"{s:>3}" for s in labels))
        for label, row in zip(labels, mask.tolist()):
            print(f"  {label:>3} " + " ".join("  █" if a else "  ·" for a in row))

    for variant in ("B", "A"):
        x_mask = prefix_lm_mask(
            torch.arange(6), 6, 3 if variant == "A" else 0
        )  # (1, 1, 6, 6); A: 3 clean
        keys = (
            torch.arange(6.0)[None] / 6 if variant == "A" else u
        )  # A's sequential term: clean tokens by position
        for term, sigma, mask in (
            ("diffusion term: z", diffusion_order(masked, u), x_mask),
            ("sequential term: [z_0 ; x]", sequential_order(masked, keys), sequential_mask(x_mask)),
        ):
            labels = [("M" if masked[0, p] else x[p]) + str(p + 1) for p in sigma[0].tolist()]
            grid(
                f"Eso-LM ({variant}), {term} sorted by sigma = {tuple(sigma[0].add(1).tolist())}",
                labels + [x[p] + str(p + 1) for p in sigma[0].tolist()] * (mask.size(-1) > 6),
                mask[0, 0],
            )
    print(
        "\nThe cached sampler along that order (2, then 1 diffusion tokens, then 3 sequential ones):"
    )
    torch.manual_seed(0)
    model, sizes = (
        EsoLM(EsoConfig(block_size=6, vocab_size=6, n_layer=1, n_head=2, n_embd=16)),
        [2, 1],
    )
    order, cache, steps = sequential_order(masked, u)[0].tolist(), model.kv_cache(1), []
    model.kv_cache = lambda batch: (
        cache
    )  # watch the cache that decode fills: what each step fed, how much it keeps
    model.decode(
        torch.full((1, 6), model.mask_id),
        torch.tensor([order]),
        sizes,
        callback=lambda tokens, nfe: steps.append((cache.slots.tolist(), cache.length)),
    )
    done = kept_before = (
        0  # tokens decoded, and slots kept, before the step; a slot >= done held a [MASK]
    )
    for i, (fed, kept) in enumerate(steps):
        tag = lambda s: f"{'M' if s >= done else x[order[s]]}{order[s] + 1}"  # noqa: E731
        feeds, keeps = " ".join(map(tag, fed)), " ".join(map(tag, range(kept_before, kept))) or "-"
        new = " ".join(x[order[s]] + str(order[s] + 1) for s in fed if s >= done)
        print(
            f"    step {i + 1} feeds {feeds:<11} keeps {keeps:<6} decodes {new} "
            f"({'diffusion' if i < len(sizes) else 'sequential'})"
        )
        done, kept_before = fed[-1] + 1, kept
    print(f"  NFE = {len(steps)}.")


if __name__ == "__main__":
    show_example()
