"""
Train an Eso-LM.

  python train.py                                       # CPU-sized default on the offline corpus
  python train.py --alpha_0=0.25 --max_iters=5000       # any default below, as --key=value
  python train.py --init_from=resume                    # continue out/ckpt.pt where it stopped
  python train.py --eval_only=True --num_orders=100     # NELBO and the IW likelihood bound of out/ckpt.pt
  python train.py --eval_only=True --init_from=FILE     # the same for another checkpoint (the authors' too)
  torchrun --standalone --nproc_per_node=4 train.py     # DDP: NCCL on GPUs, gloo on CPUs

Batch: each iteration takes batch_size x gradient_accumulation_steps sequences in total, shared out
over the processes in micro-batches of batch_size (nanoGPT's convention; the accumulation steps are
rounded up to a multiple of the process count). Every random draw of an iteration (which sequences,
the noise of the loss, dropout) is a function of (seed, iteration, micro-batch), so a run gives the
same result on 1 or N processes and resumes exactly, on any number of processes. Ctrl-C or SIGTERM
saves a checkpoint before exiting; checkpoints are written atomically and hold only tensors and plain
values (they load with torch.load(weights_only=True)).
"""

import copy
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import cli
import eso
from data.prepare import DATA_DIR, load_dataset, prepare

# -----------------------------------------------------------------------------
# Defaults: each is a flag, --key=value; `python train.py --help` lists them with their notes.
CONFIG = dict(
    # I/O
    out_dir=("out", "checkpoint folder (sample.py reads it)"),
    dataset=(
        "python_prose",
        "data/NAME, prepared by data/prepare.py (the default is prepared on first use)",
    ),
    init_from=(
        "scratch",
        "scratch; resume (out_dir/ckpt.pt); or a checkpoint file (ours or the authors'): its "
        "weights, a fresh optimizer",
    ),
    eval_interval=(400, "iterations between validation runs and checkpoints"),
    eval_iters=(20, "validation batches (the same sequences and noise every time)"),
    log_interval=(10, "iterations between log lines (out_dir/log.jsonl)"),
    eval_only=(False, "evaluate out_dir/ckpt.pt on the validation set, then exit"),
    num_orders=(
        0,
        "with eval_only: orders K of the importance-weighted likelihood bound (0 = skip)",
    ),
    preset=("", "owt: the paper's OpenWebText model (explicit flags still win)", ("", "owt")),
    # data and model
    batch_size=(16, "sequences per micro-batch (per process)"),
    block_size=(128, "L, the sequence length"),
    n_layer=(4, "transformer blocks"),
    n_head=(4, "attention heads"),
    n_embd=(128, "width"),
    dropout=(0.0, "dropout rate"),
    alpha_0=(0.0625, "expected fraction of tokens made by the diffusion phase (0 = AR, 1 = MDM)"),
    bias=(False, "biases in the LayerNorms, the MLP and the head (as the authors' models)"),
    variant=(
        "B",
        "B (KV cache in both phases) or A (bidirectional clean tokens; the paper's ablation)",
        ("A", "B"),
    ),
    loss_type=(
        "elbo",
        "elbo, or low_var (diffusion weight 1; the paper's choice at alpha_0 = 1)",
        ("elbo", "low_var"),
    ),
    batch_split=(
        None,
        "kappa, the share of each batch for the diffusion term (None: 1, 0 or 0.5 by alpha_0)",
        float,
    ),
    # optimizer
    max_iters=(2400, "training iterations"),
    learning_rate=(3e-3, "peak learning rate (AdamW)"),
    warmup_iters=(200, "linear warmup iterations"),
    lr_schedule=(
        "cosine",
        "after warmup: constant, or cosine to min_lr at max_iters",
        ("constant", "cosine"),
    ),
    min_lr=(3e-4, "the cosine schedule's final learning rate"),
    weight_decay=(0.0, "AdamW weight decay"),
    beta1=(0.9, "AdamW beta1"),
    beta2=(0.99, "AdamW beta2"),
    grad_clip=(1.0, "clip the gradient norm to this (0 = off)"),
    gradient_accumulation_steps=(
        1,
        "micro-batches per iteration, over all processes (rounded up to a multiple)",
    ),
    ema=(
        0.0,
        "EMA decay of the weights used for eval and sampling (0 = off; the paper uses 0.9999)",
    ),
    # system
    **cli.SYSTEM,  # device, dtype
    compile=(None, "torch.compile the model (None: on for CUDA on Linux)", bool),
    seed=(1337, "seed of every random draw"),
)
PRESETS = {  # the paper's OpenWebText run (App. C.3): 250K steps of a 12 x 768 model at L = 1024, batch 512
    "owt": dict(
        dataset="openwebtext",
        block_size=1024,
        n_layer=12,
        n_head=12,
        n_embd=768,
        dropout=0.1,
        batch_size=64,
        gradient_accumulation_steps=8,
        learning_rate=3e-4,
        lr_schedule="constant",
        warmup_iters=2500,
        max_iters=250_000,
        ema=0.9999,
        weight_decay=0.0,
        beta2=0.999,
        eval_interval=10_000,
        eval_iters=50,
    ),
}
MODEL_KEYS = [f.name for f in fields(eso.EsoConfig) if f.name != "vocab_size"]


def check(c):
    rules = [
        (
            c["batch_size"] >= 1 and c["gradient_accumulation_steps"] >= 1,
            "--batch_size and --gradient_accumulation_steps must be at least 1",
        ),
        (c["block_size"] >= 2, "--block_size must be at least 2"),
        (
            c["max_iters"] >= 0 and c["warmup_iters"] >= 0,
            "--max_iters and --warmup_iters must not be negative",
        ),
        (
            min(c["eval_interval"], c["eval_iters"], c["log_interval"]) >= 1,
            "--eval_interval, --eval_iters and --log_interval must be at least 1",
        ),
        (
            c["learning_rate"] > 0 and c["min_lr"] >= 0,
            "--learning_rate must be above 0 and --min_lr not below 0",
        ),
        (0 <= c["ema"] < 1, "--ema must lie in [0, 1)"),
        (
            c["grad_clip"] >= 0 and c["weight_decay"] >= 0,
            "--grad_clip and --weight_decay must not be negative",
        ),
        (0 <= c["beta1"] < 1 and 0 <= c["beta2"] < 1, "--beta1 and --beta2 must lie in [0, 1)"),
        (c["num_orders"] >= 0, "--num_orders must not be negative"),
    ]
    for ok, msg in rules:
        if not ok:
            raise cli.UserError(msg)


def seeded(device, *key):
    """A generator for one draw of the run; its seed depends only on the key (integers)."""
    return torch.Generator(device).manual_seed(hash(key) % 2**63)


def get_batch(data, offsets, block_size, device):
    """The sequences of block_size tokens that start at `offsets`, as a (len(offsets), L) LongTensor."""
    x = torch.from_numpy(data[offsets.numpy()[:, None] + np.arange(block_size)].astype(np.int64))
    return x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x.to(device)


def get_lr(it, c):
    """Linear warmup to learning_rate, then constant or cosine down to min_lr at max_iters."""
    if it < c["warmup_iters"]:
        return c["learning_rate"] * (it + 1) / (c["warmup_iters"] + 1)
    if c["lr_schedule"] == "constant":
        return c["learning_rate"]
    progress = min(1.0, (it - c["warmup_iters"]) / max(1, c["max_iters"] - c["warmup_iters"]))
    return c["min_lr"] + 0.5 * (1 + math.cos(math.pi * progress)) * (
        c["learning_rate"] - c["min_lr"]
    )


@torch.no_grad()
def ema_update(ema_model, model, decay, it):
    """ema <- d ema + (1 - d) model, with the paper's warmup d = min(decay, (1 + it) / (10 + it))."""
    d = min(decay, (1 + it) / (10 + it))
    for p_ema, p in zip(ema_model.parameters(), model.parameters()):
        p_ema.lerp_(p, 1 - d)


@torch.no_grad()
def evaluate(model, val, c, ctx, rank=0, world=1, num_orders=0, forward=None):
    """Per-token NELBO (elbo weights, the training alpha_0 and kappa) on a fixed validation set:
    the same sequences and noise every call, shared out over processes. forward: the model's
    forward, compiled or not (the draws are made outside it). Totals are summed in Python floats
    (float64 on every device, MPS included)."""
    model.eval()
    forward = forward or model
    dev = model.wte.weight.device
    offsets = torch.randint(
        len(val) - c["block_size"],
        (c["eval_iters"], c["batch_size"]),
        generator=torch.Generator().manual_seed(0),
    )
    totals = np.zeros(4)  # nelbo, diffusion, sequential, iw
    for i in range(rank, c["eval_iters"], world):
        x = get_batch(val, offsets[i], c["block_size"], dev)
        noise = torch.Generator(dev).manual_seed(1000 + i)
        with ctx:
            loss, parts = forward(x, model.draws(x, noise), "elbo")
            iw = model.likelihood(x, num_orders, generator=noise) if num_orders else torch.zeros(())
        totals += [loss.item(), parts["diffusion"].item(), parts["sequential"].item(), iw.item()]
    if world > 1:
        t = torch.tensor(totals, dtype=torch.float64, device=dev if dev.type == "cuda" else "cpu")
        dist.all_reduce(t)
        totals = t.cpu().numpy()
    model.train()
    nelbo, diffusion, sequential, iw = (totals / c["eval_iters"]).tolist()
    out = {
        "nelbo": nelbo,
        "ppl": math.exp(min(nelbo, 700)),
        "diffusion": diffusion,
        "sequential": sequential,
    }
    if num_orders:
        out |= {"iw_bound": iw, "iw_ppl": math.exp(min(iw, 700)), "num_orders": num_orders}
    return out


def save_checkpoint(path, state):
    """Write to a temporary file, fsync, then rename: a crash at any moment (kill -9
    included) leaves the previous checkpoint intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if hasattr(os, "O_DIRECTORY"):
            fd = os.open(path.parent, os.O_DIRECTORY)
            os.fsync(fd)
            os.close(fd)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise cli.UserError(
            f"could not write {path} ({e.strerror or e}); the previous checkpoint is intact"
        ) from None


def main(argv):
    c, given = cli.parse(CONFIG, argv, __doc__)
    if c["preset"]:
        c |= {k: v for k, v in PRESETS[c["preset"]].items() if k not in given}
    check(c)
    # DDP: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, local_rank, world = (
        (
            int(os.environ["RANK"]),
            int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ["WORLD_SIZE"]),
        )
        if ddp
        else (0, 0, 1)
    )
    device = cli.device(c["device"])
    if ddp:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    master = rank == 0
    say = print if master else (lambda *a, **k: None)
    c["dtype"], ctx = cli.precision(device, c["dtype"])
    if c["compile"] is None:
        c["compile"] = device.type == "cuda" and sys.platform == "linux"
    out, ckpt_path = Path(c["out_dir"]), Path(c["out_dir"]) / "ckpt.pt"

    # the model: from scratch, or from the checkpoint (which then decides the model and the run's settings)
    ckpt, resuming = None, c["init_from"] == "resume"
    if c["init_from"] != "scratch" or c["eval_only"]:
        src = ckpt_path if c["init_from"] in ("scratch", "resume") else Path(c["init_from"])
        raw_model, ckpt = cli.load_checkpoint(src, device, ema=False)
        config = raw_model.config
        for k in MODEL_KEYS:
            if k in given and c[k] != getattr(config, k):
                raise cli.UserError(
                    f"--{k}={c[k]} conflicts with the checkpoint ({k}={getattr(config, k)}): "
                    f"drop the flag, or train from scratch in another --out_dir"
                )
        per_run = ("init_from", "eval_only", "num_orders", "out_dir", "device", "dtype", "compile")
        settings = (
            ckpt.get("train_config", {}) if src == ckpt_path else {"dataset": ckpt.get("dataset")}
        )
        c |= {
            k: v
            for k, v in settings.items()
            if k in CONFIG and v is not None and k not in given | set(per_run)
        }
        c |= {k: getattr(config, k) for k in MODEL_KEYS}
    if (
        c["dataset"] == "python_prose"
        and master
        and not (DATA_DIR / "python_prose" / "meta.json").exists()
    ):
        prepare("python_prose", overwrite=True)  # the offline default, prepared on first use
    if ddp:
        dist.barrier()
    train_data, val_data, meta = load_dataset(c["dataset"], c["block_size"])
    if ckpt is None:
        try:
            config = eso.EsoConfig(vocab_size=meta["vocab_size"], **{k: c[k] for k in MODEL_KEYS})
        except ValueError as e:
            raise cli.UserError(str(e)) from None
        c["batch_split"] = config.batch_split
        torch.manual_seed(c["seed"])  # the initial weights (the same on every process)
        raw_model = eso.EsoLM(config).to(device)
    elif config.vocab_size != meta["vocab_size"] or ckpt["tokenizer"] != meta["tokenizer"]:
        raise cli.UserError(
            f"data/{c['dataset']} uses {meta['tokenizer']} ({meta['vocab_size']} ids) but the "
            f"checkpoint was trained with {ckpt['tokenizer']} ({config.vocab_size} ids)"
        )
    if c["num_orders"] and config.variant != "B" and config.alpha_0 > 0:
        raise cli.UserError(
            "--num_orders needs a variant B model, or alpha_0 = 0 (variant A's clean tokens change "
            "as tokens arrive)"
        )
    if 0 < config.batch_split < 1 and c["batch_size"] < 2:
        raise cli.UserError(
            f"--batch_size must be at least 2 when batch_split is {config.batch_split} "
            "(both terms need rows)"
        )
    raw_model.train()
    has_ema = bool(ckpt and ckpt.get("ema"))
    ema_model = copy.deepcopy(raw_model).requires_grad_(False) if c["ema"] > 0 or has_ema else None
    if has_ema:
        ema_model.load_state_dict(ckpt["ema"])

    if c["eval_only"]:
        res = evaluate(ema_model or raw_model, val_data, c, ctx, rank, world, c["num_orders"])
        say(
            f"{src} (step {ckpt['iter_num']}, alpha_0={config.alpha_0}, kappa={config.batch_split}, "
            f"variant {config.variant}, {'EMA' if ema_model else 'raw'} weights) on data/{c['dataset']} val, "
            f"{c['eval_iters']} x {c['batch_size']} sequences of {config.block_size} tokens:"
        )
        say(
            f"  NELBO {res['nelbo']:.4f} nats/token (diffusion {res['diffusion']:.4f} + sequential "
            f"{res['sequential']:.4f}), perplexity {res['ppl']:.4g}"
        )
        if c["num_orders"]:
            say(
                f"  IW bound (K={c['num_orders']}) {res['iw_bound']:.4f} nats/token, perplexity {res['iw_ppl']:.4g}"
            )
        say(
            json.dumps(
                {
                    "checkpoint": str(src),
                    "step": ckpt["iter_num"],
                    "alpha_0": config.alpha_0,
                    "variant": config.variant,
                    **res,
                }
            )
        )
        if ddp:
            dist.barrier()
        return 0

    optimizer = torch.optim.AdamW(
        raw_model.parameters(),
        lr=c["learning_rate"],
        betas=(c["beta1"], c["beta2"]),
        weight_decay=c["weight_decay"],
        fused=device.type == "cuda",
    )
    scaler = torch.amp.GradScaler("cuda", enabled=c["dtype"] == "float16")
    iter_num, best_val, train_s = (
        0,
        float("inf"),
        0.0,
    )  # train_s: seconds spent training (not evaluating)
    B, L = c["batch_size"], config.block_size
    accum = -(-c["gradient_accumulation_steps"] // world)  # micro-batches per process and iteration
    if resuming:
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        iter_num, best_val = ckpt["iter_num"], ckpt.get("best_val_loss", float("inf"))
        train_s = ckpt.get("train_seconds", 0.0)
        if (
            ckpt.get("global_batch") and "gradient_accumulation_steps" not in given
        ):  # the same batch, any world
            accum, rest = divmod(ckpt["global_batch"], B * world)
            if rest or not accum:
                raise cli.UserError(
                    f"the checkpoint's global batch of {ckpt['global_batch']} sequences does not split "
                    f"into micro-batches of {B} on each of {world} process(es): resume with a "
                    "--batch_size and a process count whose product divides it"
                )
    ckpt = None  # its tensors live in the models now
    global_batch = B * accum * world
    c["gradient_accumulation_steps"] = (
        accum * world
    )  # as used (nanoGPT's convention: over all processes)
    # one graph per shape: the loss's draws are made outside (EsoLM.draws), and dynamic=False keeps
    # Dynamo from tracing a second, symbolic-shape graph when a shape changes
    model = torch.compile(raw_model, dynamic=False) if c["compile"] else raw_model
    eval_forward = torch.compile(ema_model or raw_model, dynamic=False) if c["compile"] else None
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None
        )
    if master:  # fail now, not after hours of training, if the checkpoint cannot be written
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / f".write-test-{os.getpid()}").touch()
            (out / f".write-test-{os.getpid()}").unlink()
        except OSError as e:
            raise cli.UserError(
                f"cannot write to --out_dir {out} ({e.strerror}): pick a writable folder"
            ) from None

    def checkpoint():
        if master:
            save_checkpoint(
                ckpt_path,
                {
                    "model": raw_model.state_dict(),
                    "ema": ema_model.state_dict() if ema_model else None,
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                    "config": asdict(config),
                    "tokenizer": meta["tokenizer"],
                    "dataset": c["dataset"],
                    "train_config": c,
                    "global_batch": global_batch,
                    "iter_num": iter_num,
                    "best_val_loss": best_val,
                    "train_seconds": train_s,
                    "versions": {"torch": str(torch.__version__), "python": sys.version.split()[0]},
                },
            )

    def log(record):
        if master:
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    say(
        f"Eso-LM ({config.variant}) {raw_model.num_params() / 1e6:.2f}M parameters: {config.n_layer} layers x "
        f"{config.n_embd}, L={L}, vocab {config.vocab_size} + [MASK]; alpha_0={config.alpha_0}, batch split "
        f"kappa={config.batch_split} ({config.loss_type})"
    )
    say(
        f"global batch {global_batch} sequences = {B} per micro-batch x {accum} micro-batch{'es' * (accum > 1)} x "
        f"{world} process{'es' * (world > 1)}: {global_batch * L:,} tokens per iteration; {meta['train_tokens']:,} "
        f"train / {meta['val_tokens']:,} val tokens ({meta['tokenizer']}); {device}, {c['dtype']}"
        + (", compiled" if c["compile"] else "")
        + (f"; resuming at step {iter_num}" if iter_num else "")
    )

    def train_loop():
        nonlocal iter_num, best_val, train_s
        bar = tqdm(
            total=c["max_iters"],
            initial=iter_num,
            disable=not (master and sys.stderr.isatty()),
            dynamic_ncols=True,
            unit="it",
        )  # without a terminal: plain log lines instead
        t_last, it_last, resumed_at = time.time(), iter_num, iter_num
        while True:
            if (iter_num % c["eval_interval"] == 0 and iter_num != resumed_at) or iter_num == c[
                "max_iters"
            ]:
                train_s += time.time() - t_last
                res = evaluate(
                    ema_model or raw_model, val_data, c, ctx, rank, world, forward=eval_forward
                )
                best_val = min(best_val, res["nelbo"])
                say(
                    f"step {iter_num}: val NELBO {res['nelbo']:.4f} (diffusion {res['diffusion']:.4f} + "
                    f"sequential {res['sequential']:.4f}), perplexity {res['ppl']:.4g}",
                    flush=True,
                )
                log({"iter": iter_num, "val": res, "train_s": round(train_s, 3)})
                checkpoint()
                t_last, it_last = time.time(), iter_num  # tokens/s counts training time only
            if iter_num >= c["max_iters"]:
                break
            lr = get_lr(iter_num, c)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # This iteration's sequences: a function of (seed, iteration) only, shared out by micro-batch.
            offsets = torch.randint(
                len(train_data) - L, (global_batch,), generator=seeded("cpu", c["seed"], iter_num)
            )
            stats = torch.zeros(
                4, device=device
            )  # loss, its diffusion and sequential parts, a signal caught
            for micro in range(accum):
                slot = micro * world + rank  # this micro-batch's place in the global batch
                x = get_batch(train_data, offsets[slot * B : (slot + 1) * B], L, device)
                torch.manual_seed(hash((c["seed"], iter_num, slot)) % 2**63)  # dropout
                with nullcontext() if not ddp or micro == accum - 1 else model.no_sync():
                    with ctx:
                        loss, parts = model(
                            x, raw_model.draws(x, seeded(device, c["seed"], iter_num, slot, 1))
                        )
                    scaler.scale(loss / accum).backward()
                stats[:3] += (
                    torch.stack([loss.detach(), parts["diffusion"], parts["sequential"]]).float()
                    / accum
                )
            stats[3] = float(bool(caught))
            if ddp:  # the global batch's loss, and whether any process caught a signal
                dist.all_reduce(stats)
                stats[:3] /= world
            loss_sum, d, s, stop = stats.tolist()
            if not math.isfinite(loss_sum):
                bar.close()
                raise cli.Diverged(
                    f"loss is {loss_sum} at step {iter_num}: stopping; the last good checkpoint "
                    f"({ckpt_path}) is kept. Try a lower --learning_rate or --grad_clip=1"
                )
            if c["grad_clip"]:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), c["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema_model is not None:
                ema_update(ema_model, raw_model, c["ema"], iter_num)
            iter_num += 1
            bar.update(1)
            if iter_num % c["log_interval"] == 0 or stop:
                now = time.time()
                tok_s = global_batch * L * (iter_num - it_last) / max(now - t_last, 1e-9)
                train_s, t_last, it_last = train_s + now - t_last, now, iter_num
                bar.set_postfix(loss=f"{loss_sum:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
                if bar.disable:
                    say(
                        f"iter {iter_num}: loss {loss_sum:.4f} (diffusion {d:.4f} + sequential {s:.4f}), "
                        f"lr {lr:.2e}, {tok_s:,.0f} tokens/s",
                        flush=True,
                    )
                log(
                    {
                        "iter": iter_num,
                        "loss": loss_sum,
                        "diffusion": d,
                        "sequential": s,
                        "lr": lr,
                        "tok_s": tok_s,
                        "train_s": round(train_s, 3),
                    }
                )
            if stop:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                checkpoint()
                bar.close()
                sig = caught[0] if caught else signal.SIGTERM
                say(
                    f"caught {signal.Signals(sig).name} at step {iter_num}: saved {ckpt_path}; continue with "
                    "--init_from=resume"
                )
                return 128 + sig
        bar.close()
        ppl = math.exp(min(best_val, 700))
        say(
            f"done: {iter_num} iterations, best val NELBO {best_val:.4f} (perplexity {ppl:.4g}); checkpoint in "
            f"{ckpt_path}. Sample with: python sample.py --out_dir={out}"
        )
        return 0

    # signals: finish the current iteration, save, exit (the old handlers come back on the way out)
    caught = []
    previous = {
        sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        code = train_loop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if ddp:  # leave together: a process that tears gloo down while another still saves can abort
        dist.barrier()
    return code


if __name__ == "__main__":
    cli.run(main, "train.py")
