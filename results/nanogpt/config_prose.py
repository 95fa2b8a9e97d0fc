# nanoGPT config matching the Eso-LM default run (train.py at --alpha_0=0) on the python_prose byte
# corpus. run_nanogpt.py runs nanoGPT's train.py with it from a work folder (out/nanogpt by default),
# where it links configurator.py and data/python_prose/ (nanoGPT reads both relative to its working
# directory):
#   python $NANOGPT/train.py /path/to/config_prose.py --device=cpu --compile=False --dtype=float32
# It also keeps lr_decay_iters equal to max_iters when you override --max_iters (nanoGPT applies this
# file before the command-line flags, so a line like `lr_decay_iters = max_iters` here would not see
# the flag).

# I/O
out_dir = "out-prose"  # run_nanogpt.py always sets its own
eval_interval = 400  # ours: --eval_interval=400
eval_iters = 20  # ours: --eval_iters=20 (nanoGPT draws them at random, train and val)
log_interval = 1  # every iteration: nanoGPT's per-iteration time is our wall clock
always_save_checkpoint = (
    True  # ours also checkpoints at every eval (neither side counts it as training time)
)
wandb_log = False

# data: data/python_prose/{train,val}.bin (uint16 bytes 0..255) + meta.pkl {'vocab_size': 256}
dataset = "python_prose"
gradient_accumulation_steps = 1  # ours: 1
batch_size = 16  # ours: --batch_size=16
block_size = 128  # ours: --block_size=128

# model: 4 layers x 128, 4 heads, no dropout, no biases (ours: no biases anywhere)
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
bias = False

# AdamW: lr 3e-3, betas (0.9, 0.99), weight decay 0, grad clip 1.0
learning_rate = 3e-3
max_iters = 2400
weight_decay = 0.0
beta1 = 0.9
beta2 = 0.99
grad_clip = 1.0

# schedule: lr * (it+1)/(warmup+1) for it < 200, then cosine to 3e-4 at 2400 (the same formula as ours)
decay_lr = True
warmup_iters = 200
lr_decay_iters = 2400  # must equal max_iters (ours decays to min_lr at max_iters)
min_lr = 3e-4

# system (also passed on the command line by run_nanogpt.py)
device = "cpu"
dtype = "float32"
compile = False
