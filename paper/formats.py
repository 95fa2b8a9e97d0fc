"""
The authors' released models (GitHub s-sahoo/Eso-LMs), in every format they ship, as ours.

  load(source, device, ema, alpha_0)  a checkpoint of ours, or any of the authors' formats below,
                                      as (model, checkpoint dict of ours)
  python -m paper.convert SOURCE      writes one as a checkpoint of ours (paper/convert.py)

  Lightning files   their trainer's .ckpt (e.g. esolmb-alpha0-0d25-250k.ckpt): the backbone under
                    state_dict["backbone."], its EMA as ema["shadow_params"], their Hydra config
                    (omegaconf) and tokenizer pickled in hyper_parameters.
  Hugging Face      a folder of config.json plus model.safetensors (or pytorch_model.bin), as their
                    push_to_hf.py writes it: the backbone's weights under "backbone.", with the EMA
                    weights copied in; or a hub id such as sahoo-diffusion/Eso-LM-B-alpha-0_25,
                    downloaded once through huggingface_hub. alpha_0 is not in their config: the
                    caller gives it.

Each becomes a checkpoint dict of ours (checkpoint.model_from builds the model): their EsoLMDiT
folded into EsoLM by from_dit. Files are read by checkpoint.read_pickle with inert stand-ins for
their config and tokenizer objects: nothing in them runs.
"""

import itertools
import json
import pickle
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

import checkpoint
import eso
from checkpoint import MAX_DEPTH, REAL_GLOBALS, CheckpointError, python3_name, short_reason

MAX_CONFIG_VALUES = 100_000  # how many values a config may hold, a shared one counted each time

GPT2_EOS = 50256  # <|endoftext|>, where a sample of theirs ends
HUB_FILES = ["config.json", "model.safetensors", "pytorch_model.bin"]
BLOCK_NAMES = ["norm1.weight", "attn_qkv.weight", "attn_out.weight", "norm2.weight"]
BLOCK_NAMES += ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]


# -----------------------------------------------------------------------------
# Reading a foreign pickle without running it

# The packages whose classes a foreign file (the authors' Lightning checkpoints) may name: their
# config (omegaconf), tokenizer (transformers, tokenizers) and trainer state. They are stood in
# for by inert objects that keep what they are handed and run nothing. Where torch's own
# allow-list has the name, torch's entry wins: collections.Counter is then the real one, which
# counts no more than what the file spells out.
INERT_PACKAGES = {
    "omegaconf",
    "typing",
    "transformers",
    "tokenizers",
    "lightning",
    "lightning_fabric",
    "pytorch_lightning",
    "torchmetrics",
    "hydra",
    "numpy",
    "pathlib",
    "enum",
    "collections",
}
# The builtin types that omegaconf writes into every config as values: each container's metadata
# records its type (object_type=dict or list) and a list's key type (key_type=int, which protocol
# 2 spells __builtin__.long), and its resolver cache is a defaultdict(dict). A real file of theirs
# needs no more than these names; it never calls them.
#
# They are stood in for too, never rebuilt as the real types. A pickle that names a type can also
# call it: dict(items) builds a dict from whatever the file hands it, and a type that is callable
# from a file is one more way to allocate. The stand-in is an Inert class registered under the
# builtin's name, and calling it keeps nothing of its arguments. torch's weights_only unpickler
# looks a name up in its own allow-list first (it holds builtins.set, bytearray and complex, not
# dict, list or int), then in what safe_globals registers: so it pushes the stand-in, and nothing
# of its own, for these names. The dicts and lists of the pickle itself come from its EMPTY_DICT
# and EMPTY_LIST opcodes, which name no global, and stay real. So the real dict, list and int are
# never reached through a name in the file, and a call of the stand-in allocates no more than the
# arguments that the file spells out, which its size bounds. The hand-written InertUnpickler
# resolves them the same way (find_class).
INERT_BUILTINS = {"builtins.dict", "builtins.list", "builtins.int"}


def may_stand_in(qualified):
    """Whether a foreign file's global ("module.Name") is read as an inert stand-in: a class of
    INERT_PACKAGES, or one of the INERT_BUILTINS that omegaconf names as values."""
    package = qualified.split(".")[0]
    return package in INERT_PACKAGES or qualified in INERT_BUILTINS


def read_foreign(path, device="cpu"):
    """The object an authors' torch.save file holds, read without running anything it names.

    Its globals are listed from its opcodes first (checkpoint.pickle_globals): one outside
    checkpoint.REAL_GLOBALS is refused in one line unless may_stand_in allows it (their config,
    tokenizer and trainer state), and then it is stood in for by an inert object. Tensors are
    checked to hold the data they claim (checkpoint.check_tensors)."""
    named = checkpoint.pickle_globals(path)
    foreign = sorted(f"{m}.{n}" for m, n in named if (m, n) not in REAL_GLOBALS)
    refused = [name for name in foreign if not may_stand_in(name)]
    if refused:
        raise CheckpointError(
            f"refusing {path}: it names {', '.join(refused[:3])}, which a checkpoint does not "
            "need (unpickling could run code or fill memory); nothing in it was run"
        )
    if not foreign:
        return checkpoint.read_pickle(path, device)
    obj = read_inert(path, device, foreign)
    checkpoint.check_tensors(obj, path)
    return obj


class Inert(dict):
    """Stands in for a class or function that a foreign pickle names: keeps what it is handed
    (its state, or its dict items), runs nothing."""

    state = None

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        self.state = state


def stand_in(qualified):
    """An inert class named like `qualified` ("module.Name")."""
    module, _, name = qualified.rpartition(".")
    return type(name, (Inert,), {"__module__": module})


def read_inert(path, device, foreign):
    """A foreign file with inert stand-ins for its foreign globals. torch's own weights_only
    unpickler does it (safe_globals); the hand-written InertUnpickler is kept for the pickles that
    torch's refuses (it rebuilds only what REAL_GLOBALS lists, so its reach is the same)."""
    stand_ins = [(stand_in(name), name) for name in foreign]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        pass
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable checkpoint: {short_reason(e)}") from None
    inert_pickle = SimpleNamespace(Unpickler=InertUnpickler, __name__="inert")
    try:
        return torch.load(path, map_location=device, weights_only=False, pickle_module=inert_pickle)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable checkpoint: {short_reason(e)}") from None


class InertUnpickler(pickle.Unpickler):
    """Resolves REAL_GLOBALS; everything else becomes an inert stand-in (read_pickle has already
    refused what is neither)."""

    def find_class(self, module, name):
        module, name = python3_name(module, name)
        if (module, name) in REAL_GLOBALS:
            return super().find_class(module, name)
        return stand_in(f"{module}.{name}")


def plain(obj, path):
    """The plain values behind inert stand-ins of omegaconf's containers and nodes (their state
    holds _content or _val): nested dicts, lists and scalars. A config that contains itself, nests
    deeper than MAX_DEPTH, or holds more than MAX_CONFIG_VALUES values (a value that the pickle
    shares counts each time it is reached: sixty lists that each hold the next one twice would
    otherwise unfold into 2^60 values) is refused in one line."""
    reached = itertools.count(1)

    def convert(item, inside):
        if next(reached) > MAX_CONFIG_VALUES:
            raise CheckpointError(
                f"refusing {path}: its config holds more than {MAX_CONFIG_VALUES:,} values"
            )
        if len(inside) > MAX_DEPTH or id(item) in inside:
            raise CheckpointError(f"refusing {path}: its config contains itself or nests too deep")
        inside = (*inside, id(item))
        if isinstance(item, Inert):
            state = item.state
            if isinstance(state, dict) and "_content" in state:
                return convert(state["_content"], inside)
            if isinstance(state, dict) and "_val" in state:
                return convert(state["_val"], inside)
        if isinstance(item, dict):
            return {k: convert(v, inside) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [convert(v, inside) for v in item]
        return item

    return convert(obj, ())


# -----------------------------------------------------------------------------
# Their network, folded into ours


def dit_layout(n_layer, C, V1, cond, freq):
    """{name: shape} of the authors' EsoLMDiT (models/dit.py) with n_layer blocks of width C, V1
    embedding rows (the vocabulary and [MASK]) and a timestep MLP of cond units over freq
    features."""
    layout = {
        "vocab_embed.embedding": (V1, C),
        "sigma_map.mlp.0.weight": (cond, freq),  # the timestep MLP
        "sigma_map.mlp.0.bias": (cond,),
        "sigma_map.mlp.2.weight": (cond, cond),
        "sigma_map.mlp.2.bias": (cond,),
        "output_layer.norm_final.weight": (C,),
        "output_layer.adaLN_modulation.weight": (2 * C, cond),
        "output_layer.adaLN_modulation.bias": (2 * C,),
        "output_layer.linear.weight": (V1, C),
        "output_layer.linear.bias": (V1,),
    }
    block = {
        "norm1.weight": (C,),
        "attn_qkv.weight": (3 * C, C),
        "attn_out.weight": (C, C),
        "norm2.weight": (C,),
        "mlp.0.weight": (4 * C, C),
        "mlp.0.bias": (4 * C,),
        "mlp.2.weight": (C, 4 * C),
        "mlp.2.bias": (C,),
        "adaLN_modulation.weight": (6 * C, cond),
        "adaLN_modulation.bias": (6 * C,),
    }
    for i in range(n_layer):
        layout |= {f"blocks.{i}.{name}": shape for name, shape in block.items()}
    return layout


def check_layout(sd):
    """(n_layer, C, V1, cond, freq) of the authors' state dict sd (without "backbone."), or a
    ValueError naming unknown or missing keys and wrong shapes. Checked before any tensor is
    converted, so that no tensor of a surprising size is ever copied."""
    for name in ("vocab_embed.embedding", "sigma_map.mlp.0.weight"):
        if name not in sd or sd[name].dim() != 2:
            raise ValueError(f"not the authors' EsoLMDiT: it lacks a 2-d {name}")
    V1, C = sd["vocab_embed.embedding"].shape
    cond, freq = sd["sigma_map.mlp.0.weight"].shape
    n_layer = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    layout = dit_layout(n_layer, C, V1, cond, freq)
    unknown = sorted(set(sd) - set(layout))
    missing = sorted(set(layout) - set(sd))
    shapes = [
        f"{k} {tuple(sd[k].shape)}, not {layout[k]}"
        for k in layout
        if k in sd and tuple(sd[k].shape) != layout[k]
    ]
    problems = [("unknown keys", unknown), ("missing keys", missing), ("shapes", shapes)]
    found = [f"{what} {names[:3]}" for what, names in problems if names]
    if found:
        raise ValueError("not the authors' EsoLMDiT: " + "; ".join(found))
    return n_layer, C, V1, cond, freq


def from_dit(state_dict, n_head, block_size, alpha_0, **config):
    """An EsoLM with the weights of the authors' EsoLMDiT (keys with or without "backbone.");
    n_head, block_size, alpha_0 and any other EsoConfig field come from their config.

    Their DiT modulates each block by c = silu(sigma_map(s)) (adaLN), s a noise level (their
    "sigma", not an order). Eso-LMs run with s = 0, so c and every modulation (shift, scale,
    gate = adaLN(c)) are constants:
        LN(x) w (1 + scale) + shift  is a LayerNorm with weight w (1 + scale) and bias shift;
        x + gate (y W^T + b)         is a projection with W's rows and b scaled by gate.
    So theirs is a pre-norm transformer with biases in the LayerNorms, the MLP and the head
    (bias=True). The [MASK] row of their output layer (its logit is set to -1e6) is dropped;
    weights go (out, in) -> (in, out)."""
    sd = {k.removeprefix("backbone."): v for k, v in state_dict.items()}
    # their one buffer: the rotary frequencies, which must be ours
    inv_freq = sd.pop("rotary_emb.inv_freq", None)
    n_layer, C, V1, cond, freq = check_layout(sd)
    sd = {k: v.float() for k, v in sd.items()}
    model_config = eso.EsoConfig(
        block_size=block_size,
        vocab_size=V1 - 1,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=C,
        alpha_0=alpha_0,
        bias=True,
        **config,
    )
    head_dim = C // n_head
    base = 1.0 / 10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    if inv_freq is not None:
        same = inv_freq.shape == base.shape and torch.allclose(inv_freq.float().cpu(), base)
        if not same:
            raise ValueError(
                f"its rotary frequencies are not those of base 10000 over {head_dim} dimensions "
                "per head"
            )
    # c at s = 0: the timestep features cos(0 f), then sin(0 f), are ones, then zeros
    features = torch.cat([torch.ones(freq // 2), torch.zeros(freq - freq // 2)])
    c = F.silu(F.linear(features, sd["sigma_map.mlp.0.weight"], sd["sigma_map.mlp.0.bias"]))
    c = F.silu(F.linear(c, sd["sigma_map.mlp.2.weight"], sd["sigma_map.mlp.2.bias"]))
    ours = {"wte.weight": sd["vocab_embed.embedding"]}
    for i in range(n_layer):
        ours |= fold_block(sd, f"blocks.{i}.", c)
    final = sd["output_layer.adaLN_modulation.weight"]
    shift, scale = F.linear(c, final, sd["output_layer.adaLN_modulation.bias"]).chunk(2)
    ours["ln_f.weight"] = sd["output_layer.norm_final.weight"] * (1 + scale)
    ours["ln_f.bias"] = shift
    # the head, without the [MASK] row
    ours["lm_head.weight"] = sd["output_layer.linear.weight"][:-1].T
    ours["lm_head.bias"] = sd["output_layer.linear.bias"][:-1]
    model = eso.EsoLM(model_config)
    model.load_state_dict(ours)
    return model.eval()


def fold_block(sd, prefix, c):
    """Our weights of one block (both named prefix + ..., prefix = "blocks.i.") with its constant
    adaLN modulation folded in."""
    weight = sd[prefix + "adaLN_modulation.weight"]
    bias = sd[prefix + "adaLN_modulation.bias"]
    shift1, scale1, gate1, shift2, scale2, gate2 = F.linear(c, weight, bias).chunk(6)
    theirs = {name: sd[prefix + name] for name in BLOCK_NAMES}
    ours = {
        "ln_1.weight": theirs["norm1.weight"] * (1 + scale1),
        "ln_1.bias": shift1,
        # rows: q, k, v, each head by head, as ours
        "attn.qkv.weight": theirs["attn_qkv.weight"].T,
        "attn.proj.weight": (theirs["attn_out.weight"] * gate1[:, None]).T,
        "ln_2.weight": theirs["norm2.weight"] * (1 + scale2),
        "ln_2.bias": shift2,
        "mlp.fc.weight": theirs["mlp.0.weight"].T,
        "mlp.fc.bias": theirs["mlp.0.bias"],
        "mlp.proj.weight": (theirs["mlp.2.weight"] * gate2[:, None]).T,
        "mlp.proj.bias": theirs["mlp.2.bias"] * gate2,
    }
    return {prefix + name: tensor for name, tensor in ours.items()}


def as_checkpoint(model, ema_model, iter_num, source):
    """A checkpoint dict of ours for a folded model (and its EMA), GPT-2 tokens on OpenWebText."""
    return {
        "model": model.state_dict(),
        "ema": ema_model.state_dict() if ema_model is not None else None,
        "config": asdict(model.config),
        "tokenizer": "gpt2",
        "eos": GPT2_EOS,
        "iter_num": iter_num,
        "dataset": "openwebtext",
        "source": source,
    }


# -----------------------------------------------------------------------------
# Their Lightning files


def lightning(path, device="cpu"):
    """The authors' Lightning checkpoint as a checkpoint dict of ours: their EsoLMDiT folded by
    from_dit, and its EMA (in the order of its parameters: its state dict's but
    rotary_emb.inv_freq). alpha_0, kappa, L, the heads, the variant and the loss type come from
    its config."""
    raw = read_foreign(path, device)
    is_lightning = isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict)
    if not is_lightning or "hyper_parameters" not in raw:
        raise CheckpointError(f"{path} is neither a checkpoint of ours nor an authors' one")
    hyper = plain(raw["hyper_parameters"], path)
    config = {}
    if isinstance(hyper, dict) and isinstance(hyper.get("config"), dict):
        config = hyper["config"]
    model_cfg = config.get("model") or {}
    algo = config.get("algo") or {}
    data = config.get("data") or {}
    tokenizer = data.get("tokenizer_name_or_path", "gpt2")
    if tokenizer != "gpt2":  # LM1B's BERT models keep [MASK] inside the vocabulary
        raise CheckpointError(f"{path} uses the {tokenizer} tokenizer: only GPT-2 ones load here")
    variant = "B"
    if algo.get("diffusion_attn_mode") == "mixed2":
        variant = "A"
    settings = dict(
        n_head=model_cfg.get("n_heads"),
        block_size=model_cfg.get("length"),
        alpha_0=algo.get("alpha_0"),
        variant=variant,
        batch_split=algo.get("batch_split"),
        loss_type=algo.get("loss_type", "elbo"),
    )
    state = {k: v for k, v in raw["state_dict"].items() if k.startswith("backbone.")}
    state = state or raw["state_dict"]
    names = [k for k in state if not k.endswith("rotary_emb.inv_freq")]  # the parameters, in order
    shadow = None
    if isinstance(raw.get("ema"), dict):
        shadow = raw["ema"].get("shadow_params")
    try:
        model = from_dit(state, **settings)
        ema_model = None
        if shadow is not None:
            if len(shadow) != len(names):  # (a tensor of the wrong shape is named by from_dit)
                raise ValueError(f"its EMA holds {len(shadow)} tensors for {len(names)} parameters")
            ema_model = from_dit({**state, **dict(zip(names, shadow))}, **settings)
    except (TypeError, ValueError) as e:  # e.g. a config without model.n_heads or algo.alpha_0
        raise CheckpointError(f"{path}: {e} (what its config gives: {settings})") from None
    if shadow is None:
        note = "holds no EMA weights (the paper's numbers use them): using the raw ones"
        print(f"note: {path} {note}", file=sys.stderr)
    iter_num = int(raw.get("global_step") or 0)
    return as_checkpoint(model, ema_model, iter_num, f"the authors' checkpoint {path}")


# -----------------------------------------------------------------------------
# Their Hugging Face models


def hugging_face(folder, alpha_0, device="cpu"):
    """The authors' Hugging Face model in `folder` (config.json and model.safetensors, or
    pytorch_model.bin read inertly) as a checkpoint dict of ours. Its weights are the EMA ones;
    alpha_0 (not in their config) is the caller's: None leaves it to be given later."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder} has no readable config.json ({e})") from None
    if alpha_0 is None:
        raise CheckpointError(
            f"{folder}: the authors' Hugging Face config holds no alpha_0: give it with "
            "--alpha_0 (e.g. 0.25 for Eso-LM-B-alpha-0_25)"
        )
    if (folder / "model.safetensors").is_file():
        state = read_safetensors(folder / "model.safetensors")
    elif (folder / "pytorch_model.bin").is_file():
        state = read_foreign(folder / "pytorch_model.bin", device)
    else:
        raise CheckpointError(f"{folder} holds neither model.safetensors nor pytorch_model.bin")
    if not isinstance(state, dict):
        raise CheckpointError(f"{folder}: its weights are not a state dict")
    settings = dict(n_head=config.get("n_heads"), block_size=config.get("model_length"))
    try:
        model = from_dit(state, alpha_0=alpha_0, **settings)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{folder}: {e} (what its config gives: {settings})") from None
    return as_checkpoint(model, None, 0, f"the authors' Hugging Face model {folder}")


def read_safetensors(path):
    """The tensors of a .safetensors file (a format of raw tensors: nothing to run)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(
            f"reading {path} needs the safetensors package: pip install safetensors"
        ) from None
    try:
        return load_file(path)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None


def download(repo_id):
    """A local folder with the hub model repo_id's config and weights (downloaded once into the
    Hugging Face cache)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{repo_id} is a Hugging Face hub id: downloading it needs huggingface_hub "
            "(pip install huggingface_hub), or give a local folder"
        ) from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as e:
        raise CheckpointError(
            f"could not download {repo_id} from the Hugging Face hub ({type(e).__name__}; "
            "offline?): fetch its config.json and model.safetensors elsewhere into a folder and "
            "pass that folder"
        ) from None


# -----------------------------------------------------------------------------
# Any of them


def load(source, device="cpu", ema=True, alpha_0=None):
    """(model, checkpoint dict of ours) of what a --init_from of the paper's scripts names: a
    checkpoint of ours; an authors' Lightning file; an authors' Hugging Face folder (config.json
    plus weights) or hub id (owner/name), whose alpha_0 the caller gives (their config has none).
    In eval mode, with the EMA weights where there are some (ema=False: the raw ones)."""
    path = Path(source)
    if path.is_dir() and (path / "config.json").is_file():
        ckpt = hugging_face(path, alpha_0, device)
    elif checkpoint.looks_like_hub_id(source):
        ckpt = hugging_face(download(str(source)), alpha_0, device)
    elif not path.is_file() or is_ours(path):
        return checkpoint.load(path, device, ema, method=None)  # it names what is missing
    else:
        ckpt = lightning(path, device)
    return checkpoint.model_from(ckpt, path, device, ema)


def is_ours(path):
    """Whether a torch.save file names nothing but tensors and plain values (as ours do)."""
    return checkpoint.pickle_globals(path) <= REAL_GLOBALS
