"""
Speed of Eso-LM sampling and training with random weights (the paper's Tables 11 and 13).

  python bench.py                                   # CPU: L = 1024 (GPU: 1024, 2048, 8192); ~12 min on 2 cores
  python bench.py --lengths=1024,2048 --repeats=3   # more lengths, fewer runs
  python bench.py --peak_flops=989e12               # also MFU of training, against the peak you give

Sampling: batch 1, nucleus off, T = 1e6 ("NFE ~ L": one token per step, the paper's protocol).
  floor_2row, _1row, _32row  a pass over every weight matrix with 2 (1, 32) rows: a decode step's floor
  eso_cached, eso_alpha0  Eso-LM (B) with its KV cache at alpha_0 = 1 (0): two rows per step
  eso_compiled[_T=L/16]   generate(compile=True) at NFE ~ L (T = L/16), against its floor timed between its
                          runs: a weight pass with the rows it feeds plus the KV reads of its windows
  ar, hf_gpt2             a one-row GPT decode of the same transformer; Hugging Face GPT-2 `generate`, same
                          size (when transformers is installed: a peer, not a dependency)
  eso_T=L/k, eso_uncached cached at T = L/k (~k tokens per step); the uncached path (what MDLM costs)
  gpt2_vocab              eso_cached with GPT-2's 50,257 tokens: the share of a step in sample_tokens
Training: a step of model.loss (forward, backward, AdamW) per alpha_0, fast and dense sequential term, and
their largest loss and gradient difference. Cases run in fresh processes; medians of --repeats runs.
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

import torch

import cli
import eso

CONFIG = dict(
    lengths=("", "comma-separated L values (empty: 1024 on CPU; 1024,2048,8192 on GPU)"),
    n_layer=(6, "transformer blocks"),
    n_head=(6, "attention heads"),
    n_embd=(384, "width"),
    vocab_size=(256, "vocabulary (256: the byte-level default)"),
    big_vocab=(50257, "the vocabulary of the gpt2_vocab case (GPT-2's)"),
    repeats=(5, "timed runs per case (the median is reported)"),
    uncached_repeats=(1, "the uncached reference costs L full forwards per run"),
    uncached_max=(2048, "run the uncached reference only up to this L"),
    parallel=("64,16,4", "also time T = L/k steps for these k, at alpha_0 = 1"),
    train_alphas=("1,0.5,0.25,0", "training step time at these alpha_0"),
    train_batch=(4, "sequences per training step (of the first length)"),
    peak_flops=(0.0, "the device's peak FLOP/s for MFU (0 = skip), e.g. 989e12 for an H100's bf16"),
    compile=(True, "also time the compiled cached step (eso_compiled cases)"),
    fresh=(True, "run every case in a fresh process (False: in this one, for a quick check)"),
    device=("auto", "auto, cpu, cuda, cuda:N or mps"),
    seed=(0, "seed of the random weights and of the samplers"),
)


def model_for(c, dev, L, alpha_0=1.0, vocab=None):
    torch.manual_seed(c["seed"])
    return eso.EsoLM(
        eso.EsoConfig(
            block_size=L,
            vocab_size=vocab or c["vocab_size"],
            n_layer=c["n_layer"],
            n_head=c["n_head"],
            n_embd=c["n_embd"],
            alpha_0=alpha_0,
        )
    ).to(dev)


def timed(fn, repeats, dev, warmup=True, *others):
    """(median seconds, all runs, last result, then the medians of the others, each timed after each run of
    fn) of fn(), after one warm-up run unless warmup=False."""
    _ = warmup and fn()
    times = [[] for _ in range(1 + len(others))]
    for _ in range(repeats):  # fn, then each of the others, in turn
        for i, f in enumerate((fn, *others)):
            cli.synchronize(dev)
            t0, res = time.perf_counter(), f()
            cli.synchronize(dev)
            times[i].append(time.perf_counter() - t0)
            out = res if i == 0 else out
    return (
        statistics.median(times[0]),
        [round(t, 4) for t in times[0]],
        out,
        *[statistics.median(t) for t in times[1:]],
    )


def weight_pass(model, rows, dev):  # every weight matrix read once by `rows` rows: a step's floor
    x = {
        w: torch.randn(rows, w.size(0), device=dev)
        for w in [m.weight for m in model.modules() if isinstance(m, eso.Linear)]
    }
    return lambda: [x[w] @ w for w in x] and (None, 0)


def kv_reads(model, windows, dev):
    """The attention reads of a run's steps: per (rows, keys) window, two products over all layers and heads."""
    cfg, counts = model.config, {w: windows.count(w) for w in set(windows)}
    heads = (
        cfg.n_layer * cfg.n_head,
        cfg.n_embd // cfg.n_head,
    )  # q, k, v: (layers x heads, rows or keys, hd)
    data = {
        w: [torch.randn(heads[0], n, heads[1], device=dev) for n in (w[0], w[1], w[1])]
        for w in counts
    }
    return lambda: [[(q @ k.mT) @ v for _ in range(counts[w])] for w, (q, k, v) in data.items()]


@torch.no_grad()
def plain_ar_decode(model, L, generator):
    """A GPT decode with a KV cache: feed the last token, sample the next, L times."""
    cache, dev = model.kv_cache(1), model.wte.weight.device
    tok = torch.zeros(1, 1, dtype=torch.long, device=dev)
    for i in range(L):
        cache.slots = torch.full((1,), i, device=dev)
        h = model.hidden(tok, cache.slots[None], eso.prefix_lm_mask(cache.slots, i + 1), cache)
        tok = eso.sample_tokens(model.logits(h), generator=generator)
    return None, L


def run_sampling(case, c):
    """One case, in its own process: returns the case with its timings and memory."""
    dev, L, method, steps = cli.device(c["device"]), case["L"], case["method"], case["steps"]
    model = model_for(c, dev, L, vocab=c["big_vocab"] if method == "gpt2_vocab" else None).eval()
    gen = lambda: torch.Generator(dev).manual_seed(c["seed"])  # noqa: E731
    extra, others = {}, []
    if method.startswith("floor"):
        fn = weight_pass(model, int(method[6:-3]), dev)  # floor_<rows>row
    elif method == "hf_gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        hf = (
            GPT2LMHeadModel(
                GPT2Config(
                    vocab_size=c["vocab_size"],
                    n_positions=L,
                    n_embd=c["n_embd"],
                    bos_token_id=0,
                    eos_token_id=0,
                    n_layer=c["n_layer"],
                    n_head=c["n_head"],
                )
            )
            .to(dev)
            .eval()
        )
        ids = torch.zeros(1, 1, dtype=torch.long, device=dev)
        fn = lambda: (
            hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=L - 1,  # noqa: E731
                min_new_tokens=L - 1,
                do_sample=True,
                top_k=0,
                pad_token_id=0,
            ),
            L,
        )
    elif method == "ar":
        fn = lambda: plain_ar_decode(model, L, gen())  # noqa: E731
    else:
        alpha_0, compiled = (
            0.0 if method == "eso_alpha0" else 1.0,
            method.startswith("eso_compiled"),
        )
        fn = lambda: model.generate(
            1,
            steps,
            alpha_0=alpha_0,
            kv_cache=method != "eso_uncached",  # noqa: E731
            compile=compiled,
            generator=gen(),
        )
        if (
            compiled
        ):  # the first run compiles; it also records each step's (tokens fed, keys attended)
            windows, window = [], eso.static_window
            eso.static_window = lambda lo, hi, n: (
                windows.append((hi - lo, window(lo, hi, n)[2])) or window(lo, hi, n)
            )
            with torch.no_grad(), cli.precision(dev)[1]:
                extra["compile_s"] = timed(fn, 1, dev, False)[0]
            eso.static_window, rows = (
                window,
                max(2, round(sum(p for p, _ in windows) / len(windows))),
            )
            extra["floor_rows"], others = (
                rows,
                [weight_pass(model, rows, dev), kv_reads(model, windows, dev)],
            )
    _ = dev.type == "cuda" and torch.cuda.reset_peak_memory_stats(dev)
    with torch.no_grad(), cli.precision(dev)[1]:
        seconds, runs, (_, nfe), *floors = timed(
            fn, case["repeats"], dev, method != "eso_uncached", *others
        )
        if floors:  # per step: a weight pass, and the run's KV reads spread over its steps
            extra |= {
                "floor_weights_ms": 1e3 * floors[0],
                "floor_kv_ms": 1e3 * floors[1] / nfe,
                "compile_s": extra["compile_s"] - seconds,
                "step_over_floor": seconds / (nfe * floors[0] + floors[1]),
            }
        if (
            method == "gpt2_vocab"
        ):  # what share of a step is sample_tokens, float64 over 50,257 logits?
            logits, g = torch.randn(1, 1, c["big_vocab"], device=dev), gen()
            draw = (
                timed(lambda: [eso.sample_tokens(logits, generator=g) for _ in range(20)], 3, dev)[
                    0
                ]
                / 20
            )
            extra["sampling_share"] = draw * nfe / seconds
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes (Linux reports KiB)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else rss
    return (
        case
        | extra
        | {
            "nfe": nfe,
            "seconds": seconds,
            "runs": runs,
            "peak_mb": round(peak / 2**20, 1),
            "per_step_ms": 1e3 * seconds / max(nfe, 1),
            "tokens_per_s": L / seconds,
        }
    )


def run_training(case, c):
    """Training step times at one alpha_0: the fast sequential term, and the dense reference."""
    dev, L, B = cli.device(c["device"]), case["L"], c["train_batch"]
    ctx, model = cli.precision(dev)[1], model_for(c, dev, L, case["alpha_0"]).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, c["vocab_size"], (B, L), device=dev)
    out = dict(case)
    for name, dense in (("fast", False), ("dense", True)):

        def step():
            with ctx:
                loss, _ = model.loss(x, generator=torch.Generator(dev).manual_seed(1), dense=dense)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        out[name], _, _ = timed(step, case["repeats"], dev)
    grads = []  # the same batch and noise through both paths, without an update
    for dense in (False, True):
        with ctx:
            loss, _ = model.loss(x, generator=torch.Generator(dev).manual_seed(2), dense=dense)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
        model.zero_grad(set_to_none=True)
    (l1, g1), (l2, g2) = grads
    cfg, n_diff = model.config, round(model.config.batch_split * B)
    tokens = n_diff * L + (B - n_diff) * L * (
        2 - cfg.alpha_0
    )  # x + the masked z slots, in expectation
    flops = (
        6 * 12 * cfg.n_layer * cfg.n_embd**2 * tokens
    )  # nanoGPT's 6N per token, attention left out
    grad_diff = max(float((a - b).abs().max()) for a, b in zip(g1, g2))
    return out | {
        "loss_diff": float((l1 - l2).abs()),
        "grad_diff": grad_diff,
        "tokens_per_s": B * L / out["fast"],
        "mfu": flops / out["fast"] / c["peak_flops"] if c["peak_flops"] else None,
    }


def in_fresh_process(fn, case, c):
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, case, c).result() if c["fresh"] else fn(case, c)


def main(argv):
    c, _ = cli.parse(CONFIG, argv, __doc__)
    dev = cli.device(c["device"])
    try:
        Ls = [
            int(x)
            for x in (c["lengths"] or ("1024,2048,8192" if dev.type == "cuda" else "1024")).split(
                ","
            )
        ]
        ks = [int(x) for x in c["parallel"].split(",") if x]
        alphas = [float(x) for x in c["train_alphas"].split(",") if x]
    except ValueError:
        raise cli.UserError(
            "--lengths, --parallel and --train_alphas take comma-separated numbers"
        ) from None
    if min(Ls) < 16 or min(c["repeats"], c["uncached_repeats"]) < 1 or c["train_batch"] < 2:
        raise cli.UserError(
            "lengths must be at least 16, repeats at least 1 and --train_batch at least 2"
        )
    if not (peer := importlib.util.find_spec("transformers") is not None):
        print(
            "# note: transformers is not installed (pip install transformers): the GPT-2 peer is skipped"
        )
    cpu = (
        [ln.split(":")[1].strip() for ln in open("/proc/cpuinfo") if "model name" in ln]
        if os.path.exists("/proc/cpuinfo")
        else []
    )
    env = {
        "device": str(dev),
        "name": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else (cpu + [platform.machine()])[0],
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "model": f"{c['n_layer']}x{c['n_embd']}, {c['n_head']} heads, vocab {c['vocab_size']}",
        "dtype": cli.precision(dev)[0],
    }
    print(
        f"# bench.py on {env['device']} ({env['name']}, {env['threads']} threads), torch {env['torch']}, "
        f"model {env['model']}, {env['dtype']}, batch 1, nucleus off"
    )
    cases, big = [], 10**6
    for L in Ls:
        cases += [
            dict(
                L=L,
                method=m,
                steps=big,
                repeats=c["repeats"] * (20 if m.startswith("floor") else 1),
            )
            for m in ("floor_2row", "floor_1row", "floor_32row", "eso_cached", "eso_alpha0", "ar")
            + ("hf_gpt2",) * peer
        ]
        cases += [
            dict(L=L, method=f"eso_T=L/{k}", steps=max(1, L // k), repeats=c["repeats"]) for k in ks
        ]
        cases += [
            dict(L=L, method=m, steps=s, repeats=c["repeats"])
            for m, s in (("eso_compiled", big), ("eso_compiled_T=L/16", max(1, L // 16)))
        ] * c["compile"]
        cases += [dict(L=L, method="eso_uncached", steps=big, repeats=c["uncached_repeats"])] * (
            L <= c["uncached_max"]
        )
        cases += [dict(L=L, method="gpt2_vocab", steps=big, repeats=max(1, c["repeats"] // 2))] * (
            L == Ls[0]
        )
    print(
        f"{'L':>6} {'method':<19} {'NFE':>6} {'median s':>10} {'ms/step':>8} {'tok/s':>9} {'peak MB':>8}"
    )
    results = []
    for case in cases:
        r = in_fresh_process(run_sampling, case, c)
        results.append(r)
        print(
            f"{r['L']:>6} {r['method']:<19} {r['nfe']:>6} {r['seconds']:>10.4f} {r['per_step_ms']:>8.2f} "
            f"{r['tokens_per_s']:>9.1f} {r['peak_mb']:>8.0f}"
            + (
                f"   compiling {r['compile_s']:.1f} s once; step "
                f"{r['step_over_floor']:.2f}x its floor: {r['floor_rows']}-row weight pass {r['floor_weights_ms']:.2f} "
                f"ms + KV reads {r['floor_kv_ms']:.2f} ms"
                if "compile_s" in r
                else ""
            ),
            flush=True,
        )
    pairs = [
        ("step_over_2row_floor", "eso_cached", "floor_2row", "per_step_ms"),
        ("cached_over_ar", "eso_cached", "ar", "seconds"),
        ("cached_over_hf_gpt2", "eso_cached", "hf_gpt2", "seconds"),
        ("uncached_over_cached", "eso_uncached", "eso_cached", "seconds"),
        ("compiled_over_eager", "eso_compiled", "eso_cached", "seconds"),
        ("compiled_over_hf_gpt2", "eso_compiled", "hf_gpt2", "seconds"),
    ] + [(f"nfe_L_over_T=L/{k}", "eso_cached", f"eso_T=L/{k}", "seconds") for k in ks]
    ratios = {}
    for L in Ls:
        t = {r["method"]: r for r in results if r["L"] == L}
        ratios[L] = {name: t[a][key] / t[b][key] for name, a, b, key in pairs if a in t and b in t}
        ratios[L] |= (
            {"gpt2_vocab_sampling_share": t["gpt2_vocab"]["sampling_share"]}
            if "gpt2_vocab" in t
            else {}
        )
        ratios[L] |= {
            f"{m}_over_floor": t[m]["step_over_floor"] for m in t if "step_over_floor" in t[m]
        }
        print(f"L={L}: " + ", ".join(f"{k} {v:.3g}" for k, v in ratios[L].items()), flush=True)
    training = []  # the step time of each alpha_0, and as a multiple of the first one's
    for a in alphas:
        training.append(
            r := in_fresh_process(run_training, dict(L=Ls[0], alpha_0=a, repeats=c["repeats"]), c)
        )
        base = training[0]["fast"]
        print(
            f"training L={r['L']}, batch {c['train_batch']}, alpha_0={a}: {r['fast']:.3f} s/step "
            f"({r['fast'] / base:.2f}x the first alpha_0; dense {r['dense']:.3f} s, {r['dense'] / base:.2f}x), "
            f"{r['tokens_per_s']:,.0f} tokens/s, fast - dense: loss {r['loss_diff']:.1e}, grads {r['grad_diff']:.1e}"
            + (f", MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else ""),
            flush=True,
        )
    print(
        json.dumps(
            {"env": env, "config": c, "sampling": results, "ratios": ratios, "training": training}
        )
    )
    return 0


if __name__ == "__main__":
    cli.run(main, "bench.py")
