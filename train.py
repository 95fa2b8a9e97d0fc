"""
Train an Eso-LM.

  python train.py                                       # CPU-sized default on the offline corpus
  python train.py --alpha_0=0.25 --max_iters=5000       # any default below, as --key=value
  python train.py --init_from=resume                    # continue out/ckpt.pt where it stopped
  python train.py --eval_only=True --num_orders=100     # NELBO and the IW likelihood bound of out/ckpt.pt
  torchrun --standalone --nproc_per_node=8 train.py --preset=owt   # DDP (NCCL on GPUs, gloo on CPU)

Ctrl-C or SIGTERM saves a checkpoint before exiting; checkpoints are written atomically
and hold only tensors and plain values (they load with torch.load(weights_only=True)).
"""

import copy
import difflib
import json
import math
import os
import re
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import eso

# -----------------------------------------------------------------------------
# Defaults. Every one can be overridden with --key=value; --help lists them.
_BEFORE = set(globals())
# I/O
out_dir = "out"  # checkpoint folder (sample.py reads it)
dataset = "python_docs"  # data/NAME prepared by data/prepare.py (python_docs is prepared on first use)
init_from = "scratch"  # scratch or resume (from out_dir/ckpt.pt)
eval_interval = 200  # iterations between validation runs and checkpoints
eval_iters = 20  # validation batches (the same fixed sequences and noise every time)
log_interval = 10  # iterations between log lines in out_dir/log.jsonl
eval_only = False  # evaluate out_dir/ckpt.pt on the validation set, then exit
num_orders = 0  # with eval_only: orders K of the importance-weighted likelihood bound (0 = skip)
preset = ""  # "owt": the paper's OpenWebText model (explicit --key=value still wins)
# data and model
batch_size = 32  # sequences per micro-batch per process
block_size = 128  # L, the sequence length
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
alpha_0 = 0.125  # expected fraction of tokens made by the diffusion phase (0 = AR, 1 = MDM)
variant = "B"  # B (KV cache in both phases) or A (bidirectional clean tokens; the paper's ablation)
loss_type = "elbo"  # elbo or low_var (diffusion weight 1 in training; the paper's choice at alpha_0 = 1)
batch_split = None  # kappa: share of each batch for the diffusion term (None: 1, 0 or 0.5 by alpha_0)
# optimizer
max_iters = 1200
learning_rate = 3e-3
warmup_iters = 100
lr_schedule = "cosine"  # constant or cosine (to min_lr at max_iters), after a linear warmup
min_lr = 3e-4
weight_decay = 0.0
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0  # 0 = off
gradient_accumulation_steps = 1  # in total over all processes (global batch = this x batch_size)
ema = 0.0  # EMA decay of the weights used for eval and sampling (0 = off; the paper uses 0.9999)
# system
device = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps
dtype = "auto"  # auto (bfloat16 on CUDA, float16 where bf16 is missing, else float32), or one of those
compile = None  # torch.compile the model (None: on for CUDA on Linux, off elsewhere)
seed = 1337
DEFAULTS = {k: v for k, v in globals().items() if k not in _BEFORE and k != "_BEFORE"}
TYPES = {"batch_split": float, "compile": bool}  # for defaults of None
CHOICES = {"init_from": ("scratch", "resume"), "variant": ("A", "B"), "loss_type": ("elbo", "low_var"),
           "lr_schedule": ("constant", "cosine"), "dtype": ("auto", "float32", "bfloat16", "float16"),
           "preset": ("", "owt")}
PRESETS = {  # the paper's OpenWebText run (App. C.3): 250K steps of a 12 x 768 model at L = 1024
    "owt": dict(dataset="openwebtext", block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.1,
                batch_size=64, gradient_accumulation_steps=8, learning_rate=3e-4, lr_schedule="constant",
                warmup_iters=2500, max_iters=250_000, ema=0.9999, weight_decay=0.0, beta2=0.999,
                eval_interval=10_000, eval_iters=50),
}
MODEL_KEYS = [f.name for f in fields(eso.EsoConfig) if f.name != "vocab_size"]


# -----------------------------------------------------------------------------
# Command line: --key=value against a dict of typed defaults


class UserError(Exception):
    """A mistake of the user's: printed as one line, exit status 2."""


class Diverged(Exception):
    """A NaN or infinite loss: printed as one line, exit status 1."""


def _help_lines(path):
    """`name = default  # comment` lines of a script's defaults block, for --help."""
    return {m[1]: m[2] for m in re.finditer(r"^(\w+) = .*?# (.*)$", Path(path).read_text(), re.M)}


def parse_value(key, text, default, typ=None):
    typ = typ or type(default)
    if text in ("None", "none") and (default is None or key in TYPES):
        return None
    if typ is bool:
        if text.lower() in ("true", "1", "yes", "on"):
            return True
        if text.lower() in ("false", "0", "no", "off"):
            return False
        raise UserError(f"--{key} takes True or False, not {text!r}")
    try:
        return typ(text) if typ is not int else int(text, 10)
    except ValueError:
        raise UserError(f"--{key} takes {'an integer' if typ is int else 'a number' if typ is float else typ.__name__}, "
                        f"not {text!r}") from None


def parse_config(argv, defaults, prog, doc, types=None, choices=None, script=__file__):
    """Parse `--key=value` (or `--key value`) arguments against typed defaults.

    Returns (config dict, set of keys given). --help prints the defaults and exits 0; an
    unknown key or a bad value raises UserError with one line naming it and the fix.
    """
    types, choices = types or {}, choices or {}
    if any(a in ("-h", "--help") for a in argv):
        helps = _help_lines(script)
        print(doc.strip() + "\n\noptions (default):")
        for k, v in defaults.items():
            print(f"  {'--' + k + '=' + repr(v):<36} {helps.get(k, '')}")
        sys.exit(0)
    config, given, i = dict(defaults), set(), 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}: options look like --key=value (see --help)")
        key, eq, text = arg[2:].partition("=")
        if key not in defaults:
            close = difflib.get_close_matches(key, defaults, n=1)
            raise UserError(f"unknown option --{key}" + (f" (did you mean --{close[0]}?)" if close else " (see --help)"))
        if not eq:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                i, text = i + 1, argv[i + 1]
            elif types.get(key, type(defaults[key])) is bool:
                text = "True"
            else:
                raise UserError(f"--{key} needs a value: --{key}=VALUE")
        value = parse_value(key, text, defaults[key], types.get(key))
        if key in choices and value not in choices[key]:
            raise UserError(f"--{key} must be one of {', '.join(map(repr, choices[key]))}, not {value!r}")
        config[key], i = value, i + 1
        given.add(key)
    return config, given


def check_config(c):
    rules = [
        (c["batch_size"] >= 1, "--batch_size must be at least 1"),
        (c["block_size"] >= 2, "--block_size must be at least 2"),
        (c["max_iters"] >= 0, "--max_iters must not be negative"),
        (c["eval_interval"] >= 1 and c["eval_iters"] >= 1 and c["log_interval"] >= 1,
         "--eval_interval, --eval_iters and --log_interval must be at least 1"),
        (c["gradient_accumulation_steps"] >= 1, "--gradient_accumulation_steps must be at least 1"),
        (c["learning_rate"] > 0 and c["min_lr"] >= 0, "--learning_rate must be above 0 and --min_lr not below 0"),
        (c["warmup_iters"] >= 0, "--warmup_iters must not be negative"),
        (0 <= c["ema"] < 1, "--ema must lie in [0, 1)"),
        (c["grad_clip"] >= 0 and c["weight_decay"] >= 0, "--grad_clip and --weight_decay must not be negative"),
        (0 <= c["beta1"] < 1 and 0 <= c["beta2"] < 1, "--beta1 and --beta2 must lie in [0, 1)"),
        (c["num_orders"] >= 0, "--num_orders must not be negative"),
        (re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", c["device"]), "--device must be auto, cpu, mps, cuda or cuda:N"),
    ]
    for ok, msg in rules:
        if not ok:
            raise UserError(msg)


# -----------------------------------------------------------------------------
# Checkpoints: atomic writes, safe and checked loads


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
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write {path} ({e.strerror or e}); the previous checkpoint is intact") from None


def load_checkpoint(path, device="cpu"):
    """Load and check a checkpoint written by train.py; every failure is one clear line.

    weights_only=True: tensors and plain values only, so a file that would run code while
    unpickling is refused rather than executed.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"no checkpoint at {path}: train one with `python train.py` (or point --out_dir elsewhere)")
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a checkpoint")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        text = str(e)
        if re.search(r"unsupported global", text, re.I):  # the file names a callable to run while unpickling
            raise UserError(f"refusing {path}: it needs arbitrary code to unpickle, which a checkpoint of ours never "
                            "does (only load files you trust, with other tools)") from None
        why = re.search(r"WeightsUnpickler error: (.+)", text.replace("\n\n", " "))
        why = why[1] if why else (text.strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path} is not a readable checkpoint (truncated or corrupt?): {why[:160].strip()}") from None
    need = {"model", "config", "tokenizer", "iter_num"}
    if not isinstance(ckpt, dict) or not need <= set(ckpt):
        raise UserError(f"{path} is not an Eso-LM checkpoint (it lacks {', '.join(sorted(need - set(ckpt or {})))}"
                        if isinstance(ckpt, dict) else f"{path} is not an Eso-LM checkpoint")
    try:
        config = eso.EsoConfig(**ckpt["config"])
    except (TypeError, ValueError) as e:
        raise UserError(f"{path} holds an incompatible model config: {e}") from None
    return ckpt, config


def model_from_checkpoint(ckpt, config, weights="model"):
    model = eso.EsoLM(config)
    try:
        model.load_state_dict(ckpt[weights])
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"the checkpoint's weights do not fit its config ({first[:160]})") from None
    return model


# -----------------------------------------------------------------------------
# Data


def load_data(name, block_size, rank=0):
    """(train, val) token arrays of data/NAME; prepares the offline default on first use."""
    folder = Path(__file__).resolve().parent / "data" / name
    if name == "python_docs" and not (folder / "meta.json").exists():
        if rank == 0:
            sys.path.insert(0, str(folder.parent))
            from prepare import PrepareError, prepare
            try:
                prepare("python_docs", overwrite=folder.exists())
            except PrepareError as e:
                raise UserError(str(e)) from None
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        raise UserError(f"dataset {name!r} was never prepared (no {meta_path}): run python data/prepare.py "
                        f"--dataset {name}, or python data/prepare.py --input FILE ... --name {name}")
    try:
        meta = json.loads(meta_path.read_text())
        splits = [np.memmap(folder / f"{s}.bin", dtype=np.dtype(meta["dtype"]), mode="r") for s in ("train", "val")]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"data/{name} is damaged ({e}): prepare it again with --overwrite") from None
    for split, arr in zip(("train", "val"), splits):
        if len(arr) < block_size + 1:
            raise UserError(f"data/{name}/{split}.bin holds {len(arr)} tokens, fewer than one training sequence "
                            f"(block_size {block_size}): lower --block_size or prepare more text")
    return splits[0], splits[1], meta


def get_batch(data, batch_size, block_size, generator, device):
    offsets = torch.randint(len(data) - block_size, (batch_size,), generator=generator).numpy()
    x = torch.from_numpy(data[offsets[:, None] + np.arange(block_size)].astype(np.int64))
    return x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x.to(device)


# -----------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def evaluate(model, val, c, device, autocast, rank=0, world=1, num_orders=0):
    """Per-token NELBO (elbo weights, training alpha_0 and kappa) on a fixed validation set:
    the same sequences and the same noise every call, shared out over processes."""
    model.eval()
    data_gen = torch.Generator().manual_seed(0)
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # nelbo, diffusion, sequential, iw
    for i in range(c["eval_iters"]):
        x = get_batch(val, c["batch_size"], c["block_size"], data_gen, device)
        if i % world != rank:
            continue
        noise = torch.Generator(device=device).manual_seed(1000 + i)
        with autocast:
            loss, parts = model.loss(x, loss_type="elbo", generator=noise)
        totals[:3] += torch.stack([loss.double(), parts["diffusion"].double(), parts["sequential"].double()])
        if num_orders:
            totals[3] += model.likelihood(x, num_orders, generator=noise).double()
    if world > 1:
        torch.distributed.all_reduce(totals)
    model.train()
    nelbo, diffusion, sequential, iw = (totals / c["eval_iters"]).tolist()
    out = {"nelbo": nelbo, "ppl": math.exp(min(nelbo, 700)), "diffusion": diffusion, "sequential": sequential}
    if num_orders:
        out |= {"iw_bound": iw, "iw_ppl": math.exp(min(iw, 700)), "num_orders": num_orders}
    return out


# -----------------------------------------------------------------------------
# Training


def get_lr(it, c):
    if it < c["warmup_iters"]:
        return c["learning_rate"] * (it + 1) / (c["warmup_iters"] + 1)
    if c["lr_schedule"] == "constant":
        return c["learning_rate"]
    progress = min(1.0, (it - c["warmup_iters"]) / max(1, c["max_iters"] - c["warmup_iters"]))
    return c["min_lr"] + 0.5 * (1 + math.cos(math.pi * progress)) * (c["learning_rate"] - c["min_lr"])


def pick_device(name):
    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device={name} but CUDA is not available: use --device=cpu")
        if name == "mps" and not torch.backends.mps.is_available():
            raise UserError("--device=mps but MPS is not available: use --device=cpu")
        return name
    return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"


def rng_state(data_gen, device):
    state = {"torch": torch.get_rng_state(), "data": data_gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, data_gen, device):
    torch.set_rng_state(state["torch"])
    data_gen.set_state(state["data"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def main(argv):
    c, given = parse_config(argv, DEFAULTS, "train.py", __doc__, TYPES, CHOICES)
    if c["preset"]:
        c |= {k: v for k, v in PRESETS[c["preset"]].items() if k not in given}
    check_config(c)
    # DDP: torchrun sets RANK, LOCAL_RANK, WORLD_SIZE
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, local_rank, world = (int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)),
                               int(os.environ["WORLD_SIZE"])) if ddp else (0, 0, 1)
    dev_name = pick_device(c["device"])
    if ddp:
        if dev_name == "cuda":
            dev_name = f"cuda:{local_rank}"
        if dev_name.startswith("cuda"):
            torch.cuda.set_device(dev_name)
        torch.distributed.init_process_group(backend="nccl" if dev_name.startswith("cuda") else "gloo")
    device = torch.device(dev_name)
    master = rank == 0
    say = print if master else (lambda *a, **k: None)
    # precision
    if c["dtype"] == "auto":
        c["dtype"] = ("bfloat16" if torch.cuda.is_bf16_supported() else "float16") if device.type == "cuda" else "float32"
    if c["dtype"] != "float32" and device.type != "cuda":
        raise UserError(f"--dtype={c['dtype']} needs CUDA; on {device.type} use float32")
    ptdtype = getattr(torch, c["dtype"])
    autocast = torch.amp.autocast(device_type="cuda", dtype=ptdtype) if ptdtype != torch.float32 else nullcontext()
    if c["compile"] is None:
        c["compile"] = device.type == "cuda" and sys.platform == "linux"
    torch.manual_seed(c["seed"] + rank)
    out = Path(c["out_dir"])
    ckpt_path = out / "ckpt.pt"

    # model, optimizer, state: from scratch or from the checkpoint
    ckpt = None
    if c["init_from"] == "resume" or c["eval_only"]:
        ckpt, config = load_checkpoint(ckpt_path, device)
        for k in MODEL_KEYS:  # the checkpoint decides the model; a conflicting flag is an error
            if k in given and c[k] != getattr(config, k):
                raise UserError(f"--{k}={c[k]} conflicts with the checkpoint ({k}={getattr(config, k)}): "
                                f"drop the flag, or train from scratch in another --out_dir")
        saved = ckpt.get("train_config", {})
        per_run = ("init_from", "eval_only", "num_orders", "out_dir", "device", "dtype", "compile")
        c |= {k: v for k, v in saved.items() if k in DEFAULTS and k not in given and k not in per_run}
        c |= {k: getattr(config, k) for k in MODEL_KEYS}
    if c["gradient_accumulation_steps"] % world:
        raise UserError(f"--gradient_accumulation_steps ({c['gradient_accumulation_steps']}) must be a multiple "
                        f"of the number of processes ({world})")
    accum = c["gradient_accumulation_steps"] // world
    train_data, val_data, meta = load_data(c["dataset"], c["block_size"], rank)
    if ckpt is None:
        try:
            config = eso.EsoConfig(vocab_size=meta["vocab_size"], **{k: c[k] for k in MODEL_KEYS})
        except ValueError as e:
            raise UserError(str(e)) from None
        c["batch_split"] = config.batch_split
    elif config.vocab_size != meta["vocab_size"] or ckpt["tokenizer"] != meta["tokenizer"]:
        raise UserError(f"data/{c['dataset']} uses {meta['tokenizer']} ({meta['vocab_size']} ids) but the checkpoint "
                        f"was trained with {ckpt['tokenizer']} ({config.vocab_size} ids)")
    if c["num_orders"] and config.variant != "B":
        raise UserError("--num_orders needs a variant B model (variant A's clean tokens change as tokens arrive)")
    if 0 < config.batch_split < 1 and c["batch_size"] < 2:
        raise UserError(f"--batch_size must be at least 2 when batch_split is {config.batch_split} (both terms need rows)")
    raw_model = model_from_checkpoint(ckpt, config) if ckpt else eso.EsoLM(config)
    raw_model.to(device)
    ema_model = None
    if c["ema"] > 0 or (ckpt and ckpt.get("ema")):
        ema_model = copy.deepcopy(raw_model).requires_grad_(False)
        if ckpt and ckpt.get("ema"):
            ema_model.load_state_dict(ckpt["ema"])

    if c["eval_only"]:
        res = evaluate(ema_model or raw_model, val_data, c, device, autocast, rank, world, c["num_orders"])
        say(f"{ckpt_path} (step {ckpt['iter_num']}, alpha_0={config.alpha_0}, kappa={config.batch_split}, "
            f"variant {config.variant}) on data/{c['dataset']} val, {c['eval_iters']} x {c['batch_size']} "
            f"sequences of {config.block_size} tokens:")
        say(f"  NELBO {res['nelbo']:.4f} nats/token (diffusion {res['diffusion']:.4f} + sequential "
            f"{res['sequential']:.4f}), perplexity {res['ppl']:.4g}")
        if c["num_orders"]:
            say(f"  IW bound (K={c['num_orders']}) {res['iw_bound']:.4f} nats/token, perplexity {res['iw_ppl']:.4g}")
        say(json.dumps({"checkpoint": str(ckpt_path), "step": ckpt["iter_num"], "alpha_0": config.alpha_0,
                        "variant": config.variant, **res}))
        return 0

    optimizer = torch.optim.AdamW(raw_model.parameters(), lr=c["learning_rate"], betas=(c["beta1"], c["beta2"]),
                                  weight_decay=c["weight_decay"], fused=device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=ptdtype == torch.float16)
    data_gen = torch.Generator().manual_seed(c["seed"] + rank)
    iter_num, best_val = 0, float("inf")
    if ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        iter_num, best_val = ckpt["iter_num"], ckpt.get("best_val_loss", float("inf"))
        states = ckpt.get("rng") or []
        if len(states) == world:
            set_rng_state(states[rank], data_gen, device)
        else:
            say(f"note: the checkpoint's random streams are for {len(states)} processes, not {world}: reseeding")
        del ckpt
    model = torch.compile(raw_model) if c["compile"] else raw_model
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    if master:  # fail now, not after hours of training, if the checkpoint cannot be written
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise UserError(f"cannot write to --out_dir {out} ({e.strerror}): pick a writable folder") from None

    def checkpoint():
        states = [rng_state(data_gen, device)]
        if ddp:
            states = [None] * world
            torch.distributed.all_gather_object(states, rng_state(data_gen, device))
        if master:
            save_checkpoint(ckpt_path, {
                "model": raw_model.state_dict(), "ema": ema_model.state_dict() if ema_model else None,
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "config": asdict(config), "tokenizer": meta["tokenizer"], "dataset": c["dataset"],
                "train_config": c, "iter_num": iter_num, "best_val_loss": best_val, "rng": states,
                "versions": {"torch": str(torch.__version__), "python": sys.version.split()[0]}})

    def log(record):
        if master:
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    tokens_per_iter = c["batch_size"] * c["block_size"] * c["gradient_accumulation_steps"]
    say(f"Eso-LM ({config.variant}) {raw_model.num_params() / 1e6:.2f}M parameters: {config.n_layer} layers x "
        f"{config.n_embd}, L={config.block_size}, vocab {config.vocab_size} + [MASK]")
    say(f"alpha_0={config.alpha_0}, batch split kappa={config.batch_split} ({config.loss_type}); "
        f"{tokens_per_iter:,} tokens per iteration; {meta['train_tokens']:,} train / {meta['val_tokens']:,} val "
        f"tokens ({meta['tokenizer']}); {device}, {c['dtype']}" + (", compiled" if c["compile"] else "")
        + (f", {world} processes" if ddp else "") + (f"; resuming at step {iter_num}" if iter_num else ""))

    def train_loop():
        nonlocal iter_num, best_val
        bar = tqdm(total=c["max_iters"], initial=iter_num, disable=not (master and sys.stderr.isatty()),
                   dynamic_ncols=True, unit="it")  # without a terminal: plain log lines instead
        t_last, it_last, resumed_at = time.time(), iter_num, iter_num
        model.train()
        while True:
            if iter_num % c["eval_interval"] == 0 and iter_num != resumed_at or iter_num == c["max_iters"]:
                res = evaluate(ema_model or raw_model, val_data, c, device, autocast, rank, world)
                best_val = min(best_val, res["nelbo"])
                if master:
                    bar.write(f"step {iter_num}: val NELBO {res['nelbo']:.4f} (diffusion {res['diffusion']:.4f} + "
                              f"sequential {res['sequential']:.4f}), perplexity {res['ppl']:.4g}")
                    sys.stdout.flush()
                log({"iter": iter_num, "val": res})
                checkpoint()
                t_last, it_last = time.time(), iter_num  # tokens/s counts training time only
            if iter_num >= c["max_iters"]:
                break
            lr = get_lr(iter_num, c)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum, parts_sum = 0.0, torch.zeros(2, device=device)
            for micro in range(accum):
                x = get_batch(train_data, c["batch_size"], c["block_size"], data_gen, device)
                sync = nullcontext() if not ddp or micro == accum - 1 else model.no_sync()
                with sync:
                    with autocast:
                        loss, parts = model(x)
                    scaler.scale(loss / accum).backward()
                loss_sum = loss_sum + loss.detach() / accum
                parts_sum += torch.stack([parts["diffusion"], parts["sequential"]]).float() / accum
            flags = torch.tensor([float(not torch.isfinite(loss_sum)), float(bool(caught))], device=device)
            if ddp:
                torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
            if flags[0]:
                bar.close()
                raise Diverged(f"loss is {loss_sum.item()} at step {iter_num}: stopping; the last good checkpoint "
                               f"({ckpt_path}) is kept. Try a lower --learning_rate or --grad_clip=1")
            if c["grad_clip"]:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), c["grad_clip"])
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema_model is not None:  # EMA with the paper's warmup: decay min(ema, (1 + n) / (10 + n))
                decay = min(c["ema"], (1 + iter_num) / (10 + iter_num))
                with torch.no_grad():
                    for p_ema, p in zip(ema_model.parameters(), raw_model.parameters()):
                        p_ema.lerp_(p, 1 - decay)
            iter_num += 1
            bar.update(1)
            if iter_num % c["log_interval"] == 0 or flags[1]:
                now = time.time()
                tok_s = tokens_per_iter * (iter_num - it_last) / max(now - t_last, 1e-9)
                t_last, it_last = now, iter_num
                d, s = parts_sum.tolist()
                bar.set_postfix(loss=f"{loss_sum.item():.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
                if bar.disable:
                    say(f"iter {iter_num}: loss {loss_sum.item():.4f} (diffusion {d:.4f} + sequential {s:.4f}), "
                        f"lr {lr:.2e}, {tok_s:,.0f} tokens/s", flush=True)
                log({"iter": iter_num, "loss": loss_sum.item(), "diffusion": d, "sequential": s, "lr": lr, "tok_s": tok_s})
            if flags[1]:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                checkpoint()
                bar.close()
                name = signal.Signals(caught[0]).name if caught else "a signal"
                say(f"caught {name} at step {iter_num}: saved {ckpt_path}; continue with --init_from=resume")
                return 128 + (caught[0] if caught else signal.SIGTERM)
        bar.close()
        say(f"done: {iter_num} iterations, best val NELBO {best_val:.4f} (perplexity {math.exp(min(best_val, 700)):.4g}); "
            f"checkpoint in {ckpt_path}. Sample with: python sample.py --out_dir={out}")
        return 0

    # signals: finish the current iteration, save, exit (handlers restored on the way out)
    caught = []
    previous = {sig: signal.signal(sig, lambda signum, frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return train_loop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cli(main, prog, argv=None):
    """Run main(argv) as a script: a user error is one line and exit status 2, a diverged run 1."""
    try:
        code = main(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        code = 2
    except Diverged as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was saved", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # output piped into head, say
        sys.stderr.close()
        code = 1
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    sys.exit(code)


if __name__ == "__main__":
    cli(main, "train.py")
