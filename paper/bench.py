"""
Speed of Eso-LM sampling and training with random weights (the paper's Tables 11 and 13).

  python -m paper.bench                    # CPU: a 4 x 256 model, L = 1024, 2048, 8192; ~30 min
  python -m paper.bench --preset=paper     # the paper's shape (12 x 768, vocab 50,257): a GPU
  python -m paper.bench --lengths=1024 --table11=False --repeats=3   # the decode cases only
  python -m paper.bench --batch=16         # Table 13's time column: seconds per batch

Table 11 (batch 1, nucleus off, T = 1e6: one token per step, NFE ~ L), at every length:
  eso_cached    Eso-LM (B) with its KV cache at alpha_0 = 1: two rows per step
  ar            the AR limit: a one-row GPT decode of the same transformer with a KV cache
  mdlm          MDLM's cost: the same network attending both ways over all L tokens at every
                step (a full forward per step, nothing cached)
  eso_uncached  our causal path without the cache (all L slots every step)
The uncached cases take L full forwards; past --full_max they time --extrapolate_steps steps and
scale to NFE linearly (each step costs the same), and say so. Mean +- std and median of --repeats.
Decode cases at the first length (CPU floors and peers):
  floor_2row, _1row, _32row  a pass over every weight matrix with 2 (1, 32) rows: a step's floor
  eso_alpha0             the cached sampler at alpha_0 = 0
  eso_compiled[_T=L/16]  compiled.CompiledSampler at NFE ~ L (T = L/16), against its floor timed
                         between its runs: a weight pass with the rows it feeds plus its KV reads
  hf_gpt2                Hugging Face GPT-2 `generate`, same size (transformers: a peer, optional)
  eso_T=L/k              cached at T = L/k (~k tokens per step)
  gpt2_vocab             eso_cached with GPT-2's 50,257 tokens: the share of a step in sampling
Batch mode (--batch=B): seconds per batch of B samples at the first length, Eso-LM at alpha_0 =
1 for several T and the AR limit (Table 13's time column, batch 512 there).
Training: a step of model.loss (forward, backward, AdamW) per alpha_0, fast and dense sequential
term, their largest loss and gradient difference, and the n_skip each step drew. Cases run in
fresh processes.
"""

import importlib.util
import json
import os
import platform
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

import cli
import eso
from compiled import CompiledSampler, static_window

CONFIG = dict(
    preset=("", "paper: 12 x 768, 12 heads, vocab 50,257 (the paper's models)", ("", "paper")),
    lengths=("", "comma-separated L values (empty: 1024, and the paper's 2048 and 8192)"),
    n_layer=(4, "transformer blocks"),
    n_head=(4, "attention heads"),
    n_embd=(256, "width"),
    vocab_size=(256, "vocabulary (256: the byte-level default)"),
    big_vocab=(50257, "the vocabulary of the gpt2_vocab case (GPT-2's)"),
    repeats=(3, "timed runs per case"),
    table11=(True, "time Table 11's cases (eso_cached, ar, mdlm, eso_uncached) at every length"),
    decode=(True, "time the decode cases at the first length (floors, compiled, peers)"),
    full_max=(256, "uncached cases run all their steps only up to this L, then extrapolate"),
    extrapolate_steps=(32, "steps timed by an uncached case past full_max"),
    uncached_repeats=(2, "timed runs of each uncached case (the slow ones)"),
    parallel=("64,16,4", "also time T = L/k steps for these k, at alpha_0 = 1"),
    batch=(0, "Table 13's batch mode: seconds per batch of this many samples (0 = skip)"),
    batch_steps=("16,128,1024", "the T of the batch mode's Eso-LM cases (alpha_0 = 1)"),
    train_alphas=("1,0.5,0.25,0", "training step time at these alpha_0"),
    train_batch=(4, "sequences per training step (of the first length)"),
    train_length=(1024, "L of the training cases"),
    peak_flops=(0.0, "the device's peak FLOP/s for MFU (0 = skip), e.g. 989e12 for an H100's bf16"),
    compile=(True, "also time the compiled cached step (eso_compiled cases)"),
    fresh=(True, "run every case in a fresh process (False: in this one, for a quick check)"),
    device=("auto", "auto, cpu, cuda, cuda:N or mps"),
    json=("", "also write every case and ratio to this JSON file"),
    seed=(0, "seed of the random weights and of the samplers"),
)
PAPER_SHAPE = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257)
BIG_T = 10**6  # the paper's speed protocol: NFE ~ L


def model_for(c, device, L, alpha_0=1.0, vocab=None):
    torch.manual_seed(c["seed"])
    config = eso.EsoConfig(
        block_size=L,
        vocab_size=vocab or c["vocab_size"],
        n_layer=c["n_layer"],
        n_head=c["n_head"],
        n_embd=c["n_embd"],
        alpha_0=alpha_0,
    )
    return eso.EsoLM(config).to(device)


def generator(c, device):
    return torch.Generator(device).manual_seed(c["seed"])


def stopwatch(fn, device, *args):
    """(seconds, result) of fn(*args), the device's queue waited for before and after."""
    cli.synchronize(device)
    t0 = time.perf_counter()
    result = fn(*args)
    cli.synchronize(device)
    return time.perf_counter() - t0, result


def summary(times):
    """The median, mean and standard deviation of a case's runs."""
    std = statistics.stdev(times) if len(times) > 1 else 0.0
    return dict(seconds=statistics.median(times), mean=statistics.fmean(times), std=std)


def weight_pass(model, rows, device):
    """Every weight matrix read once by `rows` rows: a decode step's floor."""
    weights = [m.weight for m in model.modules() if isinstance(m, eso.Linear)]
    inputs = [torch.randn(rows, w.size(0), device=device) for w in weights]

    def run():
        for x, w in zip(inputs, weights):
            x @ w

    return run


def kv_reads(model, windows, device):
    """The attention reads of a run's steps: per (rows, keys) window, two products over all
    layers and heads."""
    cfg = model.config
    heads = cfg.n_layer * cfg.n_head
    hd = cfg.n_embd // cfg.n_head
    counts = {w: windows.count(w) for w in set(windows)}
    data = {}
    for rows, keys in counts:
        q = torch.randn(heads, rows, hd, device=device)
        k = torch.randn(heads, keys, hd, device=device)
        v = torch.randn(heads, keys, hd, device=device)
        data[(rows, keys)] = (q, k, v)

    def run():
        for window, (q, k, v) in data.items():
            for _ in range(counts[window]):
                (q @ k.mT) @ v

    return run


@torch.no_grad()
def ar_decode(model, L, gen):
    """A GPT decode with a KV cache: feed the last token, sample the next, L times."""
    cache = model.kv_cache(1)
    device = model.wte.weight.device
    token = torch.zeros(1, 1, dtype=torch.long, device=device)
    for i in range(L):
        cache.slots = torch.full((1,), i, device=device)
        mask = eso.prefix_lm_mask(cache.slots, i + 1)
        h = model.hidden(token, cache.slots[None], mask, cache)
        token = eso.sample_tokens(model.logits(h), generator=gen)
    return L


@torch.no_grad()
def uncached_steps(model, L, max_steps, gen, bidirectional):
    """(NFE of a whole run, steps timed): the first max_steps steps of a sample at alpha_0 = 1,
    T = 1e6, each a full forward of all L tokens. bidirectional: MDLM's cost (the canvas in
    position order, every token attending to every other); else our causal uncached path."""
    canvas, sigma, sizes = model.plan(1, BIG_T, alpha_0=1.0, generator=gen)
    canvas = canvas.gather(1, sigma)
    everyone = None
    if bidirectional:
        everyone = torch.ones(1, 1, L, L, dtype=torch.bool, device=canvas.device)
    done = 0
    for k in sizes[:max_steps]:
        if bidirectional:
            h = model.hidden(canvas, sigma, everyone)[:, done : done + k]
        else:
            h = model.uncached_step(canvas, sigma, done, k, L)
        canvas[:, done : done + k] = eso.sample_tokens(model.logits(h), generator=gen)
        done += k
    return len(sizes), min(max_steps, len(sizes))


def hf_gpt2(c, L, device):
    """Hugging Face GPT-2 `generate` of L - 1 tokens, the same size as ours."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=c["vocab_size"],
        n_positions=L,
        n_embd=c["n_embd"],
        bos_token_id=0,
        eos_token_id=0,
        n_layer=c["n_layer"],
        n_head=c["n_head"],
    )
    hf = GPT2LMHeadModel(config).to(device).eval()
    ids = torch.zeros(1, 1, dtype=torch.long, device=device)

    def run():
        hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=L - 1,
            min_new_tokens=L - 1,
            do_sample=True,
            top_k=0,
            pad_token_id=0,
        )
        return L

    return run


def run_sampling(case, c):
    """One sampling case, in its own process: the case with its timings and memory."""
    device = cli.device(c["device"])
    L = case["L"]
    method = case["method"]
    vocab = c["big_vocab"] if method == "gpt2_vocab" else None
    model = model_for(c, device, L, vocab=vocab).eval()
    out = dict(case)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad(), cli.precision(device)[1]:
        if method in ("mdlm", "eso_uncached"):
            out |= time_uncached(model, case, c, device)
        elif method.startswith("eso_compiled"):
            out |= time_compiled(model, case, c, device)
        elif method.startswith("batch_"):
            out |= time_batch(model, case, c, device)
        else:
            out |= time_simple(model, case, c, device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes (Linux: KiB)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss
    nfe = max(out["nfe"], 1)
    out |= {"peak_mb": round(peak / 2**20, 1), "per_step_ms": 1e3 * out["seconds"] / nfe}
    out["tokens_per_s"] = L * case.get("batch", 1) / out["seconds"]
    return out


def time_simple(model, case, c, device):
    """The cases that are one function run repeatedly after a warm-up: floors, cached
    samplers, the AR decode, the GPT-2 peer."""
    L = case["L"]
    method = case["method"]
    if method.startswith("floor"):
        run = weight_pass(model, int(method[6:-3]), device)  # floor_<rows>row

        def fn():
            run()
            return 0

    elif method == "hf_gpt2":
        fn = hf_gpt2(c, L, device)
    elif method == "ar":

        def fn():
            return ar_decode(model, L, generator(c, device))

    else:  # eso_cached, eso_alpha0, eso_T=L/k, gpt2_vocab
        alpha_0 = 0.0 if method == "eso_alpha0" else 1.0

        def fn():
            _, nfe = model.generate(
                1, case["steps"], alpha_0=alpha_0, generator=generator(c, device)
            )
            return nfe

    fn()  # warm-up
    times = []
    for _ in range(case["repeats"]):
        seconds, nfe = stopwatch(fn, device)
        times.append(seconds)
    out = summary(times) | {"nfe": nfe, "runs": [round(t, 4) for t in times]}
    if method == "gpt2_vocab":  # what share of a step is sample_tokens over 50,257 logits?
        logits = torch.randn(1, 1, c["big_vocab"], device=device)
        gen = generator(c, device)

        def draws():
            for _ in range(20):
                eso.sample_tokens(logits, generator=gen)

        draw = statistics.median(stopwatch(draws, device)[0] for _ in range(3)) / 20
        out["sampling_share"] = draw * nfe / out["seconds"]
    return out


def time_uncached(model, case, c, device):
    """MDLM's cost or our uncached path: all steps up to full_max, else extrapolated."""
    L = case["L"]
    max_steps = L if L <= c["full_max"] else c["extrapolate_steps"]
    bidirectional = case["method"] == "mdlm"
    times = []

    def fn():
        return uncached_steps(model, L, max_steps, generator(c, device), bidirectional)

    for _ in range(c["uncached_repeats"]):
        seconds, (nfe, timed) = stopwatch(fn, device)
        times.append(seconds * nfe / timed)
    out = summary(times) | {"nfe": nfe, "steps_timed": timed, "runs": [round(t, 3) for t in times]}
    out["extrapolated"] = timed < nfe
    return out


class RecordingSampler(CompiledSampler):
    """The compiled sampler, recording the (tokens fed, keys attended) of each step it runs."""

    def __init__(self, model):
        super().__init__(model)
        self.windows = []

    def feed(self, canvas, sigma, lo, hi, clean_block, cache):
        wide_lo, wide_hi, n_keys = static_window(lo, hi, canvas.size(1))
        self.windows.append((wide_hi - wide_lo, n_keys))
        return super().feed(canvas, sigma, lo, hi, clean_block, cache)


def time_compiled(model, case, c, device):
    """The compiled sampler: the first run compiles (and records each step's window); then its
    runs, each followed by its floor (a weight pass with the rows it feeds, and its KV reads)."""
    sampler = RecordingSampler(model)

    def fn():
        _, nfe = sampler.generate(1, case["steps"], alpha_0=1.0, generator=generator(c, device))
        return nfe

    compile_s, _ = stopwatch(fn, device)
    windows = list(sampler.windows)
    sampler.windows = []
    rows = max(2, round(sum(fed for fed, _ in windows) / len(windows)))
    weights = weight_pass(model, rows, device)
    reads = kv_reads(model, windows, device)
    times, weight_times, read_times = [], [], []
    for _ in range(case["repeats"]):
        seconds, nfe = stopwatch(fn, device)
        times.append(seconds)
        weight_times.append(stopwatch(weights, device)[0])
        read_times.append(stopwatch(reads, device)[0])
    out = summary(times) | {"nfe": nfe, "runs": [round(t, 4) for t in times]}
    floor_weights = statistics.median(weight_times)
    floor_reads = statistics.median(read_times)
    out |= {"compile_s": compile_s - out["seconds"], "floor_rows": rows}
    out |= {"floor_weights_ms": 1e3 * floor_weights, "floor_kv_ms": 1e3 * floor_reads / nfe}
    out["step_over_floor"] = out["seconds"] / (nfe * floor_weights + floor_reads)
    return out


def time_batch(model, case, c, device):
    """Seconds per batch of case["batch"] samples: Eso-LM at alpha_0 = 1 and T steps, or the AR
    limit (alpha_0 = 0, NFE = L); one warm-up batch first (the authors drop their first)."""
    alpha_0 = 0.0 if case["method"] == "batch_ar" else 1.0

    def fn():
        _, nfe = model.generate(
            case["batch"], case["steps"], alpha_0=alpha_0, generator=generator(c, device)
        )
        return nfe

    fn()
    times = []
    for _ in range(case["repeats"]):
        seconds, nfe = stopwatch(fn, device)
        times.append(seconds)
    return summary(times) | {"nfe": nfe, "runs": [round(t, 3) for t in times]}


def train_step(model, opt, x, draws, dense, ctx):
    """One training step: forward, backward, AdamW."""
    with ctx:
        loss, _ = model(x, draws, dense=dense)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def run_training(case, c):
    """Training step times at one alpha_0: the fast sequential term and the dense reference,
    fresh draws every step (as training has: n_skip varies with them)."""
    device = cli.device(c["device"])
    L = case["L"]
    B = c["train_batch"]
    ctx = cli.precision(device)[1]
    model = model_for(c, device, L, case["alpha_0"]).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, c["vocab_size"], (B, L), device=device)
    out = dict(case)
    skips = []
    for name, dense in (("fast", False), ("dense", True)):
        times = []
        for step in range(case["repeats"] + 1):  # the first: a warm-up
            draws = model.draws(x, torch.Generator(device).manual_seed(step))
            if not dense:
                skips.append(draws.n_skip)
            seconds, _ = stopwatch(train_step, device, model, opt, x, draws, dense, ctx)
            times.append(seconds)
        out[name] = statistics.median(times[1:])
        out[name + "_std"] = statistics.stdev(times[1:]) if len(times) > 2 else 0.0
    out["n_skip"] = skips[1:]
    grads = []  # the same batch and noise through both paths, without an update
    for dense in (False, True):
        with ctx:
            loss, _ = model.loss(x, generator=torch.Generator(device).manual_seed(99), dense=dense)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        model.zero_grad(set_to_none=True)
    (loss_fast, grads_fast), (loss_dense, grads_dense) = grads
    cfg = model.config
    n_diff = model.diffusion_rows(B)
    # x and the z slots fed, in expectation: nanoGPT's 6N per token, attention left out
    tokens = n_diff * L + (B - n_diff) * L * (2 - cfg.alpha_0)
    flops = 6 * 12 * cfg.n_layer * cfg.n_embd**2 * tokens
    out["loss_diff"] = float((loss_fast - loss_dense).abs())
    out["grad_diff"] = max(float((a - b).abs().max()) for a, b in zip(grads_fast, grads_dense))
    out["tokens_per_s"] = B * L / out["fast"]
    out["mfu"] = flops / out["fast"] / c["peak_flops"] if c["peak_flops"] else None
    return out


def in_fresh_process(fn, case, c):
    if not c["fresh"]:
        return fn(case, c)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, case, c).result()


def numbers(text, kind, flag):
    """The comma-separated numbers of a flag, or one line."""
    try:
        return [kind(x) for x in text.split(",") if x]
    except ValueError:
        raise cli.UserError(f"--{flag} takes comma-separated numbers, not {text!r}") from None


def plan_cases(c, Ls, peer):
    """Every case to time, in order."""
    cases = []
    first = Ls[0]
    repeats = c["repeats"]
    if c["decode"]:
        for method in ("floor_2row", "floor_1row", "floor_32row"):
            cases.append(dict(L=first, method=method, steps=0, repeats=20 * repeats))
        for method in ["eso_alpha0"] + ["hf_gpt2"] * peer + ["gpt2_vocab"]:
            cases.append(dict(L=first, method=method, steps=BIG_T, repeats=repeats))
        for k in numbers(c["parallel"], int, "parallel"):
            cases.append(
                dict(L=first, method=f"eso_T=L/{k}", steps=max(1, first // k), repeats=repeats)
            )
        if c["compile"]:
            cases.append(dict(L=first, method="eso_compiled", steps=BIG_T, repeats=repeats))
            steps = max(1, first // 16)
            cases.append(dict(L=first, method="eso_compiled_T=L/16", steps=steps, repeats=repeats))
    for L in Ls if c["table11"] else []:
        for method in ("eso_cached", "ar", "mdlm", "eso_uncached"):
            cases.append(dict(L=L, method=method, steps=BIG_T, repeats=repeats))
    if c["decode"] and not c["table11"]:
        cases.append(dict(L=first, method="eso_cached", steps=BIG_T, repeats=repeats))
        cases.append(dict(L=first, method="ar", steps=BIG_T, repeats=repeats))
    if c["batch"]:
        batch = c["batch"]
        for T in numbers(c["batch_steps"], int, "batch_steps"):
            method = f"batch_eso_T={T}"
            cases.append(dict(L=first, method=method, steps=T, repeats=repeats, batch=batch))
        cases.append(dict(L=first, method="batch_ar", steps=BIG_T, repeats=repeats, batch=batch))
    return cases


def case_line(r):
    """A sampling case's row of the table."""
    spread = f"{r['mean']:.3f} +- {r['std']:.3f}" if "mean" in r else ""
    line = (
        f"{r['L']:>6} {r['method']:<19} {r['nfe']:>6} {r['seconds']:>10.4f} {spread:>18} "
        f"{r['per_step_ms']:>8.2f} {r['peak_mb']:>8.0f}"
    )
    if r.get("extrapolated"):
        line += f"   timed {r['steps_timed']} of {r['nfe']} steps, scaled linearly"
    if "compile_s" in r:
        line += (
            f"   compiling {r['compile_s']:.1f} s once; step {r['step_over_floor']:.2f}x its "
            f"floor: {r['floor_rows']}-row weight pass {r['floor_weights_ms']:.2f} ms + KV reads "
            f"{r['floor_kv_ms']:.2f} ms"
        )
    if "batch" in r:
        line += f"   a batch of {r['batch']}: {r['seconds']:.2f} s"
    return line


RATIOS = [
    # name, numerator, denominator, key: Table 11's ratios first
    ("mdlm_over_eso", "mdlm", "eso_cached", "seconds"),
    ("eso_over_ar", "eso_cached", "ar", "seconds"),
    ("eso_uncached_over_eso", "eso_uncached", "eso_cached", "seconds"),
    ("step_over_2row_floor", "eso_cached", "floor_2row", "per_step_ms"),
    ("eso_over_hf_gpt2", "eso_cached", "hf_gpt2", "seconds"),
    ("compiled_over_eager", "eso_compiled", "eso_cached", "seconds"),
    ("compiled_over_hf_gpt2", "eso_compiled", "hf_gpt2", "seconds"),
]


def ratios_at(results, L, ks):
    """The ratios of one length's cases."""
    t = {r["method"]: r for r in results if r["L"] == L}
    pairs = RATIOS + [(f"nfe_L_over_T=L/{k}", "eso_cached", f"eso_T=L/{k}", "seconds") for k in ks]
    out = {name: t[a][key] / t[b][key] for name, a, b, key in pairs if a in t and b in t}
    if "gpt2_vocab" in t:
        out["gpt2_vocab_sampling_share"] = t["gpt2_vocab"]["sampling_share"]
    for method, r in t.items():
        if "step_over_floor" in r:
            out[f"{method}_over_floor"] = r["step_over_floor"]
    return out


def environment(c, device):
    """What the numbers were measured on."""
    cpu = []
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = [line.split(":")[1].strip() for line in f if "model name" in line]
    name = (cpu + [platform.machine()])[0]
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    shape = f"{c['n_layer']}x{c['n_embd']}, {c['n_head']} heads, vocab {c['vocab_size']}"
    return {
        "device": str(device),
        "name": name,
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "model": shape,
        "dtype": cli.precision(device)[0],
    }


def main(argv):
    c, given = cli.parse(CONFIG, argv, __doc__)
    c = vars(c)
    if c["preset"] == "paper":
        c |= {k: v for k, v in PAPER_SHAPE.items() if k not in given}
    device = cli.device(c["device"])
    Ls = numbers(c["lengths"] or "1024,2048,8192", int, "lengths")
    ks = numbers(c["parallel"], int, "parallel")
    alphas = numbers(c["train_alphas"], float, "train_alphas")
    if not Ls or min(Ls) < 16 or c["repeats"] < 1 or c["train_batch"] < 2:
        raise cli.UserError("lengths must be at least 16, repeats at least 1, train_batch 2")
    peer = importlib.util.find_spec("transformers") is not None
    if not peer:
        print("# note: transformers is not installed (pip install transformers): no GPT-2 peer")
    env = environment(c, device)
    print(
        f"# bench.py on {env['device']} ({env['name']}, {env['threads']} threads), torch "
        f"{env['torch']}, model {env['model']}, {env['dtype']}, batch 1 unless said, nucleus off"
    )
    header = f"{'L':>6} {'method':<19} {'NFE':>6} {'median s':>10} {'mean +- std s':>18}"
    print(header + f" {'ms/step':>8} {'peak MB':>8}")
    results = []
    for case in plan_cases(c, Ls, peer):
        r = in_fresh_process(run_sampling, case, c)
        results.append(r)
        print(case_line(r), flush=True)
    ratios = {}
    for L in Ls:
        ratios[L] = ratios_at(results, L, ks)
        if ratios[L]:
            print(f"L={L}: " + ", ".join(f"{k} {v:.3g}" for k, v in ratios[L].items()), flush=True)
    training = []  # the step time of each alpha_0, and as a multiple of the first one's
    for a in alphas:
        case = dict(L=c["train_length"], alpha_0=a, repeats=c["repeats"])
        r = in_fresh_process(run_training, case, c)
        training.append(r)
        base = training[0]["fast"]
        line = (
            f"training L={r['L']}, batch {c['train_batch']}, alpha_0={a}: {r['fast']:.3f} s/step "
            f"({r['fast'] / base:.2f}x the first alpha_0; dense {r['dense']:.3f} s, "
            f"{r['dense'] / base:.2f}x), n_skip {r['n_skip']}, {r['tokens_per_s']:,.0f} tokens/s, "
            f"fast - dense: loss {r['loss_diff']:.1e}, grads {r['grad_diff']:.1e}"
        )
        if r["mfu"] is not None:
            line += f", MFU {100 * r['mfu']:.1f}%"
        print(line, flush=True)
    record = {"env": env, "config": c, "sampling": results, "ratios": ratios}
    record["training"] = training
    if c["json"]:
        Path(c["json"]).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    cli.run(main, "paper/bench.py")
