"""What recording a full-size method's fingerprint costs: `invert`, `edit` and `restore` record `made_with` (a
digest of every weight of the method and its options) with each result, so that a re-run skips only the work it
would do again. Full-size HyperInverter (ffhq-1024, IR-SE50 encoders, D=128; random weights: the cost depends on
the sizes only) holds 1.5 GB of weights.

    python benchmarks/bench_fingerprint.py --out benchmarks/results/fingerprint-cpu.md

Two ways over the same module, alternating: `io.work.fingerprint_of` as it is (tensors of 1 MiB and more hashed in
16 MiB blocks on every core, each read where it lies), and the earlier form (one sha256 stream over every tensor's
bytes, a transposed weight copied to a contiguous one first), written out here for the comparison.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from hyperinverter.inversion.files import generator_fingerprint, made_with_digest
from hyperinverter.io.files import markdown_bytes
from hyperinverter.methods.hyperinverter import HyperInverter
from hyperinverter.models.encoders import encoder_preset
from hyperinverter.models.hypernetwork import HyperNetwork
from hyperinverter.models.stylegan2 import Generator, GeneratorConfig


def one_stream(parts: dict[str, torch.nn.Module]) -> str:
    """The earlier form of the trained parts' digest: every tensor's bytes through one sha256, each made contiguous
    first."""
    digest = hashlib.sha256()
    for role, module in sorted(parts.items()):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(f"{role}.{name}".encode())
            digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "an unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    G = Generator(GeneratorConfig(resolution=1024)).eval()
    preset = encoder_preset("ffhq")
    model = HyperInverter(G, w_encoder=preset.build_w_encoder(), feature_encoder=preset.build_feature_encoder(),
                          hypernetwork=HyperNetwork.from_generator(G, hidden_dim=128), encoder_resolution=256).eval()
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e9
    ways = {"fingerprint_of (blocks on every core, in place)": lambda: made_with_digest(model, {}),
            # (made_with was the generator's fingerprint, unchanged, and one stream over the trained parts)
            "one stream, contiguous copies (before)": lambda: (generator_fingerprint(G), one_stream(model.parts()))}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():
            start = time.perf_counter()
            way()
            times[name].append(time.perf_counter() - start)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    how = (f"Seconds, median (min-max) of {args.rounds} rounds, alternating, on {_cpu()} ({cores} cores), torch "
           f"{torch.__version__}: `{' '.join(['python', *sys.argv])}`")
    lines = ["# Recording a full-size method's fingerprint, on the CPU", "",
             __doc__.split("\n\n")[0].replace("\n", " "), "", how, "",
             f"| way ({size:.2f} GB of weights) | seconds |", "|---|---|"]
    for name, values in times.items():
        lines.append(f"| {name} | {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}) |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out is not None:
        args.out.write_bytes(markdown_bytes(table))


if __name__ == "__main__":
    main()
