"""
karpathy/nanoGPT's own train.py, unmodified, against ours at --alpha_0=0 (the AR special case):
the same bytes and settings, one run after the other on the CPU; then both final checkpoints on the
same validation windows, and where the time of a step goes. From the repository root:

  python -m results.nanogpt.compare               # 2,400 iterations each: ~15 min on 2 quiet cores
  python -m results.nanogpt.compare --max_iters=40 --eval_interval=20 --eval_iters=5 --work=/tmp/ng
  python -m results.nanogpt.compare --skip_train  # re-evaluate the checkpoints already in --work
  python -m results.nanogpt.compare --publish     # the full run, also into results/

nanoGPT's checkout: --nanogpt, else $NANOGPT, else results/nanogpt/src (git-ignored). It reads its
configurator.py, config and data from its working directory: the work folder (default out/nanogpt),
which gets links to its configurator.py and our bytes, a meta.pkl and config_prose.py. Its
checkpoint and stamped output go to work/nanogpt/, ours to work/eso/, the results to compare.json.
"""

import argparse
import importlib.util
import json
import os
import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import checkpoint
import eso

REPO = Path(__file__).resolve().parents[2]
BYTES = REPO / "data" / "python_prose"
# The settings of both runs, by the names both train.py's use: our default run, at alpha_0 = 0.
BATCH = dict(dataset="python_prose", batch_size=16, block_size=128, gradient_accumulation_steps=1)
MODEL = dict(n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False)
OPTIMIZER = dict(learning_rate=3e-3, beta1=0.9, beta2=0.99, weight_decay=0.0, grad_clip=1.0)
SCHEDULE = dict(warmup_iters=200, min_lr=3e-4, max_iters=2400)  # warmup, then cosine to min_lr
EVALS = dict(eval_interval=400, eval_iters=20, log_interval=1)  # both curves at every iteration
SYSTEM = dict(device="cpu", dtype="float32", compile=False)
SHARED = BATCH | MODEL | OPTIMIZER | SCHEDULE | EVALS | SYSTEM
# Each side's own names for the rest (and nanoGPT's lr_decay_iters = max_iters)
NANOGPT_ONLY = dict(decay_lr=True, always_save_checkpoint=True, wandb_log=False, out_dir="nanogpt")
OURS_ONLY = dict(alpha_0=0.0, lr_schedule="cosine", ema=0.0)
SHORT_RUN = ("max_iters", "eval_interval", "eval_iters")  # the flags that go to both sides


def parse_args():
    """This script's flags; those of a short run go to both sides."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for key in SHORT_RUN:
        parser.add_argument(f"--{key}", type=int, default=SHARED[key])
    default_src = os.environ.get("NANOGPT", REPO / "results" / "nanogpt" / "src")
    parser.add_argument("--nanogpt", type=Path, default=default_src, help="nanoGPT's checkout")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "nanogpt")
    parser.add_argument("--json", type=Path, help="the results (default: WORK/compare.json)")
    parser.add_argument("--publish", action="store_true", help="copy a full run's JSON to results/")
    parser.add_argument("--skip_train", action="store_true", help="evaluate WORK's checkpoints")
    return parser.parse_args()


def with_load(loads, name, function, *args):
    """function(*args), with the 1, 5 and 15-minute load averages around it in loads[name]."""
    before = os.getloadavg()
    result = function(*args)
    loads[name] = {"before": before, "after": os.getloadavg()}
    return result


def commit(path):
    """The git commit of a checkout, with a '+' when its tracked files have uncommitted edits."""
    head = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True)
    status = ["git", "--no-optional-locks", "-C", path, "status", "--porcelain", "-uno"]
    edits = subprocess.run(status, capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + ("+" if edits else "")


def train_nanogpt(src, work, config):
    """nanoGPT's train.py, run from the work folder laid out for it; each line of its output is
    echoed and kept in work/nanogpt/stdout.tsv, stamped with the seconds since launch."""
    data = work / "data" / config["dataset"]
    data.mkdir(parents=True, exist_ok=True)
    links = {work / "configurator.py": src / "configurator.py"}
    links |= {data / name: BYTES / name for name in ("train.bin", "val.bin")}
    for link, target in links.items():
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    (data / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 256}))
    (work / "config_prose.py").write_text("".join(f"{k} = {v!r}\n" for k, v in config.items()))
    out = work / config["out_dir"]
    out.mkdir(exist_ok=True)
    cmd = [sys.executable, "-u", str(src / "train.py"), "config_prose.py"]
    pipe = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    start = time.perf_counter()
    with open(out / "stdout.tsv", "w") as log, subprocess.Popen(cmd, cwd=work, **pipe) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
            log.write(f"{time.perf_counter() - start:.4f}\t{line.rstrip()}\n")
    if proc.returncode:
        sys.exit(f"nanoGPT's train.py failed (status {proc.returncode}): see {out / 'stdout.tsv'}")


def read_nanogpt(work, max_iters):
    """nanoGPT's curves, [iter, loss, training seconds], numbered as ours: the loss it prints as
    `iter k` is that of update k + 1, and `step k` comes after k updates. The seconds are its own
    per-iteration times, except where an iteration began with an eval: there, the stamps from
    `step k` to `iter k` (the update, and the checkpoint write, milliseconds). The update it makes
    after its last eval (it stops once iter_num > max_iters) is dropped."""
    train = []
    val = []
    seconds = 0.0
    eval_end = None  # the stamp of the last `step k` line, until the iteration it began ends
    for row in (work / "nanogpt" / "stdout.tsv").read_text().splitlines():
        stamp, _, line = row.partition("\t")
        words = line.split()
        if line.startswith("step ") and "val loss" in line:  # step N: train loss X, val loss Y
            val.append([int(words[1].rstrip(":")), float(words[-1]), round(seconds, 4)])
            eval_end = float(stamp)
        elif line.startswith("iter ") and "time" in line:  # iter N: loss X, time Yms, mfu Z%
            k = int(words[1].rstrip(":"))
            step_s = float(words[5].removesuffix("ms,")) / 1000
            if eval_end is not None:
                step_s = float(stamp) - eval_end
                eval_end = None
            if k < max_iters:
                seconds += step_s
                train.append([k + 1, float(words[3].rstrip(",")), round(seconds, 4)])
    return {"train": train, "val": val}


def train_ours(work, config):
    """Our train.py with the same settings, at alpha_0 = 0; it logs to work/eso/log.jsonl."""
    flags = [f"--{key}={value}" for key, value in config.items()]
    out_dir = work / "eso"
    if out_dir.is_relative_to(REPO):  # as the published JSON shows it
        out_dir = out_dir.relative_to(REPO)
    done = subprocess.run([sys.executable, "train.py", *flags, f"--out_dir={out_dir}"], cwd=REPO)
    if done.returncode:
        sys.exit(f"our train.py failed (status {done.returncode})")


def read_ours(work):
    """Our curves from log.jsonl, [iter, loss (val: NELBO), training seconds]."""
    rows = [json.loads(line) for line in (work / "eso" / "log.jsonl").read_text().splitlines()]
    train = [[r["iter"], r["loss"], r["train_s"]] for r in rows if "loss" in r]
    val = [[r["iter"], r["val"]["nelbo"], r["train_s"]] for r in rows if "val" in r]
    return {"train": train, "val": val}


def settings_differ(configs, ran):
    """What differs between the settings each side ran with (nanoGPT's checkpoint's config, our
    checkpoint's train_config) and those it was given: an empty list when both ran as asked."""
    differ = []
    for side, config in configs.items():
        for key, value in config.items():
            if ran[side].get(key) != value:
                differ.append(f"{side} {key}={ran[side].get(key)!r}, not {value!r}")
    return differ


@torch.no_grad()
def fixed_windows(gpt, model, n, B):
    """Both final models on our fixed validation set (train.py's: n x B offsets drawn with seed
    0), nats per byte: on targets 1..L-1 with the same contexts; ours on all L, byte 0 predicted
    from nothing, against likelihood(x, 1) (exact at alpha_0 = 0); nanoGPT by its own convention,
    targets 1..L of a window of L + 1 (what its evals average)."""
    val = np.memmap(BYTES / "val.bin", dtype=np.uint16, mode="r")
    L = model.config.block_size
    offsets = torch.randint(len(val) - L, (n, B), generator=torch.Generator().manual_seed(0))
    masked = torch.ones(B, L, dtype=torch.bool)  # at alpha_0 = 0 every byte is a [MASK] in z_0
    sigma = torch.arange(L).expand(B, L)  # decoded left to right
    nll_nanogpt = []
    nll_eso = []
    likelihood = []
    for batch in offsets:
        window = torch.from_numpy(val[batch.numpy()[:, None] + np.arange(L + 1)].astype(np.int64))
        x = window[:, :L]  # (B, L)
        targets = window[:, 1:].contiguous()  # (B, L): byte i + 1 is predicted from bytes <= i
        logits, _ = gpt(x, targets)  # (B, L, V)
        nll_nanogpt.append(-F.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1))
        nll_eso.append(-model.sequential_logprobs(x, masked, sigma).double())  # bytes 0..L-1
        likelihood.append(model.likelihood(x, 1).item())
    nll_nanogpt = torch.cat(nll_nanogpt).double()  # (n B, L): targets 1..L
    nll_eso = torch.cat(nll_eso)  # (n B, L): targets 0..L-1
    per_batch = nll_eso.view(n, B * L).mean(1)
    return {
        "windows": [n, B, L],
        "nanogpt_1_to_L-1": nll_nanogpt[:, :-1].mean().item(),
        "eso_1_to_L-1": nll_eso[:, 1:].mean().item(),
        "eso_all_L": nll_eso.mean().item(),
        "eso_likelihood": statistics.mean(likelihood),
        "max_gap_all_L_vs_likelihood": (per_batch - torch.tensor(likelihood)).abs().max().item(),
        "nanogpt_own_convention": nll_nanogpt.mean().item(),
    }


def step_split(module, config, reps=20, warmup=3):
    """Median milliseconds of forward + backward of one batch (B x L random bytes, random
    weights), the cases interleaved: nanoGPT's GPT; our transformer as a plain AR model (L
    positions, causal, shifted targets); ours at alpha_0 = 0 as train.py runs it (2L positions,
    the fast path); and the same through the dense 2L x 2L mask."""
    B = config["batch_size"]
    L = config["block_size"]
    size = {key: config[key] for key in ("n_layer", "n_head", "n_embd")}
    torch.manual_seed(0)
    gpt_config = module.GPTConfig(block_size=L, vocab_size=256, dropout=0.0, bias=False, **size)
    gpt = module.GPT(gpt_config)
    model = eso.EsoLM(eso.EsoConfig(block_size=L, vocab_size=256, alpha_0=0.0, **size))
    window = torch.randint(256, (B, L + 1))
    x = window[:, :L].contiguous()
    targets = window[:, 1:].contiguous()
    positions = torch.arange(L).expand(B, L)

    def plain_ar():
        """Our transformer as nanoGPT runs its own: one causal pass, shifted targets."""
        logits = model.logits(model.hidden(x, positions))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    cases = {
        "nanogpt": lambda: gpt(x, targets)[1],
        "eso_plain_ar": plain_ar,
        "eso_alpha_0": lambda: model.loss(x)[0],
        "eso_alpha_0_dense": lambda: model.loss(x, dense=True)[0],
    }
    times = {name: [] for name in cases}
    for rep in range(warmup + reps):
        for name, loss in cases.items():
            gpt.zero_grad(set_to_none=True)
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            loss().backward()
            if rep >= warmup:
                times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(ms) for name, ms in times.items()}


def eval_table(out):
    """A row per eval of ours (nanoGPT evaluates at the same iterations, and at 0 too): each
    side's val loss and training seconds, and the ratio of the seconds."""
    nanogpt = {it: (loss, seconds) for it, loss, seconds in out["nanogpt"]["val"]}
    rows = []
    for it, val_eso, s_eso in out["eso"]["val"]:
        val_nanogpt, s_nanogpt = nanogpt[it]
        row = {"iter": it, "val_nanogpt": val_nanogpt, "val_eso": val_eso}
        row |= {"train_s_nanogpt": s_nanogpt, "train_s_eso": s_eso, "ratio": s_eso / s_nanogpt}
        rows.append(row)
    return rows


def report(out):
    """The short table, the settings check, the fixed windows, the step split, the loads."""
    print(f"{'iter':>6} {'val nanoGPT':>11} {'val ours':>9} {'s nanoGPT':>10} {'s ours':>8} ratio")
    for r in out["table"]:
        numbers = f"{r['val_nanogpt']:11.4f} {r['val_eso']:9.4f} {r['train_s_nanogpt']:10.1f}"
        print(f"{r['iter']:6d} {numbers} {r['train_s_eso']:8.1f} {r['ratio']:5.2f}")
    print("settings that differ from those given: " + ("; ".join(out["settings_differ"]) or "none"))
    f = out["fixed_windows"]
    print(f"fixed windows, (n, B, L) = {tuple(f['windows'])}, nats/byte:")
    print(f"  positions 1..L-1: nanoGPT {f['nanogpt_1_to_L-1']:.4f}, ours {f['eso_1_to_L-1']:.4f}")
    print(f"  ours on all L {f['eso_all_L']:.6f}, likelihood(x, 1) {f['eso_likelihood']:.6f}")
    print(f"  nanoGPT by its own convention (targets 1..L) {f['nanogpt_own_convention']:.4f}")
    print("forward + backward, ms: " + ", ".join(f"{k} {v:.1f}" for k, v in out["step_ms"].items()))
    for name, load in out["loadavg"].items():
        print(f"load average {name}: {load['before'][0]:.2f} before, {load['after'][0]:.2f} after")


def main():
    args = parse_args()
    settings = SHARED | {key: getattr(args, key) for key in SHORT_RUN}
    nanogpt_config = settings | NANOGPT_ONLY | {"lr_decay_iters": settings["max_iters"]}
    configs = {"nanogpt": nanogpt_config, "eso": settings | OURS_ONLY}  # what each side is given
    src = args.nanogpt.resolve()
    work = args.work.resolve()
    if args.publish and settings != SHARED:
        sys.exit("--publish is for the full run: drop --max_iters, --eval_interval, --eval_iters")
    if not (src / "train.py").is_file():
        sys.exit(f"no nanoGPT at {src}: git clone https://github.com/karpathy/nanoGPT there")
    if not (BYTES / "val.bin").is_file():
        sys.exit("data/python_prose is not prepared: run python data/prepare.py")
    loads = {}
    if not args.skip_train:
        if (work / "eso" / "log.jsonl").exists():
            sys.exit(f"{work} holds a run (train.py would append): --skip_train, or a new --work")
        work.mkdir(parents=True, exist_ok=True)
        with_load(loads, "nanogpt_train", train_nanogpt, src, work, configs["nanogpt"])
        with_load(loads, "eso_train", train_ours, work, configs["eso"])
    spec = importlib.util.spec_from_file_location("nanogpt_model", src / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # nanoGPT's model.py: GPT, GPTConfig
    # nanoGPT's checkpoint holds tensors and plain values: it loads with weights_only=True
    ckpt = torch.load(work / "nanogpt" / "ckpt.pt", map_location="cpu", weights_only=True)
    gpt = module.GPT(module.GPTConfig(**ckpt["model_args"]))
    gpt.load_state_dict(ckpt["model"])
    model, our_ckpt = checkpoint.load(work / "eso" / "ckpt.pt", "cpu", ema=False)
    ran = {"nanogpt": ckpt["config"], "eso": our_ckpt["train_config"]}
    nanogpt_curves = read_nanogpt(work, settings["max_iters"])
    out = {
        "nanogpt": {"commit": commit(src), "config": ran["nanogpt"], **nanogpt_curves},
        "eso": {"commit": commit(REPO), "config": ran["eso"], **read_ours(work)},
        "curve_columns": ["iter", "loss", "train_s"],
    }
    out["table"] = eval_table(out)
    out["settings_differ"] = settings_differ(configs, ran)
    n = settings["eval_iters"]
    B = settings["batch_size"]
    out["fixed_windows"] = with_load(loads, "fixed_windows", fixed_windows, gpt.eval(), model, n, B)
    out["step_ms"] = with_load(loads, "step_split", step_split, module, settings)
    out["loadavg"] = loads
    out["machine"] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    json_path = args.json or work / "compare.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(out, indent=1) + "\n"
    json_path.write_text(text)
    report(out)
    print(f"wrote {json_path}")
    if args.publish and out["settings_differ"]:
        sys.exit("not published: the settings differ")
    if args.publish:
        (REPO / "results" / "nanogpt_compare.json").write_text(text)
        print("copied it to results/nanogpt_compare.json")


if __name__ == "__main__":
    main()
