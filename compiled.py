"""
The compiled cached sampler: EsoLM.generate with its cached step under torch.compile.

  sampler = compiled.CompiledSampler(model)
  tokens, nfe = sampler.generate(4, steps=1024, temperature=1.0)   # EsoLM.generate's arguments
  tokens, nfe = sampler.decode(*model.plan(4, steps=1024))          # or EsoLM.decode's

torch.compile wants static shapes, and a cached step's chunk grows and shrinks with the schedule.
So this sampler widens each chunk to one of a few sizes (static_window) and keeps one KV cache
whose buffers stay put between calls (CUDA graphs replay with the addresses they recorded).
What it computes is the eager cached step's: a test compares their logits at every step. This is
compile machinery, with state that lives as long as the sampler, so it sits beside eso.py (which
holds the method), not in it; it runs EsoLM.decode_steps with a step of its own, eso.CachedStep
with its chunks fed through the compiled forward (CompiledStep).
"""

import torch

import eso

KEY_BLOCK = 128  # the compiled step attends over a multiple of this many cache slots
RECOMPILE_LIMIT = 64  # a graph per chunk size: Dynamo's default limit (8 per function) is too few


def static_window(lo, hi, L):
    """(lo, hi, n_keys) of the compiled cached step for the chunk of slots [lo, hi): static shapes.

    The chunk is widened to the next size in 1, 2, 3, 4, 6, 8, 12, 16, ... (at most L) by feeding
    earlier slots again (clean tokens: the same keys and values, up to rounding) or, near the
    start, the next ones (not decoded yet: what they write is overwritten before it is read); the
    keys attended are rounded up to a multiple of KEY_BLOCK (the causal attention mask hides those
    past each query)."""
    n = hi - lo
    power = 1 << (n - 1).bit_length()  # the next power of two
    three_quarters = 3 * power // 4
    size = power
    if three_quarters >= n:
        size = three_quarters
    size = min(size, L)
    hi = max(hi, size)
    n_keys = min(-(-hi // KEY_BLOCK) * KEY_BLOCK, L)
    return hi - size, hi, n_keys


class CompiledSampler:
    """EsoLM.generate with the cached step compiled: inductor, and on CUDA mode="reduce-overhead"
    (CUDA graphs: a step replays in one launch).

    The tokens fed have static shapes (static_window); the keys attended, the attention mask's
    last dimension, are dynamic: Dynamo compiles once per chunk size (CUDA graphs record one per
    length: KEY_BLOCK keeps their count small). The first generate compiles (tens of seconds);
    later ones reuse the graphs."""

    def __init__(self, model):
        self.model = model
        device = model.wte.weight.device
        self.cuda_graphs = device.type == "cuda"
        mode = "reduce-overhead" if self.cuda_graphs else None
        self.hidden = torch.compile(eso.EsoLM.hidden, mode=mode, dynamic=False, fullgraph=True)
        self.cache = None

    def generate(self, num_samples, steps, *, generator=None, **kw):
        """EsoLM.generate(num_samples, steps, ...) through the compiled step: its plan, then
        decode. kw: plan's alpha_0, canvas and block_order, and decode's own."""
        plan_keys = {"alpha_0", "canvas", "block_order"}
        alpha_0 = kw.get("alpha_0")
        if alpha_0 is None:
            alpha_0 = self.model.config.alpha_0
        eso.check_sampling_args(steps, alpha_0, kw.get("temperature", 1.0), kw.get("top_p", 1.0))
        plan_kw = {key: value for key, value in kw.items() if key in plan_keys}
        decode_kw = {key: value for key, value in kw.items() if key not in plan_keys}
        plan = self.model.plan(num_samples, steps, generator=generator, **plan_kw)
        return self.decode(*plan, generator=generator, **decode_kw)

    def decode(self, canvas, sigma, sizes, *, kv_cache=True, **kw):
        """EsoLM.decode(canvas, sigma, sizes, ...) through the compiled step (kv_cache=False: the
        eager uncached path, which has no step to compile)."""
        if not kv_cache:
            return self.model.decode(canvas, sigma, sizes, kv_cache=False, **kw)
        cache = self.kv_cache(canvas.size(0))
        step = CompiledStep(self.model, cache, self.hidden, self.cuda_graphs)
        return self.model.decode_steps(canvas, sigma, sizes, step, **kw)

    def kv_cache(self, batch):
        """The sampler's own KV cache (a new one when the batch, dtype or device changes): its
        compiled steps see the same buffers every call."""
        if self.cache is not None:
            kept = self.cache.k[0]
            same_device = kept.device == self.model.wte.weight.device
            if kept.size(0) == batch and kept.dtype == self.model.cache_dtype() and same_device:
                return self.cache
        fresh = self.model.kv_cache(batch)
        if self.cuda_graphs:
            for buffer in fresh.k + fresh.v:
                torch._dynamo.mark_static_address(buffer)
        self.cache = fresh
        return fresh


class CompiledStep(eso.CachedStep):
    """eso.CachedStep whose chunks go through the compiled forward, widened to static shapes."""

    def __init__(self, model, cache, hidden, cuda_graphs):
        super().__init__(model, cache)
        self.hidden = hidden  # EsoLM.hidden under torch.compile
        self.cuda_graphs = cuda_graphs

    def feed(self, canvas, sigma, lo, hi, clean_block):
        """CachedStep.feed with static shapes: the widened window through the compiled forward,
        of which the slots [lo, hi) are returned."""
        wide_lo, wide_hi, n_keys = static_window(lo, hi, canvas.size(1))
        self.cache.slots = torch.arange(wide_lo, wide_hi, device=canvas.device)
        attn_mask = eso.prefix_lm_mask(self.cache.slots, n_keys, clean_block)
        torch._dynamo.maybe_mark_dynamic(attn_mask, 3)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs have been read
        tokens = canvas[:, wide_lo:wide_hi]
        positions = sigma[:, wide_lo:wide_hi]
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            h = self.hidden(self.model, tokens, positions, attn_mask, self.cache)
        return h[:, lo - wide_lo : hi - wide_lo]
