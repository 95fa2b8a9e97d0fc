"""
The speed-quality frontier at this scale (the paper's Fig. 4 and 17, Tables 13-15): seven models
of one size, trained alike on the default corpus, each sampled over a range of NFE and scored by
the offline judge, the AR model.

  python -m paper.frontier train      # the seven models into out/frontier/NAME (~1.5 h on 2 cores)
  python -m paper.frontier sample     # every cell of the grid -> results/frontier.jsonl
  python -m paper.frontier table      # the table of RESULTS.md, from results/frontier.jsonl
  python -m results.figures           # then assets/frontier.png among the figures

The models, all the default run's size and recipe (4 x 128, L = 128, 2,400 iterations of 16
sequences, the same data order and schedule):
  ar         Eso-LM at alpha_0 = 0, an AR model: python train.py --alpha_0=0 (also the judge)
  eso_1      Eso-LM (B) at alpha_0 = 1 (low_var, the paper's choice there)
  eso_0.25   Eso-LM (B) at alpha_0 = 0.25
  eso_0.125  Eso-LM (B) at alpha_0 = 0.125
  mdlm       MDLM: python -m paper.train_bd3lm --block_len=128 (one block)
  bd3_4      BD3-LM with L' = 4
  bd3_16     BD3-LM with L' = 16
Each cell: 64 samples at the paper's nucleus 0.9 and temperature 1, one seed; the judge's
generative perplexity (its exact NLL per byte of the samples, as paper.evaluate --ar_judge
computes it), the mean unigram entropy, the NFE and the seconds to draw the 64.
"""

import json
import subprocess
import sys
from pathlib import Path

import cli

ROOT = Path(__file__).resolve().parent.parent
RUNS = Path("out/frontier")
RECORDS = ROOT / "results" / "frontier.jsonl"
BIG_T = 10**6  # about one token a step
MODELS = {
    "ar": ["train.py", "--alpha_0=0"],
    "eso_1": ["train.py", "--alpha_0=1", "--loss_type=low_var"],
    "eso_0.25": ["train.py", "--alpha_0=0.25"],
    "eso_0.125": ["train.py", "--alpha_0=0.125"],
    "mdlm": ["-m", "paper.train_bd3lm", "--block_len=128"],
    "bd3_4": ["-m", "paper.train_bd3lm", "--block_len=4"],
    "bd3_16": ["-m", "paper.train_bd3lm", "--block_len=16"],
}
# (model, sampling-time alpha_0 or None, the steps): T for Eso-LM and MDLM, T' a block for BD3-LM
GRID = [("ar", 0.0, 128)]
GRID += [("mdlm", None, T) for T in (8, 16, 32, 64, 128, BIG_T)]
GRID += [("bd3_4", None, T) for T in (1, 2, 4, BIG_T)]
GRID += [("bd3_16", None, T) for T in (1, 2, 4, 8, 16, BIG_T)]
GRID += [("eso_1", 1.0, T) for T in (8, 16, 32, 64, 128, BIG_T)]
GRID += [("eso_1", a, T) for a in (0.5, 0.25, 0.125) for T in (16, BIG_T)]  # Remark 2
GRID += [
    (name, a, T) for name, a in (("eso_0.25", 0.25), ("eso_0.125", 0.125)) for T in (16, BIG_T)
]
SAMPLING = ["--num_samples=64", "--top_p=0.9", "--temperature=1", "--quiet=True"]


def train():
    """Train every model not trained yet, each in its own process."""
    for name, command in MODELS.items():
        out = RUNS / name
        if (out / "ckpt.pt").is_file():
            print(f"{out} is trained already")
            continue
        print(f"training {name}: python {' '.join(command)} --out_dir={out}", flush=True)
        subprocess.run([sys.executable, *command, f"--out_dir={out}"], cwd=ROOT, check=True)


def sample():
    """Every cell of the grid, scored by the AR model: one JSON line each in RECORDS."""
    judge = RUNS / "ar"
    lines = []
    for name, alpha_0, steps in GRID:
        flags = [f"--out_dir={RUNS / name}", f"--ar_judge={judge}", f"--steps={steps}"]
        if alpha_0 is not None:
            flags.append(f"--alpha_0={alpha_0}")
        scores = RUNS / "cell.json"
        command = [sys.executable, "-m", "paper.evaluate", *flags, *SAMPLING, f"--json={scores}"]
        subprocess.run(command, cwd=ROOT, check=True)
        result = json.loads(scores.read_text())
        run = result["runs"][0]
        cell = {"model": name, "alpha_0": alpha_0, "steps": steps, "nfe": run["nfe"]}
        cell |= {"gen_ppl": run["gen_ppl"], "entropy": run["entropy"], "seconds": run["seconds"]}
        cell |= {"words3": run.get("words3")}
        print(json.dumps(cell), flush=True)
        lines.append(json.dumps(cell))
    RECORDS.write_text("\n".join(lines) + "\n")


def table():
    """The grid as the markdown table of RESULTS.md."""
    cells = [json.loads(line) for line in RECORDS.read_text().splitlines() if line.strip()]
    print(
        "| model | sampling alpha_0 | T (BD3-LM: T' a block) | NFE | gen PPL | entropy | s / 64 |"
    )
    print("|---|---|---|---|---|---|---|")
    for c in cells:
        alpha_0 = "" if c["alpha_0"] is None else c["alpha_0"]
        steps = "10^6" if c["steps"] == BIG_T else c["steps"]
        print(
            f"| {c['model']} | {alpha_0} | {steps} | {c['nfe']} | {c['gen_ppl']:.2f} | "
            f"{c['entropy']:.2f} | {c['seconds']:.2f} |"
        )


def main(argv):
    parts = {"train": train, "sample": sample, "table": table}
    if len(argv) != 1 or argv[0] not in parts:
        raise cli.UserError(f"give one of {', '.join(parts)} (see --help)")
    parts[argv[0]]()
    return 0


if __name__ == "__main__":
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__.strip())
        sys.exit(0)
    cli.run(main, "python -m paper.frontier", sys.argv[1:])
