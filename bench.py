"""
Speed of Eso-LM sampling and training with random weights (the paper's Tables 11 and 13).

  python bench.py                               # CPU: L in {1024, 2048}; GPU: also 8192
  python bench.py --lengths=1024 --repeats=3    # quicker
  python bench.py --peak_flops=989e12           # also MFU of training, against the peak you give

Sampling is batch 1, nucleus off. "NFE ~ L" runs use T = 1e6 steps, so every step
decodes one token (the paper's speed protocol). Methods:
  eso_cached    Eso-LM (B) with its KV cache, alpha_0 = 1 (any alpha_0 gives NFE ~ L here)
  eso_uncached  the reference: the whole sequence through the transformer every step,
                which is what an MDLM sampler costs
  eso_alpha0    Eso-LM at alpha_0 = 0: its sequential phase only
  ar            a plain GPT decode, one token per step, with a KV cache, same transformer
  eso_T=L/k     Eso-LM cached at alpha_0 = 1 with T = L/k steps (about k tokens per step)
Every case runs in a fresh process; times are medians over --repeats runs after a warm-up.
Memory: peak RSS of that process (CPU) or peak allocated (CUDA), and the bytes the KV cache
allocated. Prints a table, then one JSON line with every figure.
"""

import json
import platform
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

import eso
import cli

CONFIG = dict(
    lengths=("", "comma-separated L values (empty: 1024,2048 on CPU; 1024,2048,8192 on GPU)"),
    n_layer=(6, "transformer blocks"),
    n_head=(6, "attention heads"),
    n_embd=(384, "width"),
    vocab_size=(256, "vocabulary (256: the byte-level default)"),
    repeats=(5, "timed runs per case (the median is reported)"),
    uncached_repeats=(3, "the uncached reference costs L full forwards per run"),
    parallel=("64,16,4", "also time T = L/k steps for these k, at alpha_0 = 1"),
    train_alphas=("0,0.5,1", "training throughput at these alpha_0"),
    train_batch=(4, "sequences per training step (of the first length)"),
    peak_flops=(0.0, "the device's peak FLOP/s for MFU (0 = skip), e.g. 989e12 for an H100's bf16"),
    device=("auto", "auto, cpu, cuda, cuda:N or mps"),
    seed=(0, "seed of the random weights and of the samplers"),
)


def model_for(L, c, dev, alpha_0=1.0):
    torch.manual_seed(c["seed"])
    cfg = eso.EsoConfig(block_size=L, vocab_size=c["vocab_size"], n_layer=c["n_layer"], n_head=c["n_head"],
                        n_embd=c["n_embd"], alpha_0=alpha_0)
    return eso.EsoLM(cfg).to(dev)


class CountingCache(eso.KVCache):
    """The sampler's KV cache, recording how many bytes it allocated."""
    allocated = 0

    def update(self, layer, k, v):
        fresh = self.kv[layer] is None
        out = super().update(layer, k, v)
        if fresh:
            CountingCache.allocated += sum(t.numel() * t.element_size() for t in self.kv[layer])
        return out


@torch.no_grad()
def plain_ar_decode(model, L, generator):
    """A GPT decode with a KV cache: feed the last token, sample the next, L times."""
    cache = CountingCache(model.config.n_layer, L)
    dev = model.wte.weight.device
    tok = torch.zeros(1, 1, dtype=torch.long, device=dev)
    out = []
    with eso.precision(dev)[1]:
        for i in range(L):
            mask = eso.causal_mask(1, n_cached=i, device=dev)
            h = model.hidden(tok, torch.full((1, 1), i, device=dev), mask, cache)
            cache.commit(1)
            tok = eso.sample_tokens(model.lm_head(h), generator=generator)
            out.append(tok)
    return torch.cat(out, 1), L


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def run_sampling(case, c):
    """One case in a fresh process: warm up, then time `repeats` runs."""
    dev = cli.device(c["device"])
    L, method, steps = case["L"], case["method"], case["steps"]
    model = model_for(L, c, dev).eval()
    eso.KVCache = CountingCache  # count what the sampler's cache allocates
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def once(canvas=None):
        g = torch.Generator(device=dev).manual_seed(c["seed"])
        if method == "ar":
            return plain_ar_decode(model, L if canvas is None else 8, g)
        alpha_0 = 0.0 if method == "eso_alpha0" else 1.0
        with eso.precision(dev)[1]:
            return model.generate(1, steps, alpha_0=alpha_0, canvas=canvas, kv_cache=method != "eso_uncached",
                                  generator=g)

    warm = torch.full((1, L), model.mask_id, device=dev)
    warm[0, :L - 8] = 0
    once(warm)  # warm-up: 8 steps
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times, nfe = [], 0
    for _ in range(case["repeats"]):
        CountingCache.allocated = 0
        sync(dev)
        t0 = time.perf_counter()
        _, nfe = once()
        sync(dev)
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 20
    return case | {"nfe": nfe, "seconds": statistics.median(times), "runs": [round(t, 3) for t in times],
                   "tokens_per_s": L / statistics.median(times), "peak_mb": round(peak, 1),
                   "base_rss_mb": round(base_rss, 1) if dev.type != "cuda" else None,
                   "kv_cache_mb": round(CountingCache.allocated / 2 ** 20, 2)}


def train_flops(cfg, batch):
    """Model FLOPs of one training step (forward + backward), nanoGPT's count per token,
    6 N + 12 n_layer n_embd T, with T = L for diffusion rows and 2L for sequential rows."""
    C, L = cfg.n_embd, cfg.block_size
    trunk = 12 * cfg.n_layer * C * C  # attention + MLP weights per layer
    head = C * cfg.vocab_size
    n_diff = round(cfg.batch_split * batch)
    rows = [(n_diff, L), (batch - n_diff, 2 * L)]
    return sum(r * (6 * trunk * T + 6 * head * L + 12 * cfg.n_layer * C * T * T) for r, T in rows)


def run_training(case, c):
    dev = cli.device(c["device"])
    L, B = case["L"], c["train_batch"]
    model = model_for(L, c, dev, case["alpha_0"]).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, c["vocab_size"], (B, L), device=dev)
    times = []
    for i in range(case["repeats"] + 1):  # the first step warms up
        sync(dev)
        t0 = time.perf_counter()
        with eso.precision(dev)[1]:
            loss, _ = model(x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(dev)
        times.append(time.perf_counter() - t0)
    step = statistics.median(times[1:])
    flops = train_flops(model.config, B)
    return case | {"seconds": step, "tokens_per_s": B * L / step, "flops_per_step": flops,
                   "mfu": flops / step / c["peak_flops"] if c["peak_flops"] else None}


def in_fresh_process(fn, case, c):
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, case, c).result()


def main(argv):
    c, _ = cli.parse(CONFIG, argv, __doc__)
    dev = cli.device(c["device"])
    try:
        Ls = [int(x) for x in (c["lengths"] or ("1024,2048,8192" if dev.type == "cuda" else "1024,2048")).split(",")]
        ks = [int(x) for x in c["parallel"].split(",") if x]
        alphas = [float(x) for x in c["train_alphas"].split(",") if x]
    except ValueError:
        raise cli.UserError("--lengths, --parallel and --train_alphas take comma-separated numbers") from None
    if min(Ls) < 16 or c["repeats"] < 1 or c["uncached_repeats"] < 1 or c["train_batch"] < 2:
        raise cli.UserError("lengths must be at least 16, repeats at least 1 and --train_batch at least 2")
    cases = []
    for L in Ls:
        cases += [dict(L=L, method=m, steps=10 ** 6, repeats=c["repeats"]) for m in ("eso_cached", "ar", "eso_alpha0")]
        cases += [dict(L=L, method=f"eso_T=L/{k}", steps=max(1, L // k), repeats=c["repeats"]) for k in ks]
        cases += [dict(L=L, method="eso_uncached", steps=10 ** 6, repeats=c["uncached_repeats"])]
    env = {"device": str(dev), "name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
           or platform.machine(), "threads": torch.get_num_threads(), "torch": str(torch.__version__),
           "python": platform.python_version(), "model": f"{c['n_layer']}x{c['n_embd']}, {c['n_head']} heads, "
           f"vocab {c['vocab_size']}", "dtype": "bfloat16 autocast" if dev.type == "cuda" else "float32"}
    print(f"# bench.py on {env['device']} ({env['name']}, {env['threads']} threads), torch {env['torch']}, "
          f"model {env['model']}, {env['dtype']}, batch 1, nucleus off")
    print(f"{'L':>6} {'method':<14} {'T':>8} {'NFE':>6} {'median s':>10} {'tok/s':>9} {'peak MB':>8} {'KV MB':>7}")
    results = []
    for case in cases:
        r = in_fresh_process(run_sampling, case, c)
        results.append(r)
        print(f"{r['L']:>6} {r['method']:<14} {r['steps']:>8} {r['nfe']:>6} {r['seconds']:>10.3f} "
              f"{r['tokens_per_s']:>9.1f} {r['peak_mb']:>8.0f} {r['kv_cache_mb']:>7.1f}", flush=True)
    ratios = {}
    for L in Ls:
        t = {r["method"]: r["seconds"] for r in results if r["L"] == L}
        ratios[L] = {"uncached_over_cached": t["eso_uncached"] / t["eso_cached"],
                     "cached_over_ar": t["eso_cached"] / t["ar"],
                     **{f"nfe_L_over_T=L/{k}": t["eso_cached"] / t[f"eso_T=L/{k}"] for k in ks}}
        print(f"L={L}: cached is {ratios[L]['uncached_over_cached']:.1f}x faster than uncached; "
              f"cached / plain AR = {ratios[L]['cached_over_ar']:.2f}; "
              + ", ".join(f"T=L/{k} is {ratios[L][f'nfe_L_over_T=L/{k}']:.1f}x faster than NFE~L" for k in ks))
    training = []
    for a in alphas:
        r = in_fresh_process(run_training, dict(L=Ls[0], alpha_0=a, repeats=c["repeats"]), c)
        training.append(r)
        mfu = f", MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else ""
        print(f"training L={r['L']}, batch {c['train_batch']}, alpha_0={a}: {r['tokens_per_s']:,.0f} tokens/s "
              f"({r['seconds']:.3f} s/step, {r['flops_per_step'] / r['seconds'] / 1e9:.1f} GFLOP/s{mfu})", flush=True)
    print(json.dumps({"env": env, "config": c, "sampling": results, "ratios": ratios, "training": training}))
    return 0


if __name__ == "__main__":
    cli.run(main, "bench.py")
