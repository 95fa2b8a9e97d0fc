#!/usr/bin/env python
"""
Run nanoGPT's own, unmodified train.py with config_prose.py on the CPU, capture its stdout line by
line with a timestamp, and convert it to a list of records (nanogpt.json).

  python results/nanogpt/run_nanogpt.py                   # the full run: 2,400 iterations
  python results/nanogpt/run_nanogpt.py --max_iters=40 --eval_interval=20 --eval_iters=5 \
      --work=out/nanogpt/short                            # a short check
  python results/nanogpt/run_nanogpt.py --parse=out/nanogpt/out-nanogpt/stdout.tsv --json=/tmp/nanogpt.json
                                                          # re-parse a captured run, no training

nanoGPT's checkout: $NANOGPT, or results/nanogpt/src (git clone https://github.com/karpathy/nanoGPT there;
the comparison was made with 3adf61e). Nothing is written into it: nanoGPT runs from --work, where
this script links its configurator.py and data/python_prose/ (nanoGPT reads both relative to its
working directory).

Flags of this script: --work (default out/nanogpt under the repository), --json (default
work/nanogpt.json), --data (default the repository's data/python_prose), --parse. Every other
--key=value goes to nanoGPT's configurator after config_prose.py (so it wins), and --device=cpu
--compile=False --dtype=float32 are always passed. --out_dir defaults to work/out-nanogpt.
lr_decay_iters follows --max_iters unless given (ours decays to min_lr at max_iters). With --parse,
the flags of the captured command (its "# cmd:" line) come first, so the config is the run's own.

Records (nanogpt.json, sorted by iter), numbered as our train.py numbers its log.jsonl:
  iter        number of optimizer updates. A train record at iter N holds the loss of the batch
              of update N (nanoGPT prints it as "iter N-1": it counts from 0); a val record at
              iter N was measured after N updates ("step N" in nanoGPT's output, the same in ours).
  train_loss  nanoGPT's loss.item() of that one batch (mean cross-entropy over B x L targets, nats)
  val_loss    at evals: mean of eval_iters random val batches (estimate_loss); also eval_train_loss
  wall_s      training seconds since the start of the loop, evals excluded: the sum of nanoGPT's own
              per-iteration "time ...ms" (dt), less the eval inside the iterations that ran one
  step_ms     this update's training time (dt less any eval), eval_s the eval's time (from line stamps)
The first update (iter 1) includes first-call warm-up, as ours does. nanoGPT runs one update more
than max_iters (it stops when iter_num > max_iters), after the last eval: that record is dropped
and reported in nanogpt_meta.json. Checkpoint writes (torch.save, right after an eval) cannot be
told apart from the next update in the stamps, so they stay inside that update's step_ms.
"""

import ast
import importlib.util
import json
import os
import pickle
import re
import shlex
import statistics
import subprocess
import sys
import time
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

HERE = Path(__file__).resolve().parent  # results/nanogpt
REPO = Path(__file__).resolve().parents[2]  # the repository root (our train.py, data/)
NANOGPT = Path(os.environ.get("NANOGPT") or HERE / "src").resolve()  # nanoGPT's checkout, untouched
WORK = REPO / "out" / "nanogpt"  # default work folder: nanoGPT's working directory, all outputs
CONFIG = HERE / "config_prose.py"
FORCED = ["--device=cpu", "--compile=False", "--dtype=float32"]

ITER_RE = re.compile(r"^iter (\d+): loss (\S+), time ([\d.]+)ms, mfu (\S+)%")
STEP_RE = re.compile(r"^step (\d+): train loss (\S+), val loss (\S+)")


def die(msg, prog=None):
    print(f"{prog or Path(sys.argv[0]).name}: {msg}", file=sys.stderr)
    sys.exit(2)


def check_nanogpt():
    """die() with how to get it unless $NANOGPT (or results/nanogpt/src) holds nanoGPT's checkout."""
    missing = [
        f for f in ("train.py", "model.py", "configurator.py") if not (NANOGPT / f).is_file()
    ]
    if missing:
        die(
            f"no nanoGPT checkout at {NANOGPT} (missing {', '.join(missing)}): run `git clone "
            f"https://github.com/karpathy/nanoGPT results/nanogpt/src` in the repository, or set NANOGPT=/path/to/it"
        )


def nanogpt_model():
    """nanoGPT's model.py as a module (no bytecode written into its checkout)."""
    check_nanogpt()
    sys.dont_write_bytecode = True
    spec = importlib.util.spec_from_file_location("nanogpt_model", NANOGPT / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def split_args(argv):
    own, passthrough = (
        {
            "work": str(WORK),
            "json": None,
            "data": str(REPO / "data" / "python_prose"),
            "parse": None,
        },
        [],
    )
    for a in argv:
        if not a.startswith("--") or "=" not in a:
            die(f"arguments are --key=value, got {a!r}")
        k, v = a[2:].split("=", 1)
        if k in own:
            own[k] = v
        else:
            passthrough.append(a)
    return own, passthrough


def effective_config(passthrough):
    """What nanoGPT will run with: its train.py defaults are all overridden by config_prose.py for
    the keys we care about, then the flags (literal_eval, as configurator.py does)."""
    cfg = {}
    exec(compile(CONFIG.read_text(), CONFIG.name, "exec"), {}, cfg)
    for a in passthrough + FORCED:
        k, v = a[2:].split("=", 1)
        try:
            cfg[k] = ast.literal_eval(v)
        except (SyntaxError, ValueError):
            cfg[k] = v
    return cfg


def prepare_work(work, src, dataset):
    """In the work folder: data/<dataset>/{train,val}.bin as symlinks to our bytes, meta.pkl
    {'vocab_size': 256}, and configurator.py linked to nanoGPT's (train.py exec()s it from there)."""
    src = Path(src)
    meta_json = src / "meta.json"
    if not meta_json.exists():
        die(f"{meta_json} is missing: run `python data/prepare.py` in the repository first")
    meta = json.loads(meta_json.read_text())
    if (
        meta.get("tokenizer") != "bytes"
        or meta.get("vocab_size") != 256
        or meta.get("dtype") != "uint16"
    ):
        die(f"{meta_json} is not the uint16 byte corpus nanoGPT expects: {meta}")
    dst = work / "data" / dataset
    dst.mkdir(parents=True, exist_ok=True)
    for link, target in [(dst / n, src.resolve() / n) for n in ("train.bin", "val.bin")] + [
        (work / "configurator.py", NANOGPT / "configurator.py")
    ]:
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    with open(dst / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 256}, f)
    return meta


def param_counts(cfg):
    """nanoGPT's GPT built from its model.py with this config (its constructor's print silenced)."""
    import torch

    mod = nanogpt_model()
    conf = mod.GPTConfig(
        block_size=cfg["block_size"],
        vocab_size=256,
        n_layer=cfg["n_layer"],
        n_head=cfg["n_head"],
        n_embd=cfg["n_embd"],
        dropout=cfg["dropout"],
        bias=cfg["bias"],
    )
    with redirect_stdout(StringIO()):
        torch.manual_seed(0)
        m = mod.GPT(conf)
    total = sum(p.numel() for p in m.parameters())  # the tied wte/lm_head matrix counted once
    return {
        "total": total,
        "non_embedding_as_nanogpt_prints": m.get_num_params(),
        "wte_tied_with_lm_head": m.transformer.wte.weight.numel(),
        "wpe": m.transformer.wpe.weight.numel(),
    }


def loadavg():
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def cpu_busy_s():
    """CPU seconds the whole machine has spent busy (all cores, /proc/stat), or None."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return (sum(f[:8]) - f[3] - f[4]) / os.sysconf(
            "SC_CLK_TCK"
        )  # all but idle and iowait; guest is in user
    except (OSError, ValueError, IndexError):
        return None


def other_load(busy0, child0, wall):
    """CPU seconds used by everything but our child process while it ran, and that as cores."""
    import resource

    busy1 = cpu_busy_s()
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = ru.ru_utime + ru.ru_stime - child0
    if busy0 is None or busy1 is None:
        return {"child_cpu_s": child}
    other = max(0.0, busy1 - busy0 - child)
    return {
        "child_cpu_s": child,
        "other_cpu_s": other,
        "other_cores": other / wall if wall else None,
    }


def run(cmd, raw_path, cwd):
    """Run cmd in cwd; echo and stamp every line of its stdout+stderr into raw_path (seconds\\tline).
    No bytecode is written (PYTHONDONTWRITEBYTECODE=1): neither checkout gets a __pycache__."""
    import resource

    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, child0 = cpu_busy_s(), ru.ru_utime + ru.ru_stime
    t_start = time.perf_counter()
    lines = []
    with open(raw_path, "w") as raw:
        raw.write(
            f"# cmd: {shlex.join(map(str, cmd))}\n# cwd: {cwd}\n"
            f"# started: {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        )
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=env,
        )
        try:
            for line in proc.stdout:
                t = time.perf_counter() - t_start
                line = line.rstrip("\n")
                lines.append((t, line))
                raw.write(f"{t:.6f}\t{line}\n")
                print(line, flush=True)
            rc = proc.wait()
        except KeyboardInterrupt:  # the child got the Ctrl-C too: keep what it printed
            rc = proc.wait()
        t_end = time.perf_counter() - t_start
        raw.write(f"# exit {rc} after {t_end:.3f} s\n")
    run.other = other_load(busy0, child0, t_end)
    if run.other.get("other_cores", 0) > 0.1:
        print(
            f"warning: other processes used {run.other['other_cores']:.2f} cores on average during this run "
            "(machine not quiet): its timings include their interference",
            file=sys.stderr,
            flush=True,
        )
    return rc, lines, t_end


def read_raw(raw_path):
    """(stamped lines, process seconds, header) of a stdout.tsv written by run(); header: cmd, cwd, started."""
    lines, t_end, header = [], None, {}
    for row in Path(raw_path).read_text().splitlines():
        if row.startswith("# exit"):
            t_end = float(row.split()[-2])
        elif row.startswith("# ") and ": " in row:
            k, _, v = row[2:].partition(": ")
            header[k] = v
        elif not row.startswith("#"):
            t, _, line = row.partition("\t")
            lines.append((float(t), line))
    return lines, t_end, header


def parse(lines, cfg):
    """Records (see the module docstring) and a summary from stamped nanoGPT output lines."""
    iters, evals = {}, {}  # nanoGPT's own numbering: iters[k] for "iter k", evals[k] for "step k"
    prev_t = None  # stamp of the last line before the current one
    eval_start = {}  # k -> stamp of the line printed just before eval k started
    params_printed = None
    for t, line in lines:
        m = ITER_RE.match(line)
        s = STEP_RE.match(line)
        if m:
            iters[int(m[1])] = {"loss": float(m[2]), "dt_ms": float(m[3]), "t": t}
        elif s:
            k = int(s[1])
            evals[k] = {"train": float(s[2]), "val": float(s[3]), "t": t}
            eval_start[k] = prev_t if prev_t is not None else t
        elif line.startswith("number of parameters:"):
            params_printed = line.split(":", 1)[1].strip()
        prev_t = t
    if not iters:
        raise ValueError("no 'iter N: loss ..., time ...ms' lines in nanoGPT's output")
    max_iters = cfg["max_iters"]
    records, wall, step_times, eval_total, extra = {}, 0.0, [], 0.0, None
    for k in sorted(iters):
        rec = iters[k]
        eval_s = evals[k]["t"] - eval_start[k] if k in evals else 0.0
        step_s = rec["dt_ms"] / 1000 - eval_s
        if k in evals:  # eval k ran inside iteration k, before its update
            ev = evals[k]
            eval_total += eval_s
            records.setdefault(k, {"iter": k}).update(
                val_loss=ev["val"], eval_train_loss=ev["train"], wall_s=wall, eval_s=eval_s
            )
        if k >= max_iters:  # nanoGPT's extra update after the final eval
            extra = {"nanogpt_iter": k, "train_loss": rec["loss"], "step_ms": step_s * 1000}
            continue
        wall += step_s
        step_times.append(step_s)
        r = records.setdefault(k + 1, {"iter": k + 1})
        r.update(train_loss=rec["loss"], wall_s=wall, step_ms=step_s * 1000, dt_ms=rec["dt_ms"])
    for k, ev in evals.items():  # an eval with no update after it (a run cut short)
        if k not in iters:
            records.setdefault(k, {"iter": k}).update(
                val_loss=ev["val"], eval_train_loss=ev["train"], wall_s=wall, eval_s=None
            )
    out = [records[i] for i in sorted(records)]
    for r in out:  # iter 0 (and a cut-short eval) has a val loss and no update
        r.setdefault("train_loss", None)
    n = len(step_times)
    tokens_per_iter = cfg["batch_size"] * cfg["block_size"] * cfg["gradient_accumulation_steps"]
    summary = {
        "updates": n,
        "train_s": wall,
        "eval_s_total": eval_total,
        "tokens_per_iter": tokens_per_iter,
        "tokens_per_s": n * tokens_per_iter / wall if wall else None,
        "median_step_ms": 1000 * statistics.median(step_times) if step_times else None,
        "median_step_ms_after_first_10": 1000 * statistics.median(step_times[10:])
        if n > 10
        else None,
        "first_step_ms": 1000 * step_times[0] if step_times else None,
        "params_printed_by_nanogpt": params_printed,
        "extra_update_after_final_eval": extra,
        "first_line_s": lines[0][0] if lines else None,
        "loop_start_s": eval_start.get(
            0
        ),  # stamp of the last setup line before the loop (eval 0 follows)
    }
    return out, summary


def git(path, *args):
    r = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def fmt_num(x, spec=",.0f"):
    return "-" if x is None else format(x, spec)


def main(argv):
    own, passthrough = split_args(argv)
    check_nanogpt()
    work = Path(own["work"]).resolve()
    header = {}
    if own["parse"]:  # the captured run's own flags first (its "# cmd:" line), then these
        raw_path = Path(own["parse"]).resolve()
        if not raw_path.is_file():
            die(f"--parse: no such file {raw_path}")
        lines, t_end, header = read_raw(raw_path)
        ran = [a for a in shlex.split(header.get("cmd", "")) if a.startswith("--") and "=" in a]
        passthrough = [a for a in ran if a not in FORCED] + passthrough
    keys = {a[2:].split("=", 1)[0] for a in passthrough}
    out_dir = work / "out-nanogpt"
    for a in passthrough:
        if a.startswith("--out_dir="):
            out_dir = Path(a.split("=", 1)[1])
    out_dir = out_dir.resolve()  # nanoGPT gets it absolute: it runs from the work folder
    passthrough = [a for a in passthrough if not a.startswith("--out_dir=")] + [
        f"--out_dir={out_dir}"
    ]
    if "max_iters" in keys and "lr_decay_iters" not in keys:
        max_iters = [a for a in passthrough if a.startswith("--max_iters=")][-1].split("=", 1)[1]
        passthrough.append(f"--lr_decay_iters={max_iters}")
    cfg = effective_config(passthrough)
    if cfg["lr_decay_iters"] != cfg["max_iters"]:
        print(
            f"warning: lr_decay_iters={cfg['lr_decay_iters']} != max_iters={cfg['max_iters']}: ours decays to "
            "min_lr at max_iters",
            file=sys.stderr,
        )
    json_path = Path(own["json"]).resolve() if own["json"] else work / "nanogpt.json"

    if own["parse"]:
        rc, cmd, load_before = None, None, None
    else:
        prepare_work(work, own["data"], cfg["dataset"])
        out_dir.mkdir(parents=True, exist_ok=True)
        raw_path = out_dir / "stdout.tsv"
        cmd = [sys.executable, "-u", str(NANOGPT / "train.py"), str(CONFIG), *passthrough, *FORCED]
        print("$ cd", work, "&&", shlex.join(cmd[1:]), flush=True)
        load_before = loadavg()
        if load_before and load_before[0] > 0.5:
            print(
                f"warning: load average {load_before[0]:.2f} before the run: other work on this machine will "
                "distort the timings",
                file=sys.stderr,
                flush=True,
            )
        rc, lines, t_end = run(cmd, raw_path, cwd=work)
        if rc != 0:
            print(f"nanoGPT exited with status {rc}; parsing what it printed", file=sys.stderr)
    try:
        records, summary = parse(lines, cfg)
    except ValueError as e:
        die(f"{raw_path}: {e}")
    summary["process_s"] = t_end
    import torch

    dirty = git(NANOGPT, "status", "--porcelain", "--untracked-files=no")
    meta = {
        "source": "karpathy/nanoGPT, run unmodified",
        "nanogpt_commit": git(NANOGPT, "rev-parse", "HEAD"),
        "nanogpt_uncommitted_changes": dirty.splitlines()
        if dirty
        else ([] if dirty == "" else None),
        "cmd": cmd,
        "cwd": str(work) if cmd else header.get("cwd"),
        "exit_status": rc,
        "raw_log": str(raw_path),
        "config": {k: v for k, v in cfg.items() if isinstance(v, (int, float, str, bool))},
        "eval": f"estimate_loss: eval_iters={cfg['eval_iters']} batches of {cfg['batch_size']} random windows "
        "from val (and as many from train), drawn afresh at each eval from the global torch RNG",
        "params": param_counts(cfg),
        "summary": summary,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": loadavg() if cmd else None,
        "other_processes": getattr(run, "other", None) if cmd else None,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(records, indent=1) + "\n")
    meta_path = json_path.with_name(json_path.stem + "_meta.json")
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    tps = summary["tokens_per_s"]
    print(
        f"wrote {json_path} ({len(records)} records) and {meta_path}: {summary['updates']} updates in "
        f"{summary['train_s']:.2f} s of training ({fmt_num(tps)} tokens/s), evals {summary['eval_s_total']:.2f} s, "
        f"process {fmt_num(t_end, '.2f')} s"
    )
    return 0 if rc in (0, None) else rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
