"""
Where a compiled cached sampling step's time goes: inside the compiled forward (EsoLM.hidden) or in the
sampler's Python around it. bench.py's model (6 x 384, vocab 256), L = 1024, alpha_0 = 1, NFE ~ L, batch 1;
the first run compiles, then the medians of 5 runs.  python -m results.step_split  (from the repository root)
"""

import statistics
import time

import torch

import bench
import cli
import eso


def main():
    c, _ = cli.parse(bench.CONFIG, [], __doc__)
    model = bench.model_for(c, torch.device("cpu"), 1024).eval()
    inside, compiled_step = [0.0], eso.compiled_decode_step

    def timed_step(device):  # the compiled step, with a stopwatch around each call
        step = compiled_step(device)

        def run(*args):
            t0 = time.perf_counter()
            out = step(*args)
            inside[0] += time.perf_counter() - t0
            return out

        return run

    eso.compiled_decode_step = timed_step
    runs = []
    with torch.no_grad():
        for i in range(6):
            inside[0], t0 = 0.0, time.perf_counter()
            _, nfe = model.generate(
                1, 10**6, alpha_0=1.0, compile=True, generator=torch.Generator().manual_seed(0)
            )
            if i:  # run 0 compiles
                runs.append((time.perf_counter() - t0, inside[0]))
    whole, fwd = (1e3 * statistics.median(r[k] for r in runs) / nfe for k in (0, 1))
    print(
        f"per step (ms), median of {len(runs)} runs of NFE {nfe}: whole {whole:.3f}, inside the compiled forward "
        f"{fwd:.3f}, the sampler around it {whole - fwd:.3f}"
    )


if __name__ == "__main__":
    main()
