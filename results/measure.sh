#!/usr/bin/env bash
# Re-measures what RESULTS.md reports, on this version, and draws its figures: every number there
# comes from a file this script writes under results/. Parts, in order (all by default; or name some):
#   train      the models, each with the defaults of `python train.py` (the README's run) but alpha_0
#              and the variant: B at alpha_0 = 0, 0.0625 (= the defaults), 0.125, 0.25, 0.5 and 1
#              (low_var, the paper's choice there), A at 0.25 and 1 (low_var). Logs ->
#              results/runs/NAME.jsonl, wall-clock seconds -> results/runs/times.jsonl.
#   table1     the paper's Table 1: a full validation pass of each (NELBO), and the IW bound at
#              K = 1, 10, 100 (B models): python -m paper.likelihood -> results/table1.jsonl.
#   quality    Tables 13-15: the alpha_0 = 1, 0.25 and 0.0625 models sampled at alpha_0 1, 0.5, 0.25,
#              T 16 to 1024, random and block order, 64 samples each, judged by the alpha_0 = 0 model
#              (python -m paper.evaluate --ar_judge) -> results/quality.jsonl.
#   frontier   the speed-quality frontier beside BD3-LMs and MDLM (Fig. 4, Table 15): seven models
#              trained alike, sampled over NFE, judged by the AR one: python -m paper.frontier
#              train, then sample -> results/frontier.jsonl.
#   diffusion  the README's "A model for diffusion": the default model (b0.0625) and one trained for
#              diffusion (frontier's eso_1, alpha_0 = 1), both sampled at alpha_0 = 1: the word shares
#              at T = 16, 64, 1024 (5 seeds, the default sampling), then the AR judge's gen PPL at
#              T = 16, 64, 1e6 (64 samples, nucleus 0.9, temperature 1) -> results/diffusion.jsonl.
#   reference  the quality grid's yardsticks: the judge's own samples and windows of the validation
#              text, scored alike -> results/reference.jsonl.
#   default    what `python sample.py`, its --show_steps view and `python -m paper.evaluate --seeds=21`
#              print for the default run -> results/default_*.
#   zero_shot  Table 5's path end to end: a small GPT-2-token model trained on python_prose, scored on
#              local copies of the eight zero-shot sets (results/zero_shot_fixtures.py) in a full pass
#              -> results/zero_shot.jsonl. Needs GPT-2's BPE files and `datasets`.
#   bench      `python -m paper.bench --lengths=1024,2048` (Table 11's five rows, the decode extras,
#              training) -> results/bench.json; L = 8192, one run a case -> results/bench_8192.json;
#              --batch=16 (Table 13's time column) -> results/bench_batch.json.
#   figures    python -m results.figures: assets/*.png from the files above (needs matplotlib).
# Run it on an otherwise idle machine: the seconds it records are the machine's. The side-by-side with
# nanoGPT needs a clone of it and runs apart: python -m results.nanogpt.compare --publish.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-out/results}
parts=${*:-train table1 quality reference default zero_shot frontier diffusion bench figures}
json() {  # COMMAND...: run it with --json=FILE, and print FILE's record on one line
    local file; file=$(mktemp)
    "$@" --json="$file" > /dev/null
    python -c "import json, sys; print(json.dumps(json.load(open(sys.argv[1]))))" "$file"
    rm -f "$file"
}
want() { [[ " $parts " == *" $1 "* ]]; }
mkdir -p "$runs" results/runs

train() {  # NAME FLAGS...: a model, trained unless its checkpoint exists
    local name=$1 t0=$SECONDS; shift
    [ -f "$runs/$name/ckpt.pt" ] && return
    python train.py --out_dir="$runs/$name" "$@"
    cp "$runs/$name/log.jsonl" "results/runs/$name.jsonl"
    echo "{\"name\": \"$name\", \"flags\": \"$*\", \"wall_s\": $((SECONDS - t0))}" >> results/runs/times.jsonl
}
if want train; then
    train b0.0625  # the defaults, as a new user runs them
    train b0 --alpha_0=0
    train b0.125 --alpha_0=0.125
    train b0.25 --alpha_0=0.25
    train b0.5 --alpha_0=0.5
    train b1 --alpha_0=1 --loss_type=low_var
    train a0.25 --variant=A --alpha_0=0.25
    train a1 --variant=A --alpha_0=1 --loss_type=low_var
fi
if want table1; then
    : > results/table1.jsonl
    for m in b0 b0.0625 b0.125 b0.25 b0.5 b1; do
        for K in 1 10 100; do
            json python -m paper.likelihood --out_dir="$runs/$m" --num_orders=$K >> results/table1.jsonl
        done
    done
    for m in a0.25 a1; do json python -m paper.likelihood --out_dir="$runs/$m" >> results/table1.jsonl; done
fi
if want quality; then
    : > results/quality.jsonl
    for m in b1 b0.25 b0.0625; do
        for a in 1 0.5 0.25; do
            for T in 16 64 256 1024; do
                for block in False True; do
                    json python -m paper.evaluate --out_dir="$runs/$m" --ar_judge="$runs/b0" --alpha_0=$a --steps=$T \
                        --top_p=0.9 --temperature=1 --num_samples=64 --block_order=$block >> results/quality.jsonl
                done
            done
        done
    done
fi
if want reference; then
    json python -m paper.evaluate --out_dir="$runs/b0" --ar_judge="$runs/b0" --alpha_0=0 --top_p=0.9 \
        --temperature=1 --num_samples=64 > results/reference.jsonl
    python -m results.reference_text "$runs/b0/ckpt.pt" >> results/reference.jsonl
fi
if want default; then
    python sample.py --out_dir="$runs/b0.0625" --num_samples=8 > results/default_samples.txt
    python sample.py --out_dir="$runs/b0.0625" --show_steps=True --num_samples=1 --alpha_0=0.5 --steps=16 \
        > results/default_steps.txt
    json python -m paper.evaluate --out_dir="$runs/b0.0625" --seeds=21 > results/default_eval.json
fi
if want zero_shot; then  # needs GPT-2's BPE files (tiktoken downloads them, or TIKTOKEN_CACHE_DIR) and datasets
    zs="$runs/zero_shot"
    rm -rf "$zs" && mkdir -p "$zs"
    python -m results.zero_shot_fixtures "$zs/raw"
    ESO_DATA_DIR="$zs/data" python data/prepare.py --tokenizer gpt2 --name prose_gpt2
    model=(--dataset=prose_gpt2 --block_size=64 --n_layer=2 --n_head=2 --n_embd=64 --batch_size=8)
    ESO_DATA_DIR="$zs/data" python train.py --out_dir="$zs/model" "${model[@]}" --alpha_0=0.25 \
        --max_iters=600 --warmup_iters=50 --eval_interval=200 --eval_iters=10
    : > results/zero_shot.jsonl
    for set in prose_gpt2 ptb wikitext2 wikitext103 lm1b_gpt2 lambada ag_news pubmed arxiv; do
        if [ "$set" != prose_gpt2 ]; then
            ESO_DATA_DIR="$zs/data" python data/prepare.py --dataset=$set --raw_dir="$zs/raw/$set" --block_size=64
        fi
        ESO_DATA_DIR="$zs/data" json python -m paper.likelihood --out_dir="$zs/model" --dataset=$set \
            >> results/zero_shot.jsonl
    done
fi
if want frontier; then
    python -m paper.frontier train
    python -m paper.frontier sample
fi
if want diffusion; then  # the default model and part frontier's eso_1 (trained at alpha_0 = 1) at alpha_0 = 1
    : > results/diffusion.jsonl
    for model in "$runs/b0.0625" out/frontier/eso_1; do
        for T in 16 64 1024; do
            json python -m paper.evaluate --out_dir="$model" --alpha_0=1 --steps=$T --seeds=5 \
                >> results/diffusion.jsonl
        done
    done
    for model in "$runs/b0.0625" out/frontier/eso_1; do
        for T in 16 64 1000000; do
            json python -m paper.evaluate --out_dir="$model" --ar_judge=out/frontier/ar --alpha_0=1 --steps=$T \
                --num_samples=64 --top_p=0.9 --temperature=1 --quiet=True >> results/diffusion.jsonl
        done
    done
fi
if want bench; then  # compiling from a cold cache
    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python -m paper.bench --lengths=1024,2048 --json=results/bench.json
    python -m paper.bench --lengths=8192 --repeats=1 --decode=False --train_alphas= --json=results/bench_8192.json
    python -m paper.bench --batch=16 --table11=False --decode=False --train_alphas= --json=results/bench_batch.json
fi
if want figures; then
    python -m results.figures
fi
