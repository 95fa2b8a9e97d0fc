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
    """The records of one JSON-lines file under results/, or none."""
    path = HERE / name
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def attention(plt):
    """The attention masks of the paper's worked example (x = ABCDEF, z_0 = A_C__F): what
    `python eso.py` prints."""
    x = "ABCDEF"
    masked = torch.tensor([[0, 1, 0, 1, 1, 0]], dtype=torch.bool)
    u = torch.tensor([[0.2, 0.9, 0.1, 0.3, 0.5, 0.4]])  # eso.show_example's keys
    left_to_right = torch.arange(6.0)[None] / 6
    fig, axes = plt.subplots(2, 2, figsize=(11, 10), gridspec_kw={"width_ratios": [1, 2]})
    for row, variant in enumerate("BA"):
        n_prefix = 3 if variant == "A" else 0  # variant A: the clean block sees itself
        x_mask = eso.prefix_lm_mask(torch.arange(6), 6, n_prefix)
        sequential_keys = left_to_right if variant == "A" else u
        panels = [
            (eso.diffusion_order(masked, u)[0], x_mask[0, 0], "diffusion term"),
            (
                eso.sequential_order(masked, sequential_keys)[0],
                eso.sequential_mask(x_mask)[0, 0],
                "sequential term: [z_0 ; x]",
            ),
        ]
        for col, (sigma, mask, term) in enumerate(panels):
            sigma = sigma.tolist()
            labels = [("M" if masked[0, p] else x[p]) + str(p + 1) for p in sigma]
            if col == 1:
                labels += [x[p] + str(p + 1) for p in sigma]  # the x half of [z_0 ; x]
            ax = axes[row, col]
            ax.imshow(mask.numpy(), cmap="Blues", vmin=0, vmax=1.4)
            ax.set_xticks(range(len(labels)), labels)
            ax.set_yticks(range(len(labels)), labels)
            order = tuple(p + 1 for p in sigma)
            ax.set_title(f"variant {variant}, {term}, sigma = {order}", fontsize=10)
            ax.set_xlabel("key (decode order)")
            ax.set_ylabel("query (decode order)")
            if col == 1:
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
        iw = [r for r in rows if r["variant"] == "B" and r.get("num_orders") == K]
        points = sorted((r["alpha_0"], r["iw_bound"]) for r in iw)
        ax.plot(*zip(*points), style, label=f"IW bound, K = {K}")
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
    sampled = sorted({r["alpha_0"] for r in rows}, reverse=True)
    width = 5 * len(trained)
    fig, axes = plt.subplots(1, len(trained), figsize=(width, 4.5), sharey=True, squeeze=False)
    for ax, a_train in zip(axes[0], trained):
        for a_eval, color in zip(sampled, ("C0", "C1", "C2", "C3")):
            for block, style, order in ((False, "o-", "random"), (True, "s--", "block")):
                key = (a_train, a_eval, block)
                points = []
                for r in rows:
                    if (r["alpha_0_train"], r["alpha_0"], r["block_order"]) == key:
                        points.append((r["runs"][0]["nfe"], r["median"]["gen_ppl"]))
                label = f"alpha_0 = {a_eval} at sampling, {order} order"
                ax.plot(*zip(*sorted(points)), style, color=color, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("NFE (transformer forwards per sample)")
        ax.set_title(f"trained at alpha_0 = {a_train}")
    axes[0, 0].set_ylabel("generative perplexity (judge: the alpha_0 = 0 model)")
    axes[0, -1].legend(fontsize=8)
    return fig


def speed(plt):
    """Table 11's protocol (batch 1, NFE ~ L): seconds per sequence against L for its five
    samplers; and, at the first L, seconds against NFE for Eso-LM's cached sampler."""
    bench = json.loads((HERE / "bench.json").read_text())
    cases = bench["sampling"]
    fig, (by_length, by_nfe) = plt.subplots(1, 2, figsize=(13, 4.8))
    methods = (
        ("mdlm", "x-", "MDLM (one bidirectional block, all L tokens every step)"),
        ("bd3_4", "v-", "BD3-LM, L' = 4"),
        ("bd3_16", "d-", "BD3-LM, L' = 16"),
        ("eso", "o-", "Eso-LM (B), KV cache"),
        ("ar", "^-", "the AR limit (one-row decode)"),
    )
    for method, style, label in methods:
        points = sorted((c["L"], c["seconds"]) for c in cases if c["method"] == method)
        if points:
            by_length.plot(*zip(*points), style, label=label)
    by_length.set_xscale("log", base=2)
    by_length.set_yscale("log")
    by_length.set_xlabel("L (tokens per sequence; NFE ~ L)")
    by_length.set_ylabel("seconds per sequence")
    by_length.legend(fontsize=8)
    first = min(c["L"] for c in cases)
    at_first = [c for c in cases if c["L"] == first and c["nfe"]]
    eager = [c for c in at_first if c["method"] == "eso" or c["method"].startswith("eso_T")]
    by_nfe.plot(*zip(*sorted((c["nfe"], c["seconds"]) for c in eager)), "o-", label="KV cache")
    compiled = [c for c in at_first if c["method"] == "eso_compiled"]
    if compiled:
        points = sorted((c["nfe"], c["seconds"]) for c in compiled)
        by_nfe.plot(*zip(*points), "s", label="KV cache, compiled")
    by_nfe.set_xscale("log")
    by_nfe.set_yscale("log")
    by_nfe.set_xlabel(f"NFE (T = L/64 ... 1e6), L = {first}")
    by_nfe.set_ylabel("seconds per sequence")
    by_nfe.legend(fontsize=8)
    env = bench["env"]
    fig.suptitle(f"Sampling speed, {env['model']}, {env['name']}, {env['threads']} threads")
    return fig


def frontier(plt):
    """The speed-quality frontier (python -m paper.frontier): generative perplexity against NFE
    and against seconds, one line per model, the AR model's own samples as the reference."""
    cells = jsonl("frontier.jsonl")
    fig, (by_nfe, by_seconds) = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    lines = [
        ("mdlm", None, "x-", "MDLM"),
        ("bd3_4", None, "v-", "BD3-LM L' = 4"),
        ("bd3_16", None, "d-", "BD3-LM L' = 16"),
        ("eso_1", 1.0, "o-", "Eso-LM alpha_0 = 1"),
        ("eso_0.25", 0.25, "s-", "Eso-LM alpha_0 = 0.25"),
        ("eso_0.125", 0.125, "P-", "Eso-LM alpha_0 = 0.125"),
    ]
    for model, alpha_0, style, label in lines:
        mine = [c for c in cells if c["model"] == model and c["alpha_0"] == alpha_0]
        for ax, key in ((by_nfe, "nfe"), (by_seconds, "seconds")):
            points = sorted((c[key], c["gen_ppl"]) for c in mine)
            if points:
                ax.plot(*zip(*points), style, label=label)
    remark = [c for c in cells if c["model"] == "eso_1" and c["alpha_0"] != 1.0]
    for ax, key in ((by_nfe, "nfe"), (by_seconds, "seconds")):
        points = sorted((c[key], c["gen_ppl"]) for c in remark)
        if points:
            ax.plot(
                *zip(*points), "o", mfc="none", color="C3", label="alpha_0 = 1 model, sampled lower"
            )
    ar = [c for c in cells if c["model"] == "ar"]
    for ax in (by_nfe, by_seconds):
        if ar:
            ax.axhline(ar[0]["gen_ppl"], ls=":", color="k", label="AR (the judge's own samples)")
        ax.set_xscale("log")
        ax.set_yscale("log")
    by_nfe.set_xlabel("NFE (transformer forwards per sample)")
    by_seconds.set_xlabel("seconds for 64 samples")
    by_nfe.set_ylabel("generative perplexity per byte (judge: the AR model)")
    by_nfe.legend(fontsize=8)
    fig.suptitle(
        "The speed-quality frontier: 7 models of 0.85M parameters, L = 128, 64 samples each"
    )
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
            train = runs[name]["train"]
            val = [r for r in runs[name]["val"] if r[0] > 0]
            ax.plot([r[col] for r in train], [r[1] for r in train], lw=0.5, alpha=0.4, color=color)
            label = f"{label}: validation"
            ax.plot([r[col] for r in val], [r[1] for r in val], "o-", color=color, label=label)
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
        ("frontier", frontier, "frontier.jsonl"),
        ("curve", curve, "runs/b0.0625.jsonl"),
        ("nanogpt", nanogpt, "nanogpt_compare.json"),
    ):
        if needs and not (HERE / needs).exists():
            print(f"skipped assets/{name}.png: no results/{needs} (results/measure.sh makes it)")
            continue
        fig = draw(plt)
        fig.tight_layout()
        fig.savefig(ASSETS / f"{name}.png", dpi=110)
        plt.close(fig)
        print(f"wrote assets/{name}.png")


if __name__ == "__main__":
    main()
