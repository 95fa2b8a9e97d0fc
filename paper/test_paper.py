"""Tests of the paper's ring: the authors' formats (paper/formats.py, paper/convert.py), the
full-pass likelihood (paper/likelihood.py), the judge and the scoring of samples (paper/judge.py,
paper/evaluate.py) and the speed bench (paper/bench.py). `pytest paper`; the optional extras
(transformers, omegaconf, safetensors, huggingface_hub) are needed where a test says so."""

import collections
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import checkpoint
import cli
import eso
import sample
from data import common
from paper import bd3lm, bench, convert, evaluate, formats, judge, likelihood

ROOT = Path(__file__).resolve().parent.parent


def gen(seed, device="cpu"):
    return torch.Generator(device).manual_seed(seed)


# ======================================================================== paper/formats.py
# Their network folded into ours, checked against a DiT written from its equations


def reference_dit(V=11, C=32, H=4, n_layer=2, cond=16, seed=0):
    """A state dict in the layout of the authors' EsoLMDiT, random everywhere (adaLN included)."""
    g = gen(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    head_dim = C // H
    sd = {
        "vocab_embed.embedding": r(V + 1, C),
        "sigma_map.mlp.0.weight": r(cond, 256),
        "sigma_map.mlp.0.bias": r(cond),
        "sigma_map.mlp.2.weight": r(cond, cond),
        "sigma_map.mlp.2.bias": r(cond),
        "rotary_emb.inv_freq": 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim),
        "output_layer.norm_final.weight": 1 + r(C),
        "output_layer.adaLN_modulation.weight": r(2 * C, cond),
        "output_layer.adaLN_modulation.bias": r(2 * C),
        "output_layer.linear.weight": r(V + 1, C),
        "output_layer.linear.bias": r(V + 1),
    }
    for i in range(n_layer):
        block = {
            "norm1.weight": 1 + r(C),
            "attn_qkv.weight": r(3 * C, C),
            "attn_out.weight": r(C, C),
            "norm2.weight": 1 + r(C),
            "mlp.0.weight": r(4 * C, C),
            "mlp.0.bias": r(4 * C),
            "mlp.2.weight": r(C, 4 * C),
            "mlp.2.bias": r(C),
            "adaLN_modulation.weight": r(6 * C, cond),
            "adaLN_modulation.bias": r(6 * C),
        }
        sd |= {f"blocks.{i}.{k}": v for k, v in block.items()}
    return sd


def reference_dit_logits(sd, tokens, pos, mask, H=4):
    """The DiT with adaLN, written from its equations (sigma = 0; rotate-half rotary at pos;
    weight-only LayerNorms; modulate(x) = x (1 + scale) + shift; x += gate * branch): logits
    over V + 1 tokens."""
    C = sd["vocab_embed.embedding"].size(1)
    half = sd["sigma_map.mlp.0.weight"].size(1) // 2
    args = 0.0 * torch.exp(-math.log(10000) * torch.arange(half) / half)  # sigma = 0
    feat = torch.cat([torch.cos(args), torch.sin(args)])
    c = F.silu(F.linear(feat, sd["sigma_map.mlp.0.weight"], sd["sigma_map.mlp.0.bias"]))
    c = F.silu(F.linear(c, sd["sigma_map.mlp.2.weight"], sd["sigma_map.mlp.2.bias"]))
    angles = pos[..., None].float() * sd["rotary_emb.inv_freq"]  # (B, T, d/2)
    cos = torch.cat([angles.cos()] * 2, -1)[:, :, None]
    sin = torch.cat([angles.sin()] * 2, -1)[:, :, None]

    def rotary(t):  # t: (B, T, H, d)
        t1, t2 = t.chunk(2, -1)
        return t * cos + torch.cat([-t2, t1], -1) * sin

    def norm(x, w, shift, scale):
        return F.layer_norm(x, [C]) * w * (1 + scale) + shift

    x = sd["vocab_embed.embedding"][tokens]
    n_layer = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(n_layer):
        b = {k.split(".", 2)[2]: v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
        modulation = F.linear(c, b["adaLN_modulation.weight"], b["adaLN_modulation.bias"])
        sh1, sc1, g1, sh2, sc2, g2 = modulation.chunk(6)
        qkv = F.linear(norm(x, b["norm1.weight"], sh1, sc1), b["attn_qkv.weight"])
        q, k, v = qkv.view(*x.shape[:2], 3, H, -1).unbind(2)  # (B, T, H, d) each
        q = rotary(q).transpose(1, 2)
        k = rotary(k).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), attn_mask=mask)
        x = x + g1 * F.linear(o.transpose(1, 2).flatten(2), b["attn_out.weight"])
        y = F.linear(norm(x, b["norm2.weight"], sh2, sc2), b["mlp.0.weight"], b["mlp.0.bias"])
        y = F.gelu(y, approximate="tanh")
        x = x + g2 * F.linear(y, b["mlp.2.weight"], b["mlp.2.bias"])
    final = sd["output_layer.adaLN_modulation.weight"]
    shift, scale = F.linear(c, final, sd["output_layer.adaLN_modulation.bias"]).chunk(2)
    h = norm(x, sd["output_layer.norm_final.weight"], shift, scale)
    return F.linear(h, sd["output_layer.linear.weight"], sd["output_layer.linear.bias"])


def assert_same_log_probabilities(model, sd):
    """The model's log-probabilities equal the DiT's (written from its equations), causal (the
    diffusion term) and through the 2L mask (the sequential term)."""
    tokens = torch.randint(0, 12, (2, 16), generator=gen(1))  # 11 = [MASK]
    pos = torch.rand(2, 16, generator=gen(2)).argsort(1)
    causal = eso.prefix_lm_mask(torch.arange(16), 16)
    two_l = eso.sequential_mask(causal)
    cases = [
        (tokens, pos, causal),
        (torch.cat([tokens, tokens], 1), torch.cat([pos, pos], 1), two_l),
    ]
    with torch.no_grad():
        for idx, p, mask in cases:
            theirs = F.log_softmax(reference_dit_logits(sd, idx, p, mask)[..., :11], -1)
            ours = F.log_softmax(model.logits(model.hidden(idx, p, mask)), -1)
            assert (ours - theirs).abs().max() < 1e-4


def test_a_folded_reference_dit_gives_the_same_log_probabilities():
    """formats.from_dit folds the constant adaLN of a random DiT into LayerNorm and projection
    weights: the same log-probabilities on sorted, partly masked inputs."""
    sd = reference_dit()
    backbone = {"backbone." + k: v for k, v in sd.items()}
    model = formats.from_dit(backbone, n_head=4, block_size=16, alpha_0=0.5)
    assert model.config.bias and model.config.vocab_size == 11 and model.config.n_layer == 2
    assert_same_log_probabilities(model, sd)
    assert formats.from_dit(sd, 4, 16, 0.5, variant="A").config.variant == "A"


# ------------------------------------------------------------------------- their Lightning files


def authors_config(**algo):
    """A real omegaconf DictConfig shaped like the authors' Hydra config (configs/config.yaml with
    model=small, algo=esolm, data=openwebtext), made small: interpolations left unresolved, a list
    (wandb.tags), struct mode on, as Hydra hands it to their trainer."""
    omegaconf = pytest.importorskip("omegaconf")
    eval_devices = "${eval:${trainer.devices} * ${trainer.num_nodes}}"
    config = {
        "mode": "train",
        "seed": 1,
        "loader": {"global_batch_size": 512, "batch_size": f"${{div_up:512, {eval_devices}}}"},
        "model": {"name": "small", "type": "ddit", "hidden_size": 32, "cond_dim": 16},
        "algo": {"name": "esolm", "backbone": "esolm_dit", "parameterization": "subs"},
        "data": {"train": "openwebtext", "valid": "wikitext103", "tokenizer_name_or_path": "gpt2"},
        "training": {"ema": 0.9999, "sampling_eps": 1e-3},
        "optim": {"lr": 3e-4, "beta1": 0.9, "beta2": 0.999},
        "trainer": {"max_steps": 1_000_000, "precision": "bf16"},
        "wandb": {"project": "ELMO", "group": None, "tags": ["${data.train}", "${algo.name}"]},
    }
    config["model"] |= {"length": 16, "n_blocks": 2, "n_heads": 4, "dropout": 0.1}
    config["algo"] |= {"alpha_0": 0.5, "batch_split": 0.5, "loss_type": "elbo"}
    config["algo"] |= {"diffusion_attn_mode": "bidirectional", "sequential_attn_mode": "causal"}
    config["algo"] |= algo
    config = omegaconf.OmegaConf.create(config)
    omegaconf.OmegaConf.set_struct(config, True)
    return config


def gpt2_tokenizer(folder):
    """A real transformers GPT-2 tokenizer (the class their AutoTokenizer gives for gpt2), made
    offline from a five-token vocab.json and merges.txt in folder."""
    transformers = pytest.importorskip("transformers")
    vocab = {"<|endoftext|>": 0, "a": 1, "b": 2, "ab": 3, "Ġ": 4}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\na b\n")
    return transformers.GPT2TokenizerFast.from_pretrained(folder)


def progress(count, *stages):
    """A Lightning progress record: count in each stage, for the current epoch and in total."""
    return {"current": dict.fromkeys(stages, count), "total": dict.fromkeys(stages, count)}


def lightning_loops(step):
    """checkpoint["loops"] of Lightning 2 after `step` optimizer steps in one epoch, with the
    authors' on_save_checkpoint edits (their batch progress is the optimizer's)."""
    batches = progress(step, "ready", "started", "processed", "completed")
    idle = progress(0, "ready", "started", "processed", "completed")
    fit_loop = {
        "state_dict": {},
        "epoch_loop.state_dict": {"_batches_that_stepped": step},
        "epoch_loop.batch_progress": batches | {"is_last_batch": False},
        "epoch_loop.scheduler_progress": progress(step, "ready", "completed"),
        "epoch_loop.automatic_optimization.state_dict": {},
        "epoch_loop.automatic_optimization.optim_progress": {
            "optimizer": {
                "step": progress(step, "ready", "completed"),
                "zero_grad": progress(step, "ready", "started", "completed"),
            }
        },
        "epoch_loop.manual_optimization.state_dict": {},
        "epoch_loop.manual_optimization.optim_step_progress": progress(0, "ready", "completed"),
        "epoch_loop.val_loop.state_dict": {},
        "epoch_loop.val_loop.batch_progress": idle | {"is_last_batch": False},
        "epoch_progress": progress(0, "ready", "started", "processed", "completed"),
    }
    return {
        "fit_loop": fit_loop,
        "validate_loop": {"state_dict": {}, "batch_progress": idle | {"is_last_batch": False}},
        "test_loop": {"state_dict": {}, "batch_progress": idle | {"is_last_batch": False}},
        "predict_loop": {"state_dict": {}, "batch_progress": idle},
    }


def model_checkpoint_state(folder):
    """checkpoint["callbacks"] of their checkpoint_monitor callback (Lightning's ModelCheckpoint
    on val/nll), keyed by its state key as Lightning writes it."""
    best = str(folder / "checkpoints" / "best.ckpt")
    score = torch.tensor(3.25)
    key = (
        "ModelCheckpoint{'monitor': 'val/nll', 'mode': 'min', 'every_n_train_steps': 0, "
        "'every_n_epochs': 1, 'train_time_interval': None}"
    )
    state = {"monitor": "val/nll", "best_model_score": score, "best_model_path": best}
    state |= {"current_score": score, "dirpath": str(folder / "checkpoints")}
    state |= {"best_k_models": {best: score}, "kth_best_model_path": best, "kth_value": score}
    state |= {"last_model_path": ""}
    return {key: state}


def adamw_after_one_step(tensors):
    """(optimizer_states, lr_schedulers) as Lightning saves them: a real AdamW over copies of
    tensors after one step, and the authors' constant-warmup scheduler (transformers')."""
    transformers = pytest.importorskip("transformers")
    params = [torch.nn.Parameter(t.clone()) for t in tensors]
    optimizer = torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
    scheduler = transformers.get_constant_schedule_with_warmup(optimizer, num_warmup_steps=2500)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    scheduler.step()
    return [optimizer.state_dict()], [scheduler.state_dict()]


def lightning_file(path, sd, ema=True, hostile=None, config=None, **algo):
    """A file written as the authors' trainer writes it (Lightning's trainer.save_checkpoint,
    their save_hyperparameters() and on_save_checkpoint), with the real packages: the backbone
    under "backbone.", its EMA (their models/ema.py state dict: the shadow list in the order of
    the parameters, each weight times 0.9 so that it differs from the raw one), a real omegaconf
    config (authors_config(**algo) unless given) and a real transformers tokenizer in
    hyper_parameters, and what Lightning fills beside them. The keys are those of a one-off run
    of real Lightning 2.6.6 with the same hooks. hostile: an object put among the callbacks'
    states."""
    params = [k for k in sd if k != "rotary_emb.inv_freq"]
    optimizer_states, lr_schedulers = adamw_after_one_step([sd[k] for k in params])
    callbacks = model_checkpoint_state(path.parent)
    if hostile is not None:
        callbacks["Hostile"] = {"state": hostile}
    shadow = {
        "decay": 0.9999,
        "num_updates": 250_000,
        "shadow_params": [0.9 * sd[k] for k in params],
    }
    state = {
        "epoch": 0,
        "global_step": 250_000,
        "pytorch-lightning_version": "2.5.0.post0",
        "state_dict": collections.OrderedDict(("backbone." + k, v) for k, v in sd.items()),
        "loops": lightning_loops(250_000),
        "callbacks": callbacks,
        "optimizer_states": optimizer_states,
        "lr_schedulers": lr_schedulers,
        "hparams_name": "kwargs",
        "hyper_parameters": {
            "config": config if config is not None else authors_config(**algo),
            "tokenizer": gpt2_tokenizer(path.parent),
        },
        "ema": shadow if ema else None,
        "sampler": {"random_state": None},
    }
    torch.save(state, path)
    return path


def test_the_authors_checkpoint_loads_with_its_ema(tmp_path):
    """Their Lightning file, written with the real omegaconf and transformers, names what theirs
    name (builtins.dict among them: omegaconf's metadata) and loads through --init_from's path
    with inert stand-ins: its EMA weights, whose log-probabilities are the DiT's with the EMA
    weights, and alpha_0, kappa, the step and the variant from its config."""
    path = tmp_path / "esolm.ckpt"
    sd = reference_dit()
    lightning_file(path, sd)
    named = {f"{m}.{n}" for m, n in checkpoint.pickle_globals(path)}
    assert {"builtins.dict", "builtins.list", "builtins.int", "collections.defaultdict"} <= named
    assert {"omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig"} <= named
    assert "transformers.models.gpt2.tokenization_gpt2.GPT2Tokenizer" in named
    model, ckpt = formats.load(path)
    averaged = {k: v if k == "rotary_emb.inv_freq" else 0.9 * v for k, v in sd.items()}
    assert_same_log_probabilities(model, averaged)  # the EMA weights, not the raw ones
    ema = formats.from_dit(averaged, 4, 16, 0.5)
    for a, b in zip(model.state_dict().values(), ema.state_dict().values()):
        assert torch.equal(a, b)
    assert ckpt["tokenizer"] == "gpt2" and ckpt["iter_num"] == 250_000 and ckpt["eos"] == 50256
    assert model.config.alpha_0 == 0.5 and model.config.batch_split == 0.5
    assert model.config.variant == "B" and model.config.loss_type == "elbo"
    raw, _ = formats.load(path, ema=False)
    assert_same_log_probabilities(raw, sd)
    assert not torch.equal(raw.wte.weight, model.wte.weight)
    lightning_file(tmp_path / "a.ckpt", sd, diffusion_attn_mode="mixed2")
    assert formats.load(tmp_path / "a.ckpt")[0].config.variant == "A"


def test_the_authors_checkpoint_problems_get_one_clear_line(tmp_path, capsys, hostile):
    """A missing EMA is a note; wrong weights, and a real Lightning file with a command, a memory
    bomb, a config that contains itself or one that shares a node into 2^28 values, each get
    one line, and nothing in them runs."""
    omegaconf = pytest.importorskip("omegaconf")
    sd = reference_dit()
    lightning_file(tmp_path / "no_ema.ckpt", sd, ema=False)
    model, ckpt = formats.load(tmp_path / "no_ema.ckpt")
    assert ckpt["ema"] is None and "holds no EMA weights" in capsys.readouterr().err
    marker = tmp_path / "pwned"
    lightning_file(tmp_path / "hostile.ckpt", sd, hostile=hostile.Exploit(marker))
    lightning_file(tmp_path / "bomb.ckpt", sd, hostile=hostile.Allocates(10**11))
    # omegaconf copies what is assigned to a config, so the loop and the sharing are made in the
    # containers' own content: real objects, as a pickle can hold them
    itself = authors_config()
    itself.model.__dict__["_content"]["loop"] = itself
    lightning_file(tmp_path / "itself.ckpt", sd, config=itself)
    shared = omegaconf.OmegaConf.create(["leaf"])
    for _ in range(28):
        twice = omegaconf.OmegaConf.create([])
        twice.__dict__["_content"] = [shared, shared]
        shared = twice
    many = authors_config()
    many.wandb.__dict__["_content"]["tags"] = shared
    lightning_file(tmp_path / "shared.ckpt", sd, config=many)
    cases = [
        ("unknown", sd | {"blocks.0.extra.weight": torch.ones(3)}, "unknown keys"),
        ("missing", {k: v for k, v in sd.items() if "mlp.2.bias" not in k}, "missing keys"),
        ("shape", sd | {"blocks.1.norm2.weight": torch.ones(7)}, "blocks.1.norm2.weight (7,)"),
        ("hostile", None, "names posix.system"),
        ("bomb", None, "names builtins.bytearray"),
        ("itself", None, "its config contains itself"),
        ("shared", None, "its config holds more than 100,000 values"),
    ]
    for case, broken, msg in cases:
        if broken is not None:
            lightning_file(tmp_path / f"{case}.ckpt", broken, ema=case != "shape")
        with pytest.raises(checkpoint.CheckpointError, match=re.escape(msg)) as e:
            formats.load(tmp_path / f"{case}.ckpt")
        assert "\n" not in str(e.value)
    assert not marker.exists()  # refused before anything was unpickled


class Calls:
    """Unpickles to builtin(*args): a pickle can call what it names."""

    def __init__(self, builtin, *args):
        self.builtin = builtin
        self.args = args

    def __reduce__(self):
        return (self.builtin, self.args)


class FillsByItems:
    """Unpickles to builtin() filled item by item (SETITEMS), which torch's weights_only unpickler
    allows only on real dicts: the file goes to the hand-written InertUnpickler."""

    def __init__(self, builtin, items):
        self.builtin = builtin
        self.items = items

    def __reduce__(self):
        return (self.builtin, (), None, None, iter(self.items))


@pytest.mark.parametrize("unpickler", ["torch's", "InertUnpickler"])
def test_the_builtin_types_omegaconf_names_are_inert_when_a_file_calls_them(
    tmp_path, monkeypatch, unpickler, hostile
):
    """The authors' files name dict, list and int as values (omegaconf's metadata), so they are
    read; a file that calls them instead (dict of 100,000 pairs, list of a megabyte string, int of
    a 5,000-digit string, dict of a memory bomb) gets inert stand-ins named like them, which keep
    nothing of their arguments, under torch's unpickler and the hand-written one alike. The bomb
    is refused by its own name, and ours (inert=False) refuse the builtins too."""
    calls = {
        "dict": Calls(dict, [(i, i) for i in range(100_000)]),
        "list": Calls(list, "x" * 10**6),
        "int": Calls(int, "9" * 5000),  # the real int refuses more than 4,300 digits
    }
    if unpickler == "InertUnpickler":
        calls["filled"] = FillsByItems(dict, [("k", 1)])
    path = tmp_path / "calls.ckpt"
    torch.save(calls, path)
    reached = []
    find_class = formats.InertUnpickler.find_class

    def recorded(self, module, name):
        reached.append(name)
        return find_class(self, module, name)

    monkeypatch.setattr(formats.InertUnpickler, "find_class", recorded)
    read = formats.read_foreign(path)
    assert bool(reached) == (unpickler == "InertUnpickler")
    for name in ("dict", "list", "int"):
        value = read[name]
        assert isinstance(value, formats.Inert) and type(value).__name__ == name
        assert len(value) == 0 and value.state is None
        assert type(value) not in (dict, list, int)
    if unpickler == "InertUnpickler":  # the items the file spells out, into a stand-in
        assert isinstance(read["filled"], formats.Inert) and dict(read["filled"]) == {"k": 1}
    with pytest.raises(checkpoint.CheckpointError, match="names builtins.dict") as e:
        checkpoint.read_pickle(path)
    assert "\n" not in str(e.value)
    bomb = Calls(dict, [("junk", hostile.Allocates(10**11))])
    torch.save({"bomb": bomb}, tmp_path / "bomb.ckpt")
    with pytest.raises(checkpoint.CheckpointError, match="names builtins.bytearray"):
        formats.read_foreign(tmp_path / "bomb.ckpt")


# --------------------------------------------------------------------- their Hugging Face models


def hugging_face_folder(folder, sd, weights="safetensors"):
    """A folder in the authors' Hugging Face layout (push_to_hf.py): config.json and the
    backbone's weights under "backbone."."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"vocab_size": 12, "mask_index": 11, "model_length": 16, "hidden_size": 32}
    config |= {"cond_dim": 16, "n_blocks": 2, "n_heads": 4, "dropout": 0.1, "model_type": "EsoLM"}
    (folder / "config.json").write_text(json.dumps(config))
    state = {"backbone." + k: v.contiguous() for k, v in sd.items()}
    if weights == "safetensors":
        from safetensors.torch import save_file

        save_file(state, folder / "model.safetensors")
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return folder


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_the_authors_hugging_face_folder_loads_and_needs_alpha_0(tmp_path, weights):
    if weights == "safetensors":
        pytest.importorskip("safetensors")
    sd = reference_dit()
    folder = hugging_face_folder(tmp_path / "Eso-LM-B-alpha-0_25", sd, weights)
    model, ckpt = formats.load(folder, alpha_0=0.25)
    assert model.config.alpha_0 == 0.25 and model.config.block_size == 16
    assert ckpt["tokenizer"] == "gpt2" and ckpt["ema"] is None
    assert_same_log_probabilities(model, sd)
    with pytest.raises(checkpoint.CheckpointError, match="holds no alpha_0: give it with"):
        formats.load(folder)


def test_a_hub_id_offline_is_one_line(monkeypatch):
    hub = pytest.importorskip("huggingface_hub")

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(checkpoint.CheckpointError, match="could not download") as e:
        formats.load("sahoo-diffusion/Eso-LM-B-alpha-0_25", alpha_0=0.25)
    assert "\n" not in str(e.value)


# ===================================================================== paper/likelihood.py


def test_a_full_pass_scores_every_window_once_with_its_own_noise(dataset, tiny):
    """The full pass over the validation windows: every window scored exactly once, each term
    the mean over its windows of that window's term computed on its own with the same noise; the
    same on any number of processes and any batch size."""
    model = tiny(0.5, L=32, V=256, big=False)
    val = common.load_dataset(dataset, 32)[1]
    wins = likelihood.windows(val, 32)
    n = len(wins)
    assert n == len(val) // 32
    chosen = likelihood.subset(n, 0)
    ctx = cli.precision("cpu")[1]
    res = likelihood.full_pass(model, wins, chosen, 5, ctx, seed=3)
    assert res["windows"] == n and res["tokens"] == 32 * n
    diffusion = []
    sequential = []
    d = 0
    for j in range(n):
        x = torch.from_numpy(wins[j : j + 1].astype(np.int64))
        generator = likelihood.window_generator("cpu", 3, j)
        with torch.no_grad():
            if likelihood.is_diffusion_window(j, 0.5):
                t = torch.tensor([likelihood.window_time(d, 3)])
                masked, sigma = model.diffusion_draws(t, 32, generator)
                diffusion.append(model.diffusion_nll(x, t, masked, sigma, "elbo").item())
                d += 1
            else:
                masked, sigma = model.sequential_draws(1, 32, "cpu", generator)
                sequential.append(model.sequential_nll(x, masked, sigma).item())
    assert len(diffusion) + len(sequential) == n and abs(len(diffusion) - len(sequential)) <= 1
    assert res["diffusion"] == pytest.approx(np.mean(diffusion), rel=1e-5)
    assert res["sequential"] == pytest.approx(np.mean(sequential), rel=1e-5)
    shares = [
        likelihood.pass_totals(model, wins, chosen, 3, ctx, rank, 2, 0, 3) for rank in range(2)
    ]
    one = likelihood.pass_totals(model, wins, chosen, 3, ctx, 0, 1, 0, 3)
    np.testing.assert_allclose(shares[0] + shares[1], one, rtol=1e-6)
    assert shares[0][1] + shares[0][3] < n  # the two processes shared the windows


def test_a_subset_of_windows_is_fixed_and_sorted():
    a = likelihood.subset(100, 10)
    assert torch.equal(a, likelihood.subset(100, 10)) and torch.equal(a, a.sort().values)
    assert len(set(a.tolist())) == 10 and torch.equal(likelihood.subset(5, 10), torch.arange(5))


def test_a_zero_shot_column_is_one_evaluation_command(data_dir, tmp_path, gpt2, run, tiny):
    """python -m paper.likelihood --init_from=MODEL --dataset=lambada: a full pass over the
    prepared windows of a zero-shot set (a GPT-2-token model; the stand-in tokenizer's 257 ids);
    train.py refuses to train on it, in one line."""
    from data import prepare

    texts = [f"\u201cA passage,\u201d number {i}, of a few words each time." for i in range(60)]
    jsonl = tmp_path / "lambada_test.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    prepare.prepare(["--dataset=lambada", f"--raw_dir={jsonl}", "--block_size=32"])
    model = tiny(0.5, L=32, V=257, big=False)
    state = checkpoint.state(model, model.config, "gpt2", 7, eos=256, dataset="openwebtext")
    checkpoint.save(tmp_path / "model.pt", state)
    record = tmp_path / "record.json"
    args = [f"--init_from={tmp_path / 'model.pt'}", "--dataset=lambada", f"--json={record}"]
    code, out, err = run(likelihood, *args)
    assert code == 0, err
    result = json.loads(record.read_text())
    n_windows = len(common.load_dataset("lambada", 32)[1]) // 32
    assert result["dataset"] == "lambada" and result["windows"] == n_windows > 0
    assert math.isfinite(result["nelbo"]) and "on data/lambada val, a full pass" in out
    assert "{" not in out  # the record went to the file, not the terminal
    code, _, err = py_main("train", f"--init_from={tmp_path / 'model.pt'}", "--dataset=lambada")
    assert code == 2 and "is an evaluation set" in err


def test_the_full_pass_cli_scores_every_window_with_the_ema_weights(dataset, trained, run):
    """python -m paper.likelihood on a model of ours: a full pass (or a fixed subset), the IW
    bound with K orders, the EMA weights (not the raw ones), progress lines off a terminal."""
    out, _ = trained
    record = out / "likelihood.json"
    args = [f"--out_dir={out}", "--num_orders=4", f"--json={record}"]
    code, stdout, err = run(likelihood, *args)
    assert code == 0, err
    res = json.loads(record.read_text())
    n_windows = len(common.load_dataset(dataset, 32)[1]) // 32
    assert res["step"] == 6 and res["windows"] == n_windows and res["tokens"] == 32 * n_windows
    assert f"a full pass: {n_windows:,} windows of 32 tokens" in stdout
    assert math.isfinite(res["nelbo"]) and math.isfinite(res["iw_bound"])
    assert "IW bound (K=4)" in stdout and "EMA weights" in stdout
    assert re.search(r"of \d+ batches, \d+ s", err)  # progress, in lines, off a terminal
    code, _, _ = run(likelihood, f"--out_dir={out}", "--eval_windows=5", f"--json={record}")
    assert code == 0 and json.loads(record.read_text())["windows"] == 5
    ema, _ = checkpoint.load(out / "ckpt.pt")
    raw, _ = checkpoint.load(out / "ckpt.pt", ema=False)
    val = common.load_dataset(dataset, 32)[1]
    ctx = cli.precision("cpu")[1]
    wins = likelihood.windows(val, 32)
    chosen = likelihood.subset(len(wins), 0)
    with_ema = likelihood.full_pass(ema, wins, chosen, 16, ctx, seed=1337)["nelbo"]
    with_raw = likelihood.full_pass(raw, wins, chosen, 16, ctx, seed=1337)["nelbo"]
    assert with_ema != with_raw
    code, _, _ = run(likelihood, f"--out_dir={out}", f"--json={record}")
    assert json.loads(record.read_text())["nelbo"] == pytest.approx(with_ema, rel=1e-6)


# ============================================================= paper/judge.py, paper/evaluate.py


@pytest.fixture(scope="session")
def hf_judge(tmp_path_factory):
    """A tiny Hugging Face causal LM and a byte-level BPE tokenizer with an EOS, trained and
    saved in a folder: a judge like gpt2-large, made here."""
    pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    import transformers

    folder = tmp_path_factory.mktemp("judge_hf")
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    import pydoc_data.topics as topics

    texts = [topics.topics[key] for key in sorted(topics.topics)[:10]]
    bpe.train_from_iterator(texts, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    eos = tokenizer.eos_token_id
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=1024,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def authors_gen_ppl(model, tokenizer, batches, max_length):
    """The authors' generative perplexity written out sample by sample: each sampler batch
    padded with EOS to its longest sample (truncated to max_length), scored in pieces of 8 (a
    remainder dropped); position 0 unscored; every non-EOS token and the first EOS count."""
    eos = tokenizer.eos_token_id
    total = 0.0
    count = 0
    for texts in batches:
        rows = [tokenizer(t)["input_ids"][:max_length] for t in texts]
        longest = max(len(r) for r in rows)
        kept = len(rows) // min(8, len(rows)) * min(8, len(rows))
        for row in rows[:kept]:
            ids = torch.tensor([row + [eos] * (longest - len(row))])
            attention = torch.tensor([[1] * len(row) + [0] * (longest - len(row))])
            with torch.no_grad():
                logp = model(ids, attention_mask=attention).logits.log_softmax(-1)[0]
            seen_eos = 0
            for i, token in enumerate(ids[0].tolist()):
                if token == eos:
                    seen_eos += 1
                counts = token != eos or seen_eos == 1
                if i > 0 and counts:
                    total -= logp[i - 1, token].item()
                    count += 1
    return math.exp(total / count), count


def test_the_judge_follows_the_authors_counting_rules(hf_judge):
    model, tokenizer = judge.load(str(hf_judge))
    texts = [
        "The for statement is used to iterate.",  # no EOS: its first padding EOS counts
        "Short.<|endoftext|>after the end, still counted<|endoftext|>not the second EOS",
        "<|endoftext|>An EOS at position 0 is never scored.",
        "x " * 400,  # longer than the judge's max_length below: truncated
    ] * 3  # 12 samples: in pieces of 8, a remainder of 4 dropped
    batches = [texts[:10], texts[10:]]
    ours = judge.gen_ppl(model, tokenizer, batches, max_length=48)
    theirs, count = authors_gen_ppl(model, tokenizer, batches, max_length=48)
    assert ours["counted"] == count
    assert ours["gen_ppl"] == pytest.approx(theirs, rel=1e-5)
    ids = torch.tensor([[5, 9, tokenizer.eos_token_id, 7, tokenizer.eos_token_id, 3]])
    assert judge.counted_tokens(ids, tokenizer.eos_token_id).tolist() == [
        [True, True, True, True, False, True]
    ]
    assert judge.unigram_entropy([torch.tensor([1, 1, 2, 2])]) == pytest.approx(math.log(2))


def test_evaluate_scores_a_samples_file_with_the_judge(hf_judge, tmp_path, run):
    texts = ["The while statement repeats.", "A function returns a value.<|endoftext|>"] * 4
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    scores = tmp_path / "scores.json"
    code, out, err = run(evaluate, f"--samples={path}", f"--judge={hf_judge}", f"--json={scores}")
    assert code == 0 and "generative perplexity" in out, err
    record = json.loads(scores.read_text())
    model, tokenizer = judge.load(str(hf_judge))
    theirs, count = authors_gen_ppl(model, tokenizer, [texts], judge.JUDGE_CONTEXT)
    assert record["num_samples"] == 8 and record["counted"] == count
    assert record["gen_ppl"] == pytest.approx(theirs, rel=1e-5)
    path.write_text('{"text": "fine"}\n[1, 2]\n')
    code, _, err = run(evaluate, f"--samples={path}", f"--judge={hf_judge}")
    assert code == 2 and "line 2: not a JSON object" in err


def test_a_judge_that_is_not_there_is_one_line(run, tmp_path):
    pytest.importorskip("transformers")
    code, _, err = run(evaluate, "--samples=x.jsonl", f"--judge={tmp_path / 'nothing'}")
    assert code == 2 and "could not load the judge" in err and err.count("\n") == 1


def test_evaluate_draws_what_sample_prints(trained, run):
    """The same flags give the same samples: evaluate.py's texts are sample.py's."""
    out, _ = trained
    flags = [f"--out_dir={out}", "--steps=8", "--seed=3"]
    code, stdout, _ = run(sample, *flags)
    printed = stdout.split("-" * 60 + "\n")[:-1]
    c, _ = cli.parse(evaluate.CONFIG, flags, "")
    c.batch_size = c.num_samples
    model, ckpt = formats.load(out / "ckpt.pt")
    tokens, _, _, _ = evaluate.draw(
        model, model, c, model.config.alpha_0, 8, 3, cli.precision("cpu")[1], "cpu"
    )
    enc = common.get_tokenizer("bytes")
    assert code == 0 and len(printed) == 8
    assert [enc.decode(row.tolist()) + "\n" for row in tokens] == printed


def test_the_authors_checkpoint_is_converted_sampled_scored_and_evaluated(
    dataset, tmp_path, run, monkeypatch
):
    """An authors' Lightning file (byte tokens stand in for GPT-2's, whose files this machine
    cannot download) converts into a checkpoint of ours that sample.py reads, with its EMA; the
    paper's evaluate and likelihood take the file itself."""
    sd = reference_dit(V=256)
    lightning_file(tmp_path / "esolm.ckpt", sd)
    bytes_tokens = common.get_tokenizer("bytes")
    monkeypatch.setattr(sample, "get_tokenizer", lambda name, vocab=None: bytes_tokens)
    monkeypatch.setattr(evaluate, "get_tokenizer", lambda name, vocab=None: bytes_tokens)
    code, _, err = run(sample, f"--init_from={tmp_path / 'esolm.ckpt'}")
    assert code == 2 and "python -m paper.convert" in err and err.count("\n") == 1
    converted = tmp_path / "converted" / "ckpt.pt"
    code, out, err = run(convert, tmp_path / "esolm.ckpt", f"--out={converted}")
    assert code == 0 and "python sample.py --out_dir=" in out, err
    ours, ckpt = checkpoint.load(converted)  # a checkpoint of ours: torch.load(weights_only)
    theirs, _ = formats.load(tmp_path / "esolm.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))
    assert ckpt["iter_num"] == 250_000 and ckpt["ema"] is not None
    code, _, err = run(convert, tmp_path / "esolm.ckpt", f"--out={converted}")
    assert code == 2 and "exists" in err
    code, out, err = run(sample, f"--out_dir={converted.parent}", "--num_samples=2", "--steps=4")
    assert code == 0 and "NFE" in out, err
    model_file = f"--init_from={tmp_path / 'esolm.ckpt'}"
    code, out, err = run(evaluate, model_file, "--num_samples=2", "--steps=4")
    assert code == 0 and "word shares skipped" in out, err
    real_load = common.load_dataset

    def as_gpt2(*args, **kwargs):
        splits = real_load(*args, **kwargs)
        return splits[0], splits[1], splits[2] | {"tokenizer": "gpt2"}

    monkeypatch.setattr(common, "load_dataset", as_gpt2)
    args = [model_file, f"--dataset={dataset}", "--batch_size=4", "--eval_windows=6"]
    code, out, err = run(likelihood, *args, "--num_orders=2")
    assert code == 0 and "EMA weights" in out and "IW bound (K=2)" in out, err
    assert "(step 250000," in out


# ========================================================================== paper/bench.py


def test_bench_times_table_11s_models_at_nfe_about_l(monkeypatch, tiny):
    """Table 11's protocol: each of the five samplers spends about L forwards (BD3-LM one more
    a block, for its cache); MDLM's step is a bidirectional forward of the whole canvas."""
    model = tiny(1.0, L=32)
    c = {"seed": 0, "bd3_steps": 5000}
    nfe = {}
    for method in ("eso", "bd3_4", "bd3_16", "ar"):
        case = {"method": method, "L": 32, "steps": bench.BIG_T}
        nfe[method] = bench.sampler_of(case, c, model, "cpu")()
    assert nfe == {"eso": 32, "bd3_4": 32 + 8, "bd3_16": 32 + 2, "ar": 32}
    seen = []
    real = eso.EsoLM.hidden

    def spy(self, idx, pos, attn_mask=None, cache=None):
        seen.append(attn_mask)
        return real(self, idx, pos, attn_mask, cache)

    monkeypatch.setattr(eso.EsoLM, "hidden", spy)
    mdlm = bd3lm.BD3LM(model, 32)
    whole, timed = bench.mdlm_steps(mdlm, 3, gen(0))
    assert timed == 3 and whole == 32 and len(seen) == 3
    assert all(m.shape == (1, 1, 32, 32) and m.all() for m in seen)


def py_main(script, *args):
    """(exit status, stdout, stderr) of `python SCRIPT.py ARGS`, in a fresh process."""
    command = [sys.executable, f"{script}.py", *map(str, args)]
    r = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    return r.returncode, r.stdout, r.stderr


def test_convert_takes_its_flags_in_either_form():
    assert convert.split_source(["model.ckpt", "--out", "x/ckpt.pt", "--alpha_0=1"]) == (
        ["model.ckpt"],
        ["--out", "x/ckpt.pt", "--alpha_0=1"],
    )
    assert convert.split_source(["--out=x", "a", "b"]) == (["a", "b"], ["--out=x"])
