#!/usr/bin/env python
"""
Run our train.py at alpha_0 = 0 (the AR special case) for the side-by-side with nanoGPT, and keep
a stamped copy of its output. It writes only under --out_dir (and nothing in the code folder:
PYTHONDONTWRITEBYTECODE=1).

  python results/nanogpt/run_eso.py                  # the full run: out_dir out/nanogpt/eso_a0
  python results/nanogpt/run_eso.py --max_iters=40 --eval_interval=20 --eval_iters=5 --out_dir=out/nanogpt/short/eso_a0
  python results/nanogpt/run_eso.py --code=/path/to/another/checkout ...

Flags of this script: --code (default this repository). Every other --key=value goes to train.py,
after --alpha_0=0 --device=cpu --dtype=float32 --compile=False; --log_interval defaults to 1 here
(every iteration, as nanoGPT's run logs), --out_dir to out/nanogpt/eso_a0 under the repository
(relative paths are taken from the current directory). train.py appends to out_dir/log.jsonl, so
an out_dir that already holds one is refused: pick a fresh one.

Writes out_dir/stdout.tsv (seconds since launch \\t line) and out_dir/run_meta.json: the command,
the code's git commit and whether its tracked files had uncommitted edits, process seconds, time to
the first iteration, each eval's seconds (from the stamps), load average before and after.
"""

import json
import os
import sys
import time
from pathlib import Path

import run_nanogpt as rn


def main(argv):
    code, passthrough = rn.REPO, []
    for a in argv:
        if not a.startswith("--") or "=" not in a:
            rn.die(f"arguments are --key=value, got {a!r}")
        k, v = a[2:].split("=", 1)
        if k == "code":
            code = Path(v).resolve()
        elif k == "alpha_0" and v not in ("0", "0.0", "0."):
            rn.die(f"this comparison is at --alpha_0=0 (the AR case), not {v}")
        elif k in ("device", "dtype", "compile"):
            rn.die(f"--{k} is fixed here (cpu, float32, no compile): the same as nanoGPT's run")
        else:
            passthrough.append(a)
    keys = {a[2:].split("=", 1)[0] for a in passthrough}
    out_dir = rn.WORK / "eso_a0"
    for a in passthrough:
        if a.startswith("--out_dir="):
            out_dir = Path(
                a.split("=", 1)[1]
            ).resolve()  # absolute: train.py runs from the code folder
    passthrough = [a for a in passthrough if not a.startswith("--out_dir=")] + [
        f"--out_dir={out_dir}"
    ]
    if "log_interval" not in keys:
        passthrough.append("--log_interval=1")
    if (out_dir / "log.jsonl").exists():
        rn.die(
            f"{out_dir / 'log.jsonl'} exists (train.py appends to it): use a fresh --out_dir or remove it"
        )
    if not (code / "train.py").exists():
        rn.die(f"no train.py in {code}")
    out_dir.mkdir(parents=True, exist_ok=True)

    commit = rn.git(code, "rev-parse", "HEAD")
    dirty = rn.git(code, "status", "--porcelain", "--untracked-files=no")
    cmd = [
        sys.executable,
        "-u",
        "train.py",
        "--alpha_0=0",
        "--device=cpu",
        "--dtype=float32",
        "--compile=False",
        *passthrough,
    ]
    print("$ cd", code, "&&", " ".join(cmd[1:]), flush=True)
    load_before = rn.loadavg()
    if load_before and load_before[0] > 0.5:
        print(
            f"warning: load average {load_before[0]:.2f} before the run: other work on this machine will "
            "distort the timings",
            file=sys.stderr,
            flush=True,
        )
    raw_path = out_dir / "stdout.tsv"
    rc, lines, t_end = rn.run(cmd, raw_path, cwd=code)

    first_iter, evals, prev = None, {}, None
    for t, line in lines:
        if line.startswith("iter ") and first_iter is None:
            first_iter = t
        if line.startswith("step ") and ": val NELBO" in line and prev is not None:
            evals[int(line.split()[1].rstrip(":"))] = t - prev  # from the train line just before it
        prev = t
    import torch

    meta = {
        "cmd": cmd,
        "cwd": str(code),
        "exit_status": rc,
        "raw_log": str(raw_path),
        "git_commit": commit,
        "uncommitted_tracked_changes": dirty.splitlines()
        if dirty
        else ([] if dirty == "" else None),
        "process_s": t_end,
        "first_iter_line_s": first_iter,
        "eval_s": evals,
        "eval_s_total": sum(evals.values()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": rn.loadavg(),
        "other_processes": getattr(rn.run, "other", None),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (out_dir / "run_meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(
        f"wrote {out_dir / 'log.jsonl'} (train.py), {raw_path} and {out_dir / 'run_meta.json'}: process "
        f"{t_end:.2f} s, evals {meta['eval_s_total']:.2f} s"
        + (f"; code had uncommitted edits: {dirty}" if dirty else "")
    )
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
