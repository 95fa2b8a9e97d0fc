#!/usr/bin/env python
"""
Side-by-side of nanoGPT (run_nanogpt.py -> nanogpt.json) and our Eso-LM at alpha_0 = 0
(train.py -> out_dir/log.jsonl): validation loss at each eval, the training seconds to reach it,
tokens/s, and the final training loss. Writes the same numbers, and both loss curves against
iterations and seconds, to compare.json.

  python results/nanogpt/compare.py                 # out/nanogpt/{nanogpt.json, eso_a0/} -> out/nanogpt/compare.json
  python results/nanogpt/compare.py --nanogpt=out/nanogpt/short/nanogpt.json --eso=out/nanogpt/short/eso_a0 \
      --out=out/nanogpt/short/compare.json
  python results/nanogpt/compare.py --last=100      # final train loss: mean of the last 100 iterations

Both sides count tokens the same way: B x L input bytes per iteration (2,048 by default). Ours
runs 2L positions through the transformer per sequence at alpha_0 = 0; that is the cost measured.

Training seconds exclude evaluation and checkpoints on both sides:
  nanoGPT: the sum of its printed per-iteration times, less the evals (see run_nanogpt.py)
  ours:    recovered exactly from log.jsonl's tok_s: each record covers
           batch x L x (iterations since the last record or eval) / tok_s seconds (train.py restarts
           its clock after every eval and checkpoint); or train.py's own train_s where its log
           has one (train.py logs it; logs from before it did are rebuilt; the two are cross-checked).
Paths inside the repository are written relative to its root in compare.json (run_compare.sh
copies it to results/nanogpt_compare.json).
"""

import itertools
import json
import statistics
import sys
from pathlib import Path

from run_nanogpt import REPO, WORK

MATCHED = [
    "batch_size",
    "block_size",
    "n_layer",
    "n_head",
    "n_embd",
    "dropout",
    "learning_rate",
    "max_iters",
    "warmup_iters",
    "min_lr",
    "weight_decay",
    "beta1",
    "beta2",
    "grad_clip",
    "eval_interval",
    "eval_iters",
    "gradient_accumulation_steps",
    "dtype",
]


def args(argv):
    a = {
        "nanogpt": str(WORK / "nanogpt.json"),
        "eso": str(WORK / "eso_a0"),
        "out": str(WORK / "compare.json"),
        "last": "100",
    }
    for x in argv:
        k, _, v = x.lstrip("-").partition("=")
        if k not in a or not v:
            sys.exit(
                f"compare.py: unknown or empty flag {x!r}; flags: "
                + ", ".join(f"--{k}=" for k in a)
            )
        a[k] = v
    if not a["last"].isdigit() or int(a["last"]) < 1:
        sys.exit(f"compare.py: --last must be a positive integer, got {a['last']!r}")
    a["last"] = int(a["last"])
    return a


def resolve(p):
    p = Path(p)
    return p if p.is_absolute() else (Path.cwd() / p)


def shown(p):
    """An absolute p relative to the repository root when it lies inside it (compare.json may be committed)."""
    p = Path(p)
    return (
        str(p.resolve().relative_to(REPO))
        if p.is_absolute() and p.resolve().is_relative_to(REPO)
        else str(p)
    )


def load_nanogpt(path):
    if not path.exists():
        sys.exit(f"compare.py: {path} not found (run run_nanogpt.py first)")
    records = json.loads(path.read_text())
    meta_path = path.with_name(path.stem + "_meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    train = [
        (r["iter"], r["train_loss"], r["wall_s"])
        for r in records
        if r.get("train_loss") is not None
    ]
    val = [
        (r["iter"], r["val_loss"], r["wall_s"]) for r in records if r.get("val_loss") is not None
    ]
    steps = [r["step_ms"] for r in records if r.get("step_ms") is not None]
    cfg = meta.get("config", {})
    return {
        "train": train,
        "val": val,
        "step_ms": steps,
        "config": cfg,
        "meta": meta,
        "tokens_per_iter": cfg.get("batch_size", 16)
        * cfg.get("block_size", 128)
        * cfg.get("gradient_accumulation_steps", 1),
        "params": meta.get("params", {}).get("total"),
        "eval_train": {
            r["iter"]: r["eval_train_loss"] for r in records if r.get("eval_train_loss") is not None
        },
    }


def load_eso(out_dir):
    log = out_dir / "log.jsonl"
    if not log.exists():
        sys.exit(
            f"compare.py: {log} not found (run run_eso.py, or train.py with --out_dir={out_dir})"
        )
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    # train.py appends: keep the last run (a record whose iter does not move forward starts a new one)
    start, last = 0, -1
    for i, r in enumerate(rows):
        if r["iter"] < last or (r["iter"] == last and "val" not in r):
            start = i
        last = r["iter"]
    if start:
        print(
            f"note: {log} holds more than one run; using the last ({len(rows) - start} of {len(rows)} records)"
        )
    rows = rows[start:]
    cfg, params, world = {}, None, 1
    ckpt_path = out_dir / "ckpt.pt"
    if ckpt_path.exists():
        import torch

        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        cfg = dict(ck.get("train_config", {}))
        params = sum(v.numel() for v in ck["model"].values())
        world = (
            ck.get("global_batch", 0)
            // max(1, cfg.get("batch_size", 16) * cfg.get("gradient_accumulation_steps", 1))
            or 1
        )
    meta_path = out_dir / "run_meta.json"
    run_meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    B, L = cfg.get("batch_size", 16), cfg.get("block_size", 128)
    G = (
        B * cfg.get("gradient_accumulation_steps", 1) * world
    )  # train.py's global_batch on one process
    if not cfg:
        print(f"note: no {ckpt_path}: assuming batch 16 x L 128 to turn tok_s back into seconds")
    # training seconds: train.py's own train_s where its log has it (newer train.py), else rebuilt from tok_s
    train, val, wall, mark, intervals, logged = (
        [],
        [],
        0.0,
        0,
        [],
        [],
    )  # mark: train.py's it_last (0 from scratch)
    for r in rows:
        if "val" in r:
            val.append((r["iter"], r["val"]["nelbo"], r.get("train_s", wall)))
            mark = r["iter"]
        elif "loss" in r:
            n = r["iter"] - mark
            dt = G * L * n / r["tok_s"]
            wall += dt
            mark = r["iter"]
            if "train_s" in r:
                logged.append(r["train_s"] - wall)
            train.append((r["iter"], r["loss"], r.get("train_s", wall)))
            intervals.append((n, dt))
    if logged and max(map(abs, logged)) > 0.05 + 0.001 * wall:
        print(
            f"note: train.py's train_s and the seconds rebuilt from its tok_s differ by up to "
            f"{max(map(abs, logged)):.3f} s; using train_s"
        )
    step_ms = [1000 * dt / n for n, dt in intervals if n]
    return {
        "train": train,
        "val": val,
        "step_ms": step_ms,
        "config": cfg,
        "meta": run_meta,
        "tokens_per_iter": G * L,
        "params": params,
        "seconds_from": "train_s in log.jsonl" if logged else "tok_s in log.jsonl",
    }


def mean_last(train, iters):
    xs = [loss for it, loss, _ in train if it in iters]
    return sum(xs) / len(xs) if xs else None


def fmt(x, spec):
    """format(x, spec), or a '-' as wide as the spec asks when x is None."""
    if x is None:
        width = "".join(itertools.takewhile(str.isdigit, spec.lstrip("+")))
        return "-".rjust(int(width or 0))
    return format(x, spec)


def main(argv):
    a = args(argv)
    ng = load_nanogpt(resolve(a["nanogpt"]))
    eso = load_eso(resolve(a["eso"]))

    # settings that must match
    checks = []
    nc, ec = ng["config"], eso["config"]
    if nc and ec:
        for k in MATCHED:
            if nc.get(k) != ec.get(k):
                checks.append(f"{k}: nanoGPT {nc.get(k)!r} vs ours {ec.get(k)!r}")
        expect = [
            (
                nc.get("lr_decay_iters") == nc.get("max_iters"),
                "nanoGPT lr_decay_iters != max_iters",
            ),
            (nc.get("decay_lr") is True, "nanoGPT decay_lr is off"),
            (nc.get("bias") is False, "nanoGPT bias is on"),
            (ec.get("alpha_0") == 0, f"ours alpha_0 = {ec.get('alpha_0')}, not 0"),
            (ec.get("lr_schedule") == "cosine", f"ours lr_schedule = {ec.get('lr_schedule')}"),
            (not ec.get("ema"), f"ours ema = {ec.get('ema')} (evaluates EMA weights)"),
            (nc.get("device") == "cpu" and ec.get("device") in ("cpu", "auto"), "devices differ"),
            (not nc.get("compile") and not ec.get("compile"), "compile on for a side"),
        ]
        checks += [msg for ok, msg in expect if not ok]
    else:
        checks.append("could not check the settings (missing nanogpt_meta.json or ours' ckpt.pt)")

    def at(curve, it):
        return next(((loss, w) for i, loss, w in curve if i == it), (None, None))

    def train_wall(side, it):
        return 0.0 if it == 0 else next((w for i, _, w in side["train"] if i == it), None)

    eval_iters = sorted({i for i, _, _ in ng["val"]} | {i for i, _, _ in eso["val"]})
    table = []
    for it in eval_iters:
        vn, _ = at(ng["val"], it)
        ve, _ = at(eso["val"], it)
        wn, we = train_wall(ng, it), train_wall(eso, it)
        row = {
            "iter": it,
            "val_nanogpt": vn,
            "val_eso": ve,
            "val_diff_eso_minus_nanogpt": ve - vn if vn is not None and ve is not None else None,
            "wall_s_nanogpt": wn,
            "wall_s_eso": we,
            "tok_s_nanogpt": it * ng["tokens_per_iter"] / wn if wn else None,
            "tok_s_eso": it * eso["tokens_per_iter"] / we if we else None,
            "time_ratio_eso_over_nanogpt": we / wn if wn and we else None,
            "eval_train_loss_nanogpt": ng["eval_train"].get(it),
        }
        prev = [
            r
            for r in table
            if r["iter"] < it and r["wall_s_nanogpt"] is not None and r["wall_s_eso"] is not None
        ]
        if prev and wn is not None and we is not None:  # tokens/s over this eval interval alone
            p = prev[-1]
            row["interval_tok_s_nanogpt"] = (
                (it - p["iter"]) * ng["tokens_per_iter"] / (wn - p["wall_s_nanogpt"])
            )
            row["interval_tok_s_eso"] = (
                (it - p["iter"]) * eso["tokens_per_iter"] / (we - p["wall_s_eso"])
                if we > p["wall_s_eso"]
                else None
            )
        table.append(row)

    # final training loss: the last iteration both logged, and a mean over the same last iterations
    common = sorted({i for i, _, _ in ng["train"]} & {i for i, _, _ in eso["train"]})
    last_iters = set(common[-a["last"] :]) if common else set()
    final = {
        "iter": common[-1] if common else None,
        "train_loss_nanogpt": at(ng["train"], common[-1])[0] if common else None,
        "train_loss_eso": at(eso["train"], common[-1])[0] if common else None,
        f"mean_last_{len(last_iters)}_logged_nanogpt": mean_last(ng["train"], last_iters),
        f"mean_last_{len(last_iters)}_logged_eso": mean_last(eso["train"], last_iters),
        "mean_over_iters": [min(last_iters), max(last_iters)] if last_iters else None,
        "train_s_nanogpt": ng["train"][-1][2] if ng["train"] else None,
        "train_s_eso": eso["train"][-1][2] if eso["train"] else None,
    }

    def side_summary(s):
        n = s["train"][-1][0] if s["train"] else 0
        w = s["train"][-1][2] if s["train"] else None
        steps = s["step_ms"]
        return {
            "iterations": n,
            "train_s": w,
            "tokens_per_iter": s["tokens_per_iter"],
            "tokens_per_s": n * s["tokens_per_iter"] / w if w else None,
            "median_ms_per_iter": statistics.median(steps) if steps else None,
            "median_ms_per_iter_after_10": statistics.median(steps[10:])
            if len(steps) > 10
            else None,
            "params": s["params"],
            "seconds_from": s.get("seconds_from", "nanoGPT's per-iteration time"),
        }

    sn, se = side_summary(ng), side_summary(eso)
    ng_meta, eso_meta = ng["meta"], eso["meta"]
    sn |= {
        "process_s": ng_meta.get("summary", {}).get("process_s"),
        "eval_s_total": ng_meta.get("summary", {}).get("eval_s_total"),
        "loadavg_before": ng_meta.get("loadavg_before"),
        "loadavg_after": ng_meta.get("loadavg_after"),
        "threads": ng_meta.get("threads"),
        "other_processes": ng_meta.get("other_processes"),
    }
    se |= {
        "process_s": eso_meta.get("process_s"),
        "eval_s_total": eso_meta.get("eval_s_total"),
        "loadavg_before": eso_meta.get("loadavg_before"),
        "loadavg_after": eso_meta.get("loadavg_after"),
        "threads": eso_meta.get("threads"),
        "other_processes": eso_meta.get("other_processes"),
        "git_commit": eso_meta.get("git_commit"),
        "uncommitted_tracked_changes": eso_meta.get("uncommitted_tracked_changes"),
    }

    # print
    print(
        f"nanoGPT: {resolve(a['nanogpt'])}  ({fmt(sn['params'], ',')} parameters, wte tied with lm_head, "
        f"learned positions)"
    )
    print(
        f"ours:    {resolve(a['eso'])}  ({fmt(se['params'], ',')} parameters, untied, rotary, +[MASK] row; "
        f"alpha_0 = 0)"
    )
    if checks:
        print("SETTINGS DIFFER: " + "; ".join(checks))
    else:
        print(
            f"settings match: {', '.join(MATCHED)} (+ schedule shape, alpha_0 = 0, no EMA, cpu, no compile)"
        )
    print()
    hdr = (
        f"{'iter':>6} | {'val nanoGPT':>11} {'val ours':>9} {'ours-nGPT':>9} | {'s nanoGPT':>9} {'s ours':>9} "
        f"{'ours/nGPT':>9} | {'tok/s nGPT':>10} {'tok/s ours':>10}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in table:
        print(
            f"{r['iter']:>6} | {fmt(r['val_nanogpt'], '11.4f')} {fmt(r['val_eso'], '9.4f')} "
            f"{fmt(r['val_diff_eso_minus_nanogpt'], '+9.4f')} | {fmt(r['wall_s_nanogpt'], '9.1f')} "
            f"{fmt(r['wall_s_eso'], '9.1f')} {fmt(r['time_ratio_eso_over_nanogpt'], '9.2f')} | "
            f"{fmt(r['tok_s_nanogpt'], '10,.0f')} {fmt(r['tok_s_eso'], '10,.0f')}"
        )
    print(
        "(val: nats/byte; s: training seconds to reach that iteration, evals and checkpoints excluded; tok/s: "
        "B x L bytes per iteration, cumulative)"
    )
    print()
    k = len(last_iters)
    print(
        f"final train loss at iter {final['iter']}: nanoGPT {fmt(final['train_loss_nanogpt'], '.4f')}, ours "
        f"{fmt(final['train_loss_eso'], '.4f')} (one batch each); mean of the last {k} logged iterations "
        f"({final['mean_over_iters']}): nanoGPT {fmt(final[f'mean_last_{k}_logged_nanogpt'], '.4f')}, ours "
        f"{fmt(final[f'mean_last_{k}_logged_eso'], '.4f')}"
    )
    for name, s in (("nanoGPT", sn), ("ours", se)):
        print(
            f"{name:>8}: {s['iterations']} its in {fmt(s['train_s'], '.2f')} s of training = "
            f"{fmt(s['tokens_per_s'], ',.0f')} tok/s; median {fmt(s['median_ms_per_iter'], '.1f')} ms/it "
            f"({fmt(s['median_ms_per_iter_after_10'], '.1f')} after the first 10 logged); evals "
            f"{fmt(s['eval_s_total'], '.1f')} s; process {fmt(s['process_s'], '.1f')} s; {s['threads']} threads"
        )
    if sn["train_s"] and se["train_s"] and sn["iterations"] == se["iterations"]:
        print(
            f"ours takes {se['train_s'] / sn['train_s']:.2f}x nanoGPT's training time for the same iterations"
        )
    if se.get("uncommitted_tracked_changes"):
        print(
            f"note: our code had uncommitted edits at run time: {se['uncommitted_tracked_changes']}"
        )
    for name, s in (("nanoGPT", sn), ("ours", se)):
        other = (s.get("other_processes") or {}).get("other_cores")
        if other is not None:
            print(
                f"{name:>8}: other processes used {other:.2f} cores on average during the run"
                + ("  <-- NOT QUIET: timings distorted" if other > 0.1 else " (quiet)")
            )
        elif s["loadavg_before"] and s["loadavg_before"][0] > 0.5:
            print(
                f"WARNING: {name} started with load average > 0.5: its timings may include other work"
            )
    differences = [
        "positions: nanoGPT learned absolute embeddings (wpe, 16,384 params); ours rotary (no parameters)",
        "embeddings: nanoGPT ties wte and lm_head (one 256 x 128 matrix); ours untied, wte has 257 rows ([MASK])",
        "input: at alpha_0 = 0 ours feeds 2L positions per sequence ([x ; z]: true bytes and a [MASK] query "
        "stream); nanoGPT feeds L",
        "targets: nanoGPT predicts bytes 1..L of a window of L+1 (every prediction has >= 1 byte of context); "
        "ours predicts all L bytes of the window, the first one from no context (a [MASK] at position 0)",
        "val: nanoGPT averages eval_iters random val batches drawn afresh at each eval (from the same RNG as "
        "training, so evals also shift the training batches); ours uses a fixed set of eval_iters x B windows "
        "(seed 0) every time; nanoGPT also spends eval_iters train batches per eval",
        "batches: the same bytes and the same number of windows per iteration, but different random windows "
        "(nanoGPT: global torch RNG seeded 1337; ours: a generator per (seed, iteration))",
        "initialisation: the same scheme (normal 0.02, residual projections 0.02/sqrt(2 n_layer)) on different "
        "parameters and different random streams",
        "MLP: nanoGPT exact GELU; ours tanh-approximated GELU",
        "steps: nanoGPT runs one more update after its last eval (iter_num > max_iters ends it); not counted here",
    ]

    def tidy(cfg):  # the out_dir each side ran with, as shown()
        return cfg | (
            {"out_dir": shown(cfg["out_dir"])} if isinstance(cfg.get("out_dir"), str) else {}
        )

    out = {
        "nanogpt": {
            "file": shown(resolve(a["nanogpt"])),
            "summary": sn,
            "config": tidy(nc),
            "nanogpt_commit": ng_meta.get("nanogpt_commit"),
            "train": ng["train"],
            "val": ng["val"],
        },
        "eso": {
            "out_dir": shown(resolve(a["eso"])),
            "summary": se,
            "config": tidy(ec),
            "train": eso["train"],
            "val": eso["val"],
        },
        "curve_columns": ["iter", "loss", "train_s"],
        "table": table,
        "final": final,
        "settings_differ": checks,
        "differences": differences,
    }
    Path(resolve(a["out"])).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {resolve(a['out'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
