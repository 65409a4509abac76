"""Add a method trained after a bundle was made (e.g. HyperStyle on the bundle's own W encoder) to that bundle.

    python scripts/add_method_to_bundle.py --bundle src/hyperinverter/bundled/faces-64 \\
        --run runs/faces64-hyperstyle --method hyperstyle --examples data/faces64/heldout \\
        [--metrics benchmarks/results/faces-64-heldout.md] [--extra-generator sketch_generator=runs/...]

The run's ``best`` model must hold ``METHOD`` over the bundle's own generator and, where it has one, the
bundle's W encoder (the same weights as the bundle's fp16 ones, read back in fp32). The new bundle holds every
method it held plus ``METHOD`` (components shared, weights in fp16); every other file of the bundle is kept;
``configs/METHOD.yaml`` is the run's resolved config; the model card gets a section on the method (command,
steps, CPU hours, validation losses, added files, the evaluation table). ``--extra-generator NAME=PATH`` also
stores a generator (fp16) as ``NAME/``, e.g. a fine-tuned copy for domain adaptation. As packaging, it is
built in a hidden temporary folder, checked (the fp16 model reloads and matches the fp32 one; the size budget
holds), and only then swapped in.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from package_bundled import (  # the packaging helpers, shared
    BUDGET_MB,
    _fmt_losses,
    _size,
    _when,
    finish_staged_bundle,
    select_examples,
    summarize_run,
    training_command,
    verify_fp16,
)

from hyperinverter.convert.gan_files import load_gan
from hyperinverter.io.files import staged_directory
from hyperinverter.io.gan import save_gan
from hyperinverter.methods.registry import get_method as method_class
from hyperinverter.pipeline import InversionPipeline, read_pipeline_index, save_pipeline

logger = logging.getLogger("add_method_to_bundle")

TRAINER = {"hyperstyle": "hyperstyle", "psp": "psp", "e4e": "psp", "e2style": "e2style"}  # method -> `hyperinverter train` kind


def _same_stored_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether ``a`` and ``b`` store the same weights in the bundle's fp16 (a run may have trained on the fp32
    original of a bundled network, e.g. a generator in full precision)."""
    sa, sb = a.state_dict(), b.state_dict()

    def stored(t: torch.Tensor) -> torch.Tensor:
        return t.detach().cpu().half() if t.is_floating_point() else t.cpu()

    return sa.keys() == sb.keys() and all(torch.equal(stored(sa[k]), stored(sb[k])) for k in sa)


def combined_methods(bundle: InversionPipeline, run: InversionPipeline, method: str) -> dict:
    """The bundle's methods plus the run's ``method``, rebuilt on the bundle's own modules where they agree."""
    if method in bundle.methods:
        raise ValueError(f"the bundle already holds {method!r}")
    if method not in run.methods:
        raise ValueError(f"the run's model holds {sorted(run.methods)}, not {method!r}")
    new = run.inverter(method)
    if not _same_stored_weights(new.generator, bundle.generator):
        raise ValueError("the run was trained on another generator than the bundle's")
    parts = dict(new.parts())
    shared = {role: m for inv in bundle.methods.values() for role, m in inv.parts().items()}
    for role, module in parts.items():
        if role in shared and type(shared[role]) is type(module) and _same_stored_weights(shared[role], module):
            parts[role] = shared[role]  # stored once, as the bundle's other methods use it
        elif role == "w_encoder":
            raise ValueError("the run's W encoder is not the bundle's: it was trained from another start")
    added = method_class(method).from_parts(bundle.generator, parts, new.settings())
    return {**bundle.methods, method: added}


def method_section(method: str, summary, command: str, added: Sequence[Path], folder: Path, metrics: str | None,
                   extra_notes: Sequence[str]) -> str:
    label = method_class(method).label
    s = summary
    lines = [
        "",
        f"## {label} (added after packaging)",
        "",
        f"`{method}` in `pipeline.json`, over the same generator and, where it uses one, the same W encoder as the "
        f"methods above (stored once). Trained with:",
        "",
        "```bash",
        command,
        "```",
        "",
        "| run | shipped | steps done / planned | training hours (CPU) | first – last log | validation loss: "
        "final (step) | best (step) = shipped |",
        "|---|---|---|---|---|---|---|",
        f"| {method} | `best` (lowest val loss) | {s.steps_done} / {s.steps_planned} | {s.hours:.2f} | "
        f"{_when(s.first_time)} – {_when(s.last_time)} | "
        + (f"{s.val_final[1]:.5f} ({s.val_final[0]}) | {s.val_best[1]:.5f} ({s.val_best[0]}) |" if s.val_best
           else "– | – |"),
        "",
        f"Last training losses: {_fmt_losses(s.final_losses)}. The resolved config is `configs/{method}.yaml`.",
        *(["", *extra_notes] if extra_notes else []),
        "",
        "Files added:",
        "",
        "| file | size |",
        "|---|---|",
        *(f"| `{p.relative_to(folder).as_posix()}` | {_size(p.stat().st_size)} |" for p in added),
        f"| all files now (without this card) | "
        f"{_size(sum(p.stat().st_size for p in folder.rglob('*') if p.is_file() and p.name != 'MODEL_CARD.md'))} |",
    ]
    if metrics:
        lines += ["", f"### Evaluation with {label}", "", metrics.rstrip()]
    return "\n".join(lines) + "\n"


def add_method(bundle_dir: Path, run_dir: Path, method: str, *, examples: Path, metrics: Path | None = None,
               extra_generators: dict[str, Path] | None = None, notes: Sequence[str] = (),
               repo_config: Path | None = None, budget_mb: float = BUDGET_MB, device: str = "cpu") -> int:
    """Add ``method`` from the run ``run_dir`` (its ``best``) to ``bundle_dir``; returns the new size in bytes."""
    bundle_dir, run_dir = Path(bundle_dir), Path(run_dir)
    bundle = InversionPipeline.from_pretrained(bundle_dir, device=device)
    run = InversionPipeline.from_pretrained(run_dir / "best", device=device)
    methods = combined_methods(bundle, run, method)
    summary = summarize_run(method, run_dir)
    if not summary.finished:
        logger.warning("%s stopped at step %d of %s: adding an unfinished run", run_dir, summary.steps_done,
                       summary.steps_planned)
    kind = TRAINER.get(method, method)
    command = training_command(kind, summary.config, repo_config)
    index = read_pipeline_index(bundle_dir)
    example_files = select_examples(examples, [Path(summary.config["data"])] if summary.config.get("data") else [])
    reference = InversionPipeline(methods, default_method=method, device=device)
    with staged_directory(bundle_dir, "pipeline") as tmp:
        save_pipeline(methods, tmp / "_pipeline", default_method=bundle.default_method, dtype=torch.float16,
                      align_scale=float(index.get("align_scale", 1.0)), faces=index.get("faces"),
                      discriminator=bundle.discriminator)
        written = set()
        for item in (tmp / "_pipeline").iterdir():
            os.replace(item, tmp / item.name)
            written.add(item.name)
        (tmp / "_pipeline").rmdir()
        for item in bundle_dir.iterdir():  # everything else the bundle held, unchanged
            if item.name not in written and not item.name.startswith("."):
                (shutil.copytree if item.is_dir() else shutil.copyfile)(item, tmp / item.name)
        before = {p.relative_to(bundle_dir) for p in bundle_dir.rglob("*") if p.is_file()}
        shutil.copyfile(run_dir / "config.yaml", tmp / "configs" / f"{method}.yaml")
        extra_notes = list(notes)
        for name, path in (extra_generators or {}).items():
            save_gan(tmp / name, load_gan(path).generator, dtype=torch.float16)
            extra_notes.append(f"`{name}/`: a generator stored with this bundle (fp16), from `{path}`.")
        fp16 = verify_fp16(reference, tmp, reference.prepare(example_files), device=device, method=method)
        logger.info("fp16 %s reloads; differences to fp32: %s", method, fp16)
        added = sorted(p for p in tmp.rglob("*") if p.is_file() and p.relative_to(tmp) not in before)
        text = method_section(method, summary, command, added, tmp,
                              Path(metrics).read_text() if metrics else None, extra_notes)
        with open(tmp / "MODEL_CARD.md", "a") as card:
            card.write(text)
        size, _ = finish_staged_bundle(tmp, bundle_dir, budget_mb)
    logger.info("wrote %s (%.1f MB)", bundle_dir, size / 1e6)
    return size


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--run", type=Path, required=True, help="the method's training run folder (its best/)")
    parser.add_argument("--method", required=True)
    parser.add_argument("--examples", type=Path, required=True, help="held-out images for the fp16 check")
    parser.add_argument("--metrics", type=Path, default=None, help="`hyperinverter evaluate` table (OUT.md)")
    parser.add_argument("--config", type=Path, default=None, help="the repository config the run used")
    parser.add_argument("--extra-generator", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--note", action="append", default=[], help="a paragraph for the model card section")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    extras = {}
    for item in args.extra_generator:
        name, sep, path = item.partition("=")
        if not sep or not name or "/" in name:
            parser.error(f"--extra-generator takes NAME=PATH, got {item!r}")
        extras[name] = Path(path)
    try:
        size = add_method(args.bundle, args.run, args.method, examples=args.examples, metrics=args.metrics,
                          extra_generators=extras, notes=args.note, repo_config=args.config, device=args.device)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"added {args.method} to {args.bundle}: {size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
