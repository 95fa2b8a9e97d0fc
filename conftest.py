"""What test_eso.py's tests share: tiny models, the devices, the scripts run in-process, and a
small dataset, all in temporary folders (nothing is written into the checkout:
ESO_DATA_DIR points the data floor at a temporary folder for the whole run)."""

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
DATA_DIR = Path(tempfile.mkdtemp(prefix="eso-test-data-"))
os.environ["ESO_DATA_DIR"] = str(DATA_DIR)  # before anything prepares or loads a dataset

import cli  # noqa: E402 (after ESO_DATA_DIR is set, which the modules read when they run)
import compiled  # noqa: E402
import eso  # noqa: E402
from data import prepare  # noqa: E402

# The tests that a GPU can break (the cached sampler, the fast sequential term, compile, bf16)
# run on every device torch sees here: the CPU, and CUDA or MPS where present.
DEVICES = ["cpu"]
if torch.cuda.is_available():
    DEVICES.append("cuda")
if torch.backends.mps.is_available():
    DEVICES.append("mps")
# the optional packages of the paper's protocols; tests that need one say so when it is missing
EXTRAS = ["transformers", "tokenizers", "datasets", "safetensors", "huggingface_hub"]
MISSING = [name for name in EXTRAS if importlib.util.find_spec(name) is None]
# flags for a tiny training run
TINY = [
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


def tiny(alpha_0=0.5, variant="B", L=24, V=11, big=True, seed=0, device="cpu", **kw):
    """A tiny model; big=True gives large random weights, so that no sampler looks exact by
    accident."""
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


def gen(seed, device="cpu"):
    return torch.Generator(device).manual_seed(seed)


def py(*args, timeout=240, **kw):
    """Run a command like a user would, in a fresh process; returns the CompletedProcess."""
    command = [sys.executable, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(DATA_DIR, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    if MISSING:
        terminalreporter.write_line(
            f"note: {', '.join(MISSING)} not installed: the tests of the paper's protocols that "
            "need them were skipped (pip install -r requirements-dev.txt)",
            yellow=True,
        )


@pytest.fixture
def run(capsys):
    """run(module, *args) -> (exit status, stdout, stderr): a script's main() in this process,
    through cli.run as `python module.py args` would (a subprocess only costs start-up time)."""

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
    import pydoc_data.topics as topics

    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics)[:n_topics])


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """A small byte-level dataset, prepared once in the run's data folder; its name."""
    src = tmp_path_factory.mktemp("text") / "corpus.txt"
    src.write_text(corpus_text())
    prepare.prepare(inputs=[str(src)], name="corpus")
    return "corpus"


@pytest.fixture
def dynamo_eager(monkeypatch):
    """The compiled sampler through Dynamo's eager backend: the same graphs, guards and shapes as
    inductor's, without the seconds of code generation; KEY_BLOCK 8, so that the keys attended
    vary."""
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    monkeypatch.setattr(compiled, "KEY_BLOCK", 8)
    yield
    torch._dynamo.reset()
