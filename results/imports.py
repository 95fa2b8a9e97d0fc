"""
What a default training run imports of the project: each file's lines, and its lines of code
(without docstrings, comments and blank lines). RESULTS.md, "The house".

  python -m results.imports                  # from the repository root, on the prepared corpus
  python -m results.imports --root=../old    # another checkout (ESO_DATA_DIR=data for its data)

It runs `python train.py --max_iters=0` in a fresh process and lists the project's files that
the process has loaded when it exits.
"""

import argparse
import io
import json
import subprocess
import sys
import tempfile
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# run train.py as `python train.py` would, then print the files of every loaded module
REPORT = """
import atexit, json, runpy, sys
files = lambda: [getattr(m, "__file__", None) for m in list(sys.modules.values())]
atexit.register(lambda: print(json.dumps([f for f in files() if f])))
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""

# the tokens that end a statement or open a block: a string right after one is a docstring
STATEMENT_START = {tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}


def code_lines(path):
    """How many lines of the file hold code: not blank, not only a comment, not in a docstring."""
    lines = set()
    previous = tokenize.NEWLINE
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        if token.type in (tokenize.COMMENT, tokenize.NL):
            continue
        is_docstring = token.type == tokenize.STRING and previous in STATEMENT_START
        if token.type not in STATEMENT_START | {tokenize.ENDMARKER} and not is_docstring:
            lines.update(range(token.start[0], token.end[0] + 1))
        previous = token.type
    return len(lines)


def imported_files(root):
    """The project's .py files that `python train.py --max_iters=0` loads, from root."""
    with tempfile.TemporaryDirectory() as out_dir:
        command = [sys.executable, "-c", REPORT, "--max_iters=0", f"--out_dir={out_dir}"]
        run = subprocess.run(command, cwd=root, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"train.py failed in {root}: {run.stderr.strip().splitlines()[-1]}")
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    files = {root / "train.py"}
    for name in loaded:
        path = Path(name).resolve()
        if path.suffix == ".py" and path.is_file() and path.is_relative_to(root):
            files.add(path)
    return sorted(files)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to measure")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    rows = []
    for path in imported_files(root):
        lines = len(path.read_text().splitlines())
        rows.append((str(path.relative_to(root)), lines, code_lines(path)))
    rows.sort(key=lambda row: -row[1])
    print("| file | lines | code |\n|---|---|---|")
    for name, lines, code in rows:
        print(f"| `{name}` | {lines:,} | {code:,} |")
    total_lines = sum(row[1] for row in rows)
    total_code = sum(row[2] for row in rows)
    print(f"| **in all** | **{total_lines:,}** | **{total_code:,}** |")


if __name__ == "__main__":
    main()
