"""``invert``, ``edit``, ``interpolate``, ``export-generator``, ``models``, ``download``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="pipeline folder or catalogue name (see `hyperinverter models`)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, mps")


def register(sub) -> None:
    p = sub.add_parser("invert", help="invert photos: reconstruction, comparison strip and w/Δθ per image",
                       description="Invert images (files or folders). Per input NAME, writes NAME.png (the result), "
                       "NAME_compare.png (input | Phase I | HyperInverter) and NAME.safetensors (w and Δθ). "
                       "An unreadable image, or one without a face under --align, is reported and skipped. "
                       "Under torchrun each rank inverts every WORLD_SIZE-th file.")
    p.add_argument("inputs", nargs="+", type=Path)
    _add_model(p)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--phase1-only", action="store_true", help="stop after Phase I (W encoder only)")
    p.add_argument("--align", action="store_true",
                   help="find every face (dlib 68 landmarks) and FFHQ-align it at the model's crop scale; the "
                   "placement is kept so that `edit --paste-back` can put edits back into the photo")
    p.add_argument("--min-face-score", type=float, default=0.5,
                   help="with --align, the lowest dlib detection score kept (default 0.5 drops face-like patterns; "
                   "0 is dlib's own threshold, for small or blurry faces)")
    p.set_defaults(func=run_invert)

    p = sub.add_parser("edit", help="edit inverted images along a direction, reusing their Δθ")
    p.add_argument("inputs", nargs="+", type=Path, help="images, or .safetensors files written by `invert`")
    _add_model(p)
    p.add_argument("--direction", required=True, type=Path, help="InterFaceGAN .pt/.npy, GANSpace .pt, or ours")
    p.add_argument("--strength", type=float, nargs="+", default=None,
                   help="one or more strengths (GANSpace: the value the coordinate is set to)")
    p.add_argument("--component", type=int, help="GANSpace component index")
    p.add_argument("--layers", help="GANSpace layer range START:END")
    p.add_argument("--paste-back", action="store_true",
                   help="for inversion files of aligned faces (`invert --align`), also write the photo with the "
                   "edited face pasted back")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=run_edit)

    p = sub.add_parser("interpolate", help="interpolate two real images (w and Δθ): PNG strip and GIF")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    _add_model(p)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--out", required=True, type=Path, help="output stem: writes OUT.png and OUT.gif")
    p.set_defaults(func=run_interpolate)

    p = sub.add_parser("export-generator", help="write θ+Δθ of one image as a standalone generator file")
    p.add_argument("input", type=Path, help="an image or a .safetensors file written by `invert`")
    _add_model(p)
    p.add_argument("--out", required=True, type=Path, help="'.pt' -> rosinality file, else our folder format")
    p.set_defaults(func=run_export)

    p = sub.add_parser("import-official", help="convert a released HyperInverter (or pSp/e4e W-encoder) checkpoint "
                       "and its generator into a pipeline folder")
    p.add_argument("checkpoint", type=Path, help="hyper_inverter_*.pt, or a W-encoder .pt with --w-encoder-only")
    p.add_argument("--generator", required=True, type=Path, help="the NVIDIA .pkl it was trained with (or any format)")
    p.add_argument("--w-encoder-only", action="store_true", help="the checkpoint is a pSp/e4e W encoder (Phase I)")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=run_import_official)

    p = sub.add_parser("models", help="list bundled and downloadable models")
    p.set_defaults(func=run_models)

    p = sub.add_parser("download", help="fetch a catalogue model into the cache and verify its sha256")
    p.add_argument("name")
    p.set_defaults(func=run_download)


def _load_pipeline(args):
    from ..pipeline import InversionPipeline

    return InversionPipeline.from_pretrained(args.model, device=args.device)


def _result_for(pipe, path: Path):
    """(``InversionResult``, placement or None) for an image (inverted now) or an inversion file (loaded)."""
    from ..inversion.base import InversionResult
    from ..inversion.files import load_inversion

    if path.suffix == ".safetensors":
        ws, delta, meta = load_inversion(path)
        ws = ws.to(pipe.device)
        delta = delta.to(pipe.device) if delta is not None else None
        image = pipe.render(ws, delta)
        return InversionResult(ws=ws, image=image, weight_delta=delta), meta
    return pipe.invert([path]), {"placement": None, "source": str(path)}


def run_invert(args: argparse.Namespace) -> int:
    from ..inversion.batch import invert_files
    from ..io.images import find_images

    pipe = _load_pipeline(args)
    paths = find_images(args.inputs)
    if not paths:
        print("error: no images found in the inputs", file=sys.stderr)
        return 2
    detector = None
    if args.align:
        from ..align import Dlib68Detector

        detector = Dlib68Detector(min_score=args.min_face_score)
    report = invert_files(pipe, paths, args.out, batch_size=args.batch_size, phase2=not args.phase1_only,
                          detector=detector, model_name=str(args.model))
    for reason in report.skipped:
        print(f"skipped {reason}", file=sys.stderr)
    rank = f"rank {report.rank}/{report.world_size}: " if report.world_size > 1 else ""
    print(f"{rank}inverted {len(report.written)} picture(s) into {args.out} ({report.seconds_per_image:.3f} "
          f"s/image); skipped {len(report.skipped)}")
    return 0 if report.written or not report.skipped else 1


def _direction(args, num_ws: int):
    from ..editing.directions import load_direction
    from ..editing.sheet import parse_layer_range

    start, end = parse_layer_range(args.layers, num_ws) if args.layers else (None, None)
    first = args.strength[0] if args.strength else None
    return load_direction(args.direction, index=args.component, start=start, end=end, strength=first)


def run_edit(args: argparse.Namespace) -> int:
    import torch

    from ..io.images import make_grid, read_image, save_image, tensor_to_pil

    pipe = _load_pipeline(args)
    direction = _direction(args, pipe.generator.num_ws)
    strengths = args.strength or [None]
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.inputs:
        result, meta = _result_for(pipe, path)
        edits = [pipe.edit(result, direction, s) for s in strengths]
        for s, img in zip(strengths, edits):
            label = "default" if s is None else f"{s:+g}"
            save_image(img, args.out / f"{path.stem}_{direction.name}_{label}.png")
            if args.paste_back:
                if meta["placement"] is None:
                    print(f"{path}: no face placement (invert it with --align to paste back)", file=sys.stderr)
                    continue
                from ..align import paste_back_placement

                photo = read_image(meta["source"])
                pasted = paste_back_placement(photo, tensor_to_pil(img.cpu())[0].convert("RGB"), meta["placement"])
                save_image(pasted, args.out / f"{path.stem}_{direction.name}_{label}_photo.png")
        save_image(make_grid(torch.cat([result.image] + edits).cpu(), nrow=len(edits) + 1),
                   args.out / f"{path.stem}_{direction.name}_strip.png")
    print(f"wrote edits of {len(args.inputs)} input(s) along {direction.name!r} to {args.out}")
    return 0


def run_interpolate(args: argparse.Namespace) -> int:
    from ..io.images import make_grid, save_gif, save_image

    pipe = _load_pipeline(args)
    frames = pipe.interpolate(_result_for(pipe, args.a)[0], _result_for(pipe, args.b)[0], steps=args.steps).cpu()
    out = args.out.with_suffix("")
    save_image(make_grid(frames, nrow=len(frames)), out.with_suffix(".png"))
    save_gif(list(frames) + list(frames.flip(0)), out.with_suffix(".gif"))
    print(f"wrote {out.with_suffix('.png')} and {out.with_suffix('.gif')}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..convert.gan_files import save_gan, save_rosinality
    from ..inversion.base import InversionResult
    from ..inversion.export import bake_weight_delta
    from ..inversion.files import save_inversion

    pipe = _load_pipeline(args)
    result, _ = _result_for(pipe, args.input)
    if result.weight_delta is None:
        raise ValueError("this inversion has no Δθ (a Phase I model?): the generator would be unchanged")
    baked = bake_weight_delta(pipe.generator, result.weight_delta.select(0)).cpu()
    if args.out.suffix in (".pt", ".pth"):
        save_rosinality(args.out, baked)
    else:
        save_gan(args.out, baked)
    # The baked generator renders the image from the inverted code (no offsets any more): store that code too.
    latent = args.out.with_name(args.out.stem + "_ws.safetensors")
    save_inversion(latent, InversionResult(ws=result.ws[:1].cpu(), image=result.image[:1].cpu()),
                   source=str(args.input), model=str(args.out))
    print(f"wrote the image-specific generator to {args.out} and its code (ws) to {latent}")
    return 0


def run_import_official(args: argparse.Namespace) -> int:
    from ..convert.official import load_official_hyperinverter, load_psp_w_encoder
    from ..pipeline import save_pipeline

    load = load_psp_w_encoder if args.w_encoder_only else load_official_hyperinverter
    model = load(args.checkpoint, args.generator)
    save_pipeline(model, args.out)
    print(f"wrote the pipeline to {args.out}; use it with --model {args.out}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    from ..hub import cache_dir, catalogue_rows

    rows = catalogue_rows()
    print(f"{'name':32} {'kind':26} {'status':12} {'size':10} {'sha256':15} file")
    for r in rows:
        print(f"{r['name']:32} {r['kind']:26} {r['status']:12} {r['size']:10} {r['sha256']:15} {r['file']}")
    print(f"\ncache: {cache_dir()} (set HYPERINVERTER_CACHE to move it)")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from ..hub import download

    path = download(args.name)
    print(f"{args.name}: {path}")
    return 0


def register_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score Phase I and HyperInverter on a held-out image folder",
                       description="Inverts every image of DATA and reports MSE, PSNR, SSIM, MS-SSIM (and identity "
                       "similarity with SFace when --identity is given) for Phase I and the final result.")
    p.add_argument("--data", required=True, type=Path, help="held-out image folder (never the training data)")
    _add_model(p)
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--identity", action="store_true", help="also report SFace identity similarity (faces)")
    p.add_argument("--out", required=True, type=Path, help="report stem: writes OUT.md and OUT.json")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from ..data.folder import ImageFolderDataset
    from ..evaluation import evaluate, quality_bars
    from ..training.run import preload_uint8, uint8_to_float

    pipe = _load_pipeline(args)
    G = pipe.generator
    dataset = ImageFolderDataset(args.data, resolution=G.resolution, channels=G.config.img_channels, split="all")
    images = uint8_to_float(preload_uint8(dataset))
    if args.max_images:
        images = images[: args.max_images]
    extra = {}
    if args.identity:
        from ..losses.identity import (
            FFHQ_CROP,
            crop_for_align_scale,
            identity_similarity,
            load_identity_embedder,
        )

        embedder = load_identity_embedder("sface", pipe.device)
        crop = crop_for_align_scale(FFHQ_CROP, pipe.align_scale)  # the face box of this model's framing
        extra["id_sim"] = lambda a, b: identity_similarity(embedder, a, b, crop=crop)
    report = evaluate(pipe, images, dataset=str(args.data), batch_size=args.batch_size, extra_metrics=extra)
    report.notes.append(f"model: {args.model}")
    report.save(args.out)
    print(report.to_markdown())
    bars = quality_bars(report)
    print("quality bars: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in bars.items()))
    print(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.json')}")
    return 0
