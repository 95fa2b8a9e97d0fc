"""
Sampling and training speed with random weights: the paper's Table 11 (and Table 13's time
column), Eso-LM beside BD3-LMs, MDLM and the AR limit, all on the same transformer.

  python -m paper.bench                            # CPU: a 4 x 256 model, L = 1024, 2048, 8192
  python -m paper.bench --lengths=1024,2048        # the lengths measured here
  python -m paper.bench --preset=paper             # the paper's shape (12 x 768, vocab 50,257)
  python -m paper.bench --batch=16 --table11=False # Table 13's time column: seconds per batch

Table 11's protocol: batch 1, nucleus off, NFE about L (one token per step), mean +- std of
--repeats runs after a warm-up, every case in a fresh process. Its five rows, at every length:
  eso        Eso-LM (B) at alpha_0 = 1 with its KV cache, T = 1e6 (the paper's T)
  bd3_4      BD3-LM with L' = 4 (paper/bd3lm.py): block after block, T' = 5,000 steps a block
  bd3_16     the same with L' = 16
  mdlm       MDLM: one bidirectional block of all L tokens, T = 1e6, a full forward per step
  ar         the AR limit: a one-row GPT decode of the same transformer with a KV cache
MDLM past --full_max times --extrapolate_steps of its steps and scales to its NFE linearly
(each step costs the same full forward), and says so. At the first length also:
  hf_gpt2    Hugging Face GPT-2 `generate`, the same size (transformers: a peer, optional)
  eso_T=L/k  Eso-LM at T = L/k (about k tokens a step)
  eso_compiled  compiled.CompiledSampler at T = 1e6 (--compile)
Training: the step time (forward, backward, AdamW) of Eso-LM at each --train_alphas and of
BD3-LM at L' = 4, and the Eso-LM fast and dense sequential terms' largest loss and gradient
difference. --json=FILE writes every run.
"""

import importlib.util
import json
import os
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

import cli
import eso
from compiled import CompiledSampler
from paper import bd3lm

CONFIG = dict(
    preset=("", "paper: 12 x 768, 12 heads, vocab 50,257 (the paper's models)", ("", "paper")),
    lengths=("", "comma-separated L values (empty: 1024, and the paper's 2048 and 8192)"),
    n_layer=(4, "transformer blocks"),
    n_head=(4, "attention heads"),
    n_embd=(256, "width"),
    vocab_size=(256, "vocabulary (256: the byte-level default)"),
    repeats=(3, "timed runs per case"),
    table11=(True, "time Table 11's five rows at every length"),
    decode=(True, "time the decode extras at the first length (the peer, T = L/k, compiled)"),
    full_max=(1024, "MDLM runs all its steps only up to this L, then extrapolates"),
    extrapolate_steps=(32, "the steps MDLM times past full_max"),
    bd3_steps=(5000, "T', the steps of each BD3-LM block (the paper's 5,000)"),
    parallel=("64,16,4", "also time Eso-LM at T = L/k steps for these k"),
    batch=(0, "Table 13's batch mode: seconds per batch of this many samples (0 = skip)"),
    batch_steps=("16,128,1024", "the T of the batch mode's Eso-LM cases (alpha_0 = 1)"),
    train_alphas=("1,0.5,0.25,0", "training step time at these alpha_0"),
    train_batch=(4, "sequences per training step"),
    train_length=(1024, "L of the training cases"),
    compile=(True, "also time the compiled cached step (eso_compiled)"),
    fresh=(True, "run every case in a fresh process (False: in this one, for a quick check)"),
    device=("auto", "auto, cpu, cuda, cuda:N or mps"),
    seed=(0, "seed of the random weights and of the samplers"),
    json=("", "also write every case, run and ratio to this JSON file"),
)
PAPER_SHAPE = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257)
BIG_T = 10**6  # the paper's speed protocol: NFE ~ L
# the paper's Table 11 (A6000, seconds), to print beside ours
PAPER_TABLE_11 = {
    2048: {"eso": 14.6, "bd3_4": 24.3, "bd3_16": 21.3, "mdlm": 201.3, "ar": 13.3},
    8192: {"eso": 82.1, "bd3_4": 312.0, "bd3_16": 268.1, "mdlm": 5438.3, "ar": 54.0},
}


def transformer_for(c, device, L, alpha_0=1.0):
    """The random-weight transformer every case shares (the same seed: the same weights)."""
    torch.manual_seed(c["seed"])
    config = eso.EsoConfig(
        block_size=L,
        vocab_size=c["vocab_size"],
        n_layer=c["n_layer"],
        n_head=c["n_head"],
        n_embd=c["n_embd"],
        alpha_0=alpha_0,
    )
    return eso.EsoLM(config).to(device).eval()


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
    std = 0.0
    if len(times) > 1:
        std = statistics.stdev(times)
    return dict(seconds=statistics.median(times), mean=statistics.fmean(times), std=std)


@torch.no_grad()
def ar_decode(model, L, gen):
    """A GPT decode with a KV cache: feed the last token, sample the next, L times."""
    cache = model.kv_cache(1)
    device = model.wte.weight.device
    token = torch.zeros(1, 1, dtype=torch.long, device=device)
    for i in range(L):
        cache.slots = torch.full((1,), i, device=device)
        attn_mask = eso.prefix_lm_mask(cache.slots, i + 1)
        h = model.hidden(token, cache.slots[None], attn_mask, cache)
        token = eso.sample_tokens(model.logits(h), generator=gen)
    return L


@torch.no_grad()
def mdlm_steps(mdlm, max_steps, gen):
    """(NFE of a whole MDLM sample at T = 1e6, steps run): its first max_steps steps, each what
    BD3LM.generate runs for one block of all L tokens: a bidirectional forward of the whole
    canvas, then the step's tokens drawn."""
    L = mdlm.config.block_size
    device = mdlm.transformer.wte.weight.device
    sizes = eso.unmask_schedule(L, BIG_T, 1.0, gen, device)
    order = eso.random_permutations(1, L, device, gen)
    x = torch.full((1, L), mdlm.mask_id, dtype=torch.long, device=device)
    done = 0
    for k in sizes[:max_steps]:
        h = mdlm.block_hidden(x, 0)  # (1, L, C)
        chosen = order[:, done : done + k]
        logits = mdlm.transformer.logits(h[:, chosen[0]])
        x[:, chosen[0]] = eso.sample_tokens(logits, generator=gen)
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


def sampler_of(case, c, model, device):
    """The function a sampling case times: it draws one sample (a batch in the batch mode) and
    returns its NFE."""
    method = case["method"]
    L = case["L"]
    batch = case.get("batch", 1)
    if method == "ar":

        def run_ar():
            return ar_decode(model, L, generator(c, device))

        return run_ar
    if method == "hf_gpt2":
        return hf_gpt2(c, L, device)
    if method.startswith("bd3_"):
        net = bd3lm.BD3LM(model, int(method.removeprefix("bd3_")))

        def run_bd3():
            return net.generate(1, c["bd3_steps"], generator=generator(c, device))[1]

        return run_bd3
    sampler = model
    if method == "eso_compiled":
        sampler = CompiledSampler(model)
    alpha_0 = 1.0
    if method == "batch_ar":
        alpha_0 = 0.0

    def run_eso():
        gen = generator(c, device)
        return sampler.generate(batch, case["steps"], alpha_0=alpha_0, generator=gen)[1]

    return run_eso


def run_sampling(case, c):
    """One sampling case, in its own process: the case with its timings and memory."""
    device = cli.device(c["device"])
    L = case["L"]
    model = transformer_for(c, device, L)
    out = dict(case)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad(), cli.precision(device)[1]:
        if case["method"] == "mdlm":
            out |= time_mdlm(model, case, c, device)
        else:
            out |= time_runs(sampler_of(case, c, model, device), case, device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes (Linux: KiB)
    peak = rss
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    out["peak_mb"] = round(peak / 2**20, 1)
    out["per_step_ms"] = 1e3 * out["seconds"] / max(out["nfe"], 1)
    return out


def time_runs(fn, case, device):
    """A case's runs after one warm-up run (which also compiles, for the compiled sampler)."""
    warm_up_s, _ = stopwatch(fn, device)
    times = []
    for _ in range(case["repeats"]):
        seconds, nfe = stopwatch(fn, device)
        times.append(seconds)
    out = summary(times) | {"nfe": nfe, "runs": [round(t, 4) for t in times]}
    out["warm_up_s"] = warm_up_s
    return out


def time_mdlm(model, case, c, device):
    """MDLM: all its steps up to full_max, else --extrapolate_steps of them, scaled to its NFE."""
    L = case["L"]
    mdlm = bd3lm.BD3LM(model, L)
    max_steps = BIG_T
    if L > c["full_max"]:
        max_steps = c["extrapolate_steps"]
    times = []

    def fn():
        return mdlm_steps(mdlm, max_steps, generator(c, device))

    fn()  # a warm-up of the same steps
    for _ in range(case["repeats"]):
        seconds, (nfe, timed) = stopwatch(fn, device)
        times.append(seconds * nfe / timed)
    out = summary(times) | {"nfe": nfe, "steps_timed": timed, "runs": [round(t, 3) for t in times]}
    out["extrapolated"] = timed < nfe
    return out


def train_step(model, opt, x, draws, ctx, dense=False):
    """One training step: forward, backward, AdamW."""
    with ctx:
        if dense:
            loss, _ = model(x, draws, dense=True)
        else:
            loss, _ = model(x, draws)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def run_training(case, c):
    """Training step times of one model: an Eso-LM at case["alpha_0"] (its fast sequential term
    and the dense one, and their loss and gradient difference), or a BD3-LM at case["block_len"];
    fresh draws at every step, as training has."""
    device = cli.device(c["device"])
    L = case["L"]
    B = c["train_batch"]
    ctx = cli.precision(device)[1]
    transformer = transformer_for(c, device, L, case.get("alpha_0", 1.0)).train()
    model = transformer
    if "block_len" in case:
        model = bd3lm.BD3LM(transformer, case["block_len"]).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, c["vocab_size"], (B, L), device=device)
    out = dict(case)
    paths = [("fast", False)]
    if "alpha_0" in case:
        paths.append(("dense", True))
    skips = []
    for name, dense in paths:
        times = []
        for step in range(case["repeats"] + 1):  # the first: a warm-up
            draws = model.draws(x, torch.Generator(device).manual_seed(step))
            if "alpha_0" in case:
                skips.append(draws.n_skip)
            seconds, _ = stopwatch(train_step, device, model, opt, x, draws, ctx, dense)
            times.append(seconds)
        out[name] = statistics.median(times[1:])
    out["tokens_per_s"] = B * L / out["fast"]
    if "alpha_0" not in case:
        return out
    out["n_skip"] = skips[1 : case["repeats"] + 1]
    grads = []  # the same batch and noise through both paths, without an update
    for dense in (False, True):
        with ctx:
            gen = torch.Generator(device).manual_seed(99)
            loss, _ = model.loss(x, generator=gen, dense=dense)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        model.zero_grad(set_to_none=True)
    (loss_fast, grads_fast), (loss_dense, grads_dense) = grads
    out["loss_diff"] = float((loss_fast - loss_dense).abs())
    out["grad_diff"] = max(float((a - b).abs().max()) for a, b in zip(grads_fast, grads_dense))
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
    """Every sampling case to time, in order."""
    cases = []
    first = Ls[0]
    repeats = c["repeats"]
    table11_lengths = []
    if c["table11"]:
        table11_lengths = Ls
    for L in table11_lengths:
        for method in ("eso", "bd3_4", "bd3_16", "mdlm", "ar"):
            cases.append(dict(L=L, method=method, steps=BIG_T, repeats=repeats))
    if c["decode"]:
        if peer:
            cases.append(dict(L=first, method="hf_gpt2", steps=BIG_T, repeats=repeats))
        for k in numbers(c["parallel"], int, "parallel"):
            steps = max(1, first // k)
            cases.append(dict(L=first, method=f"eso_T=L/{k}", steps=steps, repeats=repeats))
        if c["compile"]:
            cases.append(dict(L=first, method="eso_compiled", steps=BIG_T, repeats=repeats))
    if c["batch"]:
        batch = c["batch"]
        for T in numbers(c["batch_steps"], int, "batch_steps"):
            method = f"batch_eso_T={T}"
            cases.append(dict(L=first, method=method, steps=T, repeats=repeats, batch=batch))
        cases.append(dict(L=first, method="batch_ar", steps=BIG_T, repeats=repeats, batch=batch))
    return cases


def case_line(r):
    """A sampling case's row of the table, with the paper's seconds beside Table 11's rows."""
    spread = f"{r['mean']:.3f} +- {r['std']:.3f}"
    line = (
        f"{r['L']:>6} {r['method']:<15} {r['nfe']:>6} {r['seconds']:>10.3f} {spread:>18} "
        f"{r['per_step_ms']:>8.2f} {r['peak_mb']:>8.0f}"
    )
    paper = PAPER_TABLE_11.get(r["L"], {}).get(r["method"])
    if paper is not None:
        line += f"   paper {paper:g} s"
    if r.get("extrapolated"):
        line += f"   timed {r['steps_timed']} of {r['nfe']} steps, scaled linearly"
    if r["method"] == "eso_compiled":
        line += f"   compiling: {r['warm_up_s'] - r['seconds']:.1f} s once"
    if "batch" in r:
        line += f"   a batch of {r['batch']}"
    return line


def ratios_at(results, L):
    """Table 11's ratios at one length, ours and the paper's: each model's seconds over
    Eso-LM's (and Eso-LM's over the AR limit's)."""
    t = {r["method"]: r["seconds"] for r in results if r["L"] == L}
    paper = PAPER_TABLE_11.get(L, {})
    out = {}
    for name in ("bd3_4", "bd3_16", "mdlm", "hf_gpt2", "eso_compiled"):
        if name in t and "eso" in t:
            out[f"{name}_over_eso"] = t[name] / t["eso"]
            if name in paper:
                out[f"paper_{name}_over_eso"] = paper[name] / paper["eso"]
    if "eso" in t and "ar" in t:
        out["eso_over_ar"] = t["eso"] / t["ar"]
        if paper:
            out["paper_eso_over_ar"] = paper["eso"] / paper["ar"]
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
    alphas = numbers(c["train_alphas"], float, "train_alphas")
    if not Ls or min(Ls) % 16 or c["repeats"] < 1 or c["train_batch"] < 2:
        raise cli.UserError(
            "--lengths must be multiples of 16 (BD3-LM's blocks), --repeats at least 1, "
            "--train_batch at least 2"
        )
    peer = importlib.util.find_spec("transformers") is not None
    if not peer:
        print("# note: transformers is not installed (pip install transformers): no GPT-2 peer")
    env = environment(c, device)
    print(
        f"# paper/bench.py on {env['device']} ({env['name']}, {env['threads']} threads), torch "
        f"{env['torch']}, model {env['model']}, {env['dtype']}; batch 1 unless said, nucleus off"
    )
    header = f"{'L':>6} {'method':<15} {'NFE':>6} {'median s':>10} {'mean +- std s':>18}"
    print(header + f" {'ms/step':>8} {'peak MB':>8}")
    results = []
    for case in plan_cases(c, Ls, peer):
        r = in_fresh_process(run_sampling, case, c)
        results.append(r)
        print(case_line(r), flush=True)
    ratios = {}
    for L in Ls:
        ratios[L] = ratios_at(results, L)
        if ratios[L]:
            print(f"L={L}: " + ", ".join(f"{k} {v:.3g}" for k, v in ratios[L].items()), flush=True)
    training = []
    train_cases = [dict(L=c["train_length"], alpha_0=a, repeats=c["repeats"]) for a in alphas]
    train_cases.append(dict(L=c["train_length"], block_len=4, repeats=c["repeats"]))
    for case in train_cases:
        r = in_fresh_process(run_training, case, c)
        training.append(r)
        line = f"training L={r['L']}, batch {c['train_batch']}, "
        if "alpha_0" in r:
            line += (
                f"Eso-LM alpha_0={r['alpha_0']}: {r['fast']:.3f} s/step (dense {r['dense']:.3f} "
                f"s), n_skip {r['n_skip']}, fast - dense: loss {r['loss_diff']:.1e}, grads "
                f"{r['grad_diff']:.1e}"
            )
        else:
            line += f"BD3-LM L'={r['block_len']}: {r['fast']:.3f} s/step"
        print(line + f", {r['tokens_per_s']:,.0f} tokens/s", flush=True)
    record = {"env": env, "config": c, "sampling": results, "ratios": ratios}
    record["training"] = training
    if c["json"]:
        Path(c["json"]).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    cli.run(main, "python -m paper.bench", sys.argv[1:])
