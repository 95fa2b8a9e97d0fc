"""What the test suites share, as pytest fixtures and hooks: tiny models, the scripts run as a
user runs them, and small datasets, all in temporary folders. Nothing is written into the
checkout: every dataset the tests prepare goes to a temporary ESO_DATA_DIR."""

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent
# the optional packages of the paper's protocols; tests that need one say so when it is missing
EXTRAS = ["transformers", "tokenizers", "datasets", "safetensors", "huggingface_hub", "omegaconf"]


def pytest_configure(config):
    """The data floor writes into a temporary folder for the whole run."""
    config.eso_data_dir = tempfile.mkdtemp(prefix="eso-test-data-")
    os.environ["ESO_DATA_DIR"] = config.eso_data_dir


def pytest_unconfigure(config):
    shutil.rmtree(config.eso_data_dir, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    missing = [name for name in EXTRAS if importlib.util.find_spec(name) is None]
    if missing:
        terminalreporter.write_line(
            f"note: {', '.join(missing)} not installed: the tests of the paper's protocols that "
            "need them were skipped (pip install -r requirements-dev.txt)",
            yellow=True,
        )


def make_tiny(alpha_0=0.5, variant="B", L=24, V=11, big=True, seed=0, device="cpu", **kw):
    """A tiny Eso-LM; big=True gives large random weights, so that no sampler looks exact by
    accident."""
    import eso

    torch.manual_seed(seed)
    config = eso.EsoConfig(
        block_size=L,
        vocab_size=V,
        n_layer=2,
        n_head=2,
        n_embd=32,
        alpha_0=alpha_0,
        variant=variant,
        **kw,
    )
    model = eso.EsoLM(config).eval()
    if big:
        for p in model.parameters():
            torch.nn.init.normal_(p, std=1.0)
    return model.to(device)


@pytest.fixture
def tiny():
    """tiny(alpha_0, variant, L, V, big, seed, device, **config): a tiny model (make_tiny)."""
    return make_tiny


# the flags of a tiny training run
TINY_FLAGS = [
    "--n_layer=1",
    "--n_head=2",
    "--n_embd=32",
    "--block_size=32",
    "--batch_size=4",
    "--eval_iters=2",
    "--log_interval=1",
    "--warmup_iters=2",
    "--lr_schedule=constant",
]


@pytest.fixture
def tiny_flags():
    """The flags of a tiny training run (a fresh list: a test may extend it)."""
    return list(TINY_FLAGS)


@pytest.fixture
def py():
    """py(*args, timeout=240) -> CompletedProcess: a command as a user runs it, in a fresh
    Python process, from the repository's root."""

    def call(*args, timeout=240, **kw):
        command = [sys.executable, *args]
        return subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw
        )

    return call


@pytest.fixture
def run(capsys):
    """run(module, *args) -> (exit status, stdout, stderr): a script's main() in this process,
    through cli.run as `python module.py args` would (a subprocess only costs start-up time)."""
    import cli

    def call(module, *args):
        with pytest.raises(SystemExit) as e:
            cli.run(module.main, f"{module.__name__}.py", [str(a) for a in args])
        out, err = capsys.readouterr()
        return e.value.code, out, err

    return call


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A fresh, empty data folder for this test alone."""
    monkeypatch.setenv("ESO_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def corpus_text(n_topics=40):
    """Some English of Python's own documentation (the pydoc topics), a few hundred KB."""
    import pydoc_data.topics as topics

    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics)[:n_topics])


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """A small byte-level dataset, prepared once in the run's data folder as
    `data/prepare.py --input corpus.txt --name corpus` does; its name."""
    from data import prepare

    src = tmp_path_factory.mktemp("text") / "corpus.txt"
    src.write_text(corpus_text())
    assert prepare_main(prepare, ["--input", str(src), "--name", "corpus"]) == 0
    return "corpus"


def prepare_main(prepare, args):
    """data/prepare.py's main in this process: its exit status."""
    try:
        prepare.main(args)
    except SystemExit as e:
        return e.code
    return 0


@pytest.fixture(scope="session")
def trained(dataset, tmp_path_factory):
    """A tiny model trained 6 iterations with EMA (validation at 3 and 6), and an alpha_0 = 0
    judge, each by `python train.py` in its own process: their out_dirs."""
    out = tmp_path_factory.mktemp("run")
    judge = tmp_path_factory.mktemp("judge")
    flags = TINY_FLAGS
    runs = [
        (out, ["--max_iters=6", "--eval_interval=3", "--ema=0.5"]),
        (judge, ["--alpha_0=0", "--max_iters=2", "--eval_interval=2"]),
    ]
    for folder, extra in runs:
        args = [f"--dataset={dataset}", f"--out_dir={folder}", *extra, *flags]
        r = subprocess.run(
            [sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
    return out, judge


# GPT-2's pre-tokenizing pattern (tiktoken's r50k_base), and its <|endoftext|>
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_EOT = 256  # the stand-in's id for it


@pytest.fixture
def gpt2(monkeypatch):
    """A stand-in for GPT-2's encoding (its files are not here offline): the UTF-8 bytes as ids,
    and <|endoftext|> = 256, named gpt2, as the code branches on the name. It is what
    data.common.get_tokenizer("gpt2") returns for the test."""
    import tiktoken

    from data import common

    standin = tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks={bytes([i]): i for i in range(256)},
        special_tokens={"<|endoftext|>": GPT2_EOT},
    )
    real = common.get_tokenizer

    def get_tokenizer(name, vocab=None):
        if name == "gpt2":
            return standin
        return real(name, vocab)

    monkeypatch.setattr(common, "get_tokenizer", get_tokenizer)
    return standin


class Exploit:
    """Unpickles to os.system("touch MARKER"): what a hostile checkpoint runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Allocates:
    """Unpickles to bytearray(n): what torch.load(weights_only=True) allows."""

    def __init__(self, n):
        self.n = n

    def __reduce__(self):
        return (bytearray, (self.n,))


@pytest.fixture
def hostile():
    """Objects whose unpickling would run a command (Exploit(marker)) or allocate n bytes
    (Allocates(n))."""
    import types

    return types.SimpleNamespace(Exploit=Exploit, Allocates=Allocates)


@pytest.fixture
def dynamo_eager(monkeypatch):
    """The compiled sampler through Dynamo's eager backend: the same graphs, guards and shapes as
    inductor's, without the seconds of code generation; KEY_BLOCK 8, so that the keys attended
    vary."""
    import compiled

    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    monkeypatch.setattr(compiled, "KEY_BLOCK", 8)
    yield
    torch._dynamo.reset()


@pytest.fixture
def prepare_cli(capsys):
    """data/prepare.py's command line in this process: .run(args) -> (exit status, stdout,
    stderr), and .refuses(args, message), which checks that it exits 2 with one line that says
    message, and returns that line."""
    import types

    from data import prepare

    def run(args):
        capsys.readouterr()  # what the test printed before (progress bars) is not main's
        try:
            prepare.main(args)
            code = 0
        except SystemExit as e:
            code = e.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    def refuses(args, message):
        code, _, err = run(args)
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1, err
        assert message in err, err
        return err

    return types.SimpleNamespace(run=run, refuses=refuses)


@pytest.fixture
def made_without_device():
    """A TorchFunctionMode class that records the torch calls returning a tensor on the meta
    device. Entered under torch.set_default_device("meta") with the model on the CPU: a tensor
    created without device= lands on meta, and so does whatever is computed from it. (A crash
    is no evidence: SDPA takes a meta attention mask beside CPU tensors without complaint.)"""
    from torch.overrides import TorchFunctionMode

    class MadeWithoutDevice(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            leaves = torch.utils._pytree.tree_leaves(out)
            on_meta = [t for t in leaves if isinstance(t, torch.Tensor) and t.device.type == "meta"]
            if on_meta:
                self.calls.append(getattr(func, "__name__", str(func)))
            return out

    return MadeWithoutDevice
