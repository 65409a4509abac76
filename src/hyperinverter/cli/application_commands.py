"""``restore`` and ``swap``: E2Style's applications (restoration of degraded images, face swapping)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .arguments import add_dtype
from .inversion_commands import _add_method, _add_model, _load_pipeline, _report_failures


def register(sub) -> None:
    p = sub.add_parser("restore", help="restore degraded images with a model trained for a restoration task",
                       description="Each input NAME gives NAME.png (the restored image) and NAME_compare.png (what "
                       "the model read | restored | with --simulate, the clean input). The model's method must have "
                       "been trained for a task (`hyperinverter train e2style` with task: sr4, inpainting, "
                       "colorization, denoising, sr2..sr16). A bad input is reported and the run goes on; the exit "
                       "status is 1 if any input failed.")
    p.add_argument("inputs", nargs="+", type=Path)
    _add_model(p)
    add_dtype(p)
    _add_method(p)
    p.add_argument("--simulate", action="store_true",
                   help="the inputs are clean: degrade them first with the model's task (seeded), to compare")
    p.add_argument("--out", required=True, type=Path, help="the folder for the results")
    p.set_defaults(func=run_restore)

    p = sub.add_parser("swap", help="put the face of one aligned image onto another and reconstruct the composite",
                       description="Both images are aligned faces in the model's framing (see invert --align). The "
                       "source's face region (an ellipse in the model's face box, feathered) is pasted into the "
                       "target; the composite is inverted, so the generator blends the seams. Writes OUT (the "
                       "result) and OUT_compare.png (source | target | composite | result).")
    p.add_argument("source", type=Path)
    p.add_argument("target", type=Path)
    _add_model(p)
    add_dtype(p)
    _add_method(p)
    p.add_argument("--out", required=True, type=Path, help="the result image (.png)")
    p.set_defaults(func=run_swap)


def run_restore(args: argparse.Namespace) -> int:
    import torch

    from ..errors import InputError
    from ..io.files import atomic_write_group
    from ..io.images import find_images, image_bytes, make_grid
    from ..restoration import restoration_task, restore

    found = find_images(args.inputs)
    failures = list(found.problems)
    pipe = _load_pipeline(args)
    task = restoration_task(pipe)
    if task is None:
        print(f"error: {args.model}: its {pipe.default_method} was not trained for a restoration task "
              "(train one with `hyperinverter train e2style` and task: sr4, ...)", file=sys.stderr)
        return 2
    written = 0
    for path in found.paths:
        try:
            x = pipe.prepare([path])
        except (InputError, OSError) as e:  # an unreadable image: reported, the run goes on
            failures.append(f"{path}: {e}")
            continue
        out = restore(pipe, x, simulate=args.simulate)
        panels = [out.degraded, out.result.image] + ([x.to(out.degraded.device)] if args.simulate else [])
        stem = args.out / path.stem
        atomic_write_group([(stem.with_suffix(".png"), image_bytes(out.result.image[0])),
                            (stem.with_name(stem.name + "_compare.png"),
                             image_bytes(make_grid(torch.cat(panels), nrow=len(panels))))])
        written += 1
    _report_failures(failures)
    print(f"restored {written} image(s) ({task}) into {args.out}; {len(failures)} failed")
    return 1 if failures else 0


def run_swap(args: argparse.Namespace) -> int:
    import torch

    from ..io.files import atomic_write_group
    from ..io.images import image_bytes, make_grid
    from ..restoration import face_swap

    pipe = _load_pipeline(args)
    source, target = pipe.prepare([args.source]), pipe.prepare([args.target])
    swap = face_swap(pipe, source, target)
    out = args.out if args.out.suffix else args.out.with_suffix(".png")
    panels = torch.cat([source, target, swap.composite, swap.result.image])
    atomic_write_group([(out, image_bytes(swap.result.image[0])),
                        (out.with_name(out.stem + "_compare.png"), image_bytes(make_grid(panels, nrow=4)))])
    print(f"wrote {out} and {out.with_name(out.stem + '_compare.png')}")
    return 0
