"""
RESULTS.md's figures, drawn from the JSON that results/measure.sh writes (and, for the attention
patterns, from eso.py's own mask functions): `python -m results.figures` from the repository root.
Writes assets/*.png. matplotlib is an optional dependency: `pip install matplotlib`.
"""

import json
import sys
from pathlib import Path

import torch

import eso

HERE = Path(__file__).resolve().parent
ASSETS = HERE.parent / "assets"


def jsonl(name):
    path = HERE / name
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if path.exists()
        else []
    )


def attention(plt):
    """The attention masks of the paper's worked example (x = ABCDEF, z_0 = A_C__F): what
    `python eso.py` prints."""
    x, masked = "ABCDEF", torch.tensor([[0, 1, 0, 1, 1, 0]], dtype=torch.bool)
    u = torch.tensor(
        [[0.2, 0.9, 0.1, 0.3, 0.5, 0.4]]
    )  # eso.show_example's keys: the paper's orders
    fig, axes = plt.subplots(2, 2, figsize=(11, 10), gridspec_kw={"width_ratios": [1, 2]})
    for row, variant in enumerate("BA"):
        x_mask = eso.prefix_lm_mask(torch.arange(6), 6, 3 if variant == "A" else 0)
        orders = [
            eso.diffusion_order(masked, u)[0].tolist(),
            eso.sequential_order(masked, torch.arange(6.0)[None] / 6 if variant == "A" else u)[
                0
            ].tolist(),
        ]
        for col, (sigma, mask) in enumerate(
            zip(orders, (x_mask[0, 0], eso.sequential_mask(x_mask)[0, 0]))
        ):
            labels = [("M" if masked[0, p] else x[p]) + str(p + 1) for p in sigma]
            labels += [x[p] + str(p + 1) for p in sigma] * col  # the x half of [z_0 ; x]
            ax = axes[row, col]
            ax.imshow(mask.numpy(), cmap="Blues", vmin=0, vmax=1.4)
            ax.set_xticks(range(len(labels)), labels)
            ax.set_yticks(range(len(labels)), labels)
            ax.set_title(
                f"variant {variant}, {'sequential term: [z_0 ; x]' if col else 'diffusion term'}, "
                f"sigma = {tuple(p + 1 for p in sigma)}",
                fontsize=10,
            )
            ax.set_xlabel("key (decode order)")
            ax.set_ylabel("query (decode order)")
            if col:
                ax.axhline(5.5, color="k", lw=0.8)
                ax.axvline(5.5, color="k", lw=0.8)
    fig.suptitle("Who attends to whom, x = ABCDEF, z_0 = A_C__F (M = [MASK]; dark = may attend)")
    return fig


def likelihood(plt):
    """Validation NELBO and IW bounds against alpha_0 (the paper's Table 1 trend)."""
    rows = jsonl("table1.jsonl")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    b = sorted({(r["alpha_0"], r["nelbo"]) for r in rows if r["variant"] == "B"})
    ax.plot(*zip(*b), "o-", label="NELBO (B)")
    for K, style in ((1, "s--"), (10, "^--"), (100, "v--")):
        iw = sorted((r["alpha_0"], r["iw_bound"]) for r in rows if r.get("num_orders") == K)
        ax.plot(*zip(*iw), style, label=f"IW bound, K = {K}")
    a = sorted({(r["alpha_0"], r["nelbo"]) for r in rows if r["variant"] == "A"})
    ax.plot(*zip(*a), "kx", ms=9, label="NELBO (A)")
    ax.set_xlabel("alpha_0 (training)")
    ax.set_ylabel("nats per byte (validation)")
    ax.set_title("Likelihood against alpha_0: from AR (0) to MDM (1)")
    ax.legend()
    return fig


def quality(plt):
    """Generative perplexity against NFE, per training alpha_0: the quality-speed frontier."""
    rows = jsonl("quality.jsonl")
    trained = sorted({r["alpha_0_train"] for r in rows}, reverse=True)
    fig, axes = plt.subplots(
        1, len(trained), figsize=(5 * len(trained), 4.5), sharey=True, squeeze=False
    )
    for ax, a_train in zip(axes[0], trained):
        for a_eval, color in zip(
            sorted({r["alpha_0"] for r in rows}, reverse=True), ("C0", "C1", "C2", "C3")
        ):
            for block in (False, True):
                pts = sorted(
                    (r["runs"][0]["nfe"], r["median"]["gen_ppl"])
                    for r in rows
                    if (r["alpha_0_train"], r["alpha_0"], r["block_order"])
                    == (a_train, a_eval, block)
                )
                ax.plot(
                    *zip(*pts),
                    "o-" if not block else "s--",
                    color=color,
                    label=f"alpha_0 = {a_eval} at sampling, {'block' if block else 'random'} order",
                )
        ax.set_xscale("log")
        ax.set_xlabel("NFE (transformer forwards per sample)")
        ax.set_title(f"trained at alpha_0 = {a_train}")
    axes[0, 0].set_ylabel("generative perplexity (judge: the alpha_0 = 0 model)")
    axes[0, -1].legend(fontsize=8)
    return fig


def speed(plt):
    """Seconds per sequence against NFE, batch 1 (the paper's Table 11 protocol)."""
    bench = json.loads((HERE / "bench.json").read_text())
    cases = [
        c
        for c in bench["sampling"]
        if c["L"] == min(c["L"] for c in bench["sampling"]) and c["nfe"]
    ]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cached = sorted(
        (c["nfe"], c["seconds"])
        for c in cases
        if c["method"] == "eso_cached" or c["method"].startswith("eso_T")
    )
    ax.plot(*zip(*cached), "o-", label="Eso-LM, KV cache (T = L/64 ... 1e6)")
    compiled = sorted(
        (c["nfe"], c["seconds"]) for c in cases if c["method"].startswith("eso_compiled")
    )
    if compiled:
        ax.plot(*zip(*compiled), "s-", label="Eso-LM, KV cache, compiled")
    for method, marker, label in (
        ("eso_uncached", "x", "uncached (what MDLM costs)"),
        ("ar", "^", "one-row AR decode"),
        ("hf_gpt2", "v", "Hugging Face GPT-2 generate"),
    ):
        for c in cases:
            if c["method"] == method:
                ax.plot(c["nfe"], c["seconds"], marker, ms=9, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE")
    ax.set_ylabel("seconds per sequence")
    env = bench["env"]
    ax.set_title(
        f"Sampling one sequence of L = {cases[0]['L']}, {env['name']}, {env['threads']} threads"
    )
    ax.legend(fontsize=8)
    return fig


def curve(plt):
    """The default run (python train.py): training loss and validation NELBO against iterations."""
    log = jsonl("runs/b0.0625.jsonl")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    train = [(r["iter"], r["loss"]) for r in log if "loss" in r]
    val = [(r["iter"], r["val"]["nelbo"]) for r in log if "val" in r]
    ax.plot(*zip(*train), lw=0.6, alpha=0.6, label="training loss (one batch)")
    ax.plot(*zip(*val), "o-", label="validation NELBO")
    ax.set_xlabel("iteration (16 sequences of 128 bytes)")
    ax.set_ylabel("nats per byte")
    ax.set_ylim(top=3.5)
    ax.set_title("The default run: python train.py (alpha_0 = 0.0625)")
    ax.legend()
    return fig


def nanogpt(plt):
    """nanoGPT against Eso-LM at alpha_0 = 0 (python -m results.nanogpt.compare): loss per
    iteration and per second."""
    runs = json.loads((HERE / "nanogpt_compare.json").read_text())
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, col, xlabel in (
        (axes[0], 0, "iteration (16 sequences of 128 bytes)"),
        (axes[1], 2, "seconds of training (evaluations excluded)"),
    ):
        for name, label, color in (
            ("nanogpt", "nanoGPT", "C1"),
            ("eso", "Eso-LM, alpha_0 = 0", "C0"),
        ):
            train, val = runs[name]["train"], [r for r in runs[name]["val"] if r[0] > 0]
            ax.plot([r[col] for r in train], [r[1] for r in train], lw=0.5, alpha=0.4, color=color)
            ax.plot(
                [r[col] for r in val],
                [r[1] for r in val],
                "o-",
                color=color,
                label=f"{label}: validation",
            )
        ax.set_xlabel(xlabel)
        ax.set_ylim(top=3.5)
        ax.legend()
    axes[0].set_ylabel("nats per byte (thin: training loss of each batch)")
    fig.suptitle("The AR limit: the same bytes, model size, batch and schedule")
    return fig


def main():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("results/figures.py: error: needs matplotlib (optional): pip install matplotlib")
    ASSETS.mkdir(exist_ok=True)
    for name, draw, needs in (
        ("attention", attention, None),
        ("likelihood", likelihood, "table1.jsonl"),
        ("quality", quality, "quality.jsonl"),
        ("speed", speed, "bench.json"),
        ("curve", curve, "runs/b0.0625.jsonl"),
        ("nanogpt", nanogpt, "nanogpt_compare.json"),
    ):
        if needs and not (HERE / needs).exists():
            print(
                f"skipped assets/{name}.png: no results/{needs} (bash results/measure.sh makes it)"
            )
            continue
        fig = draw(plt)
        fig.tight_layout()
        fig.savefig(ASSETS / f"{name}.png", dpi=110)
        plt.close(fig)
        print(f"wrote assets/{name}.png")


if __name__ == "__main__":
    main()
