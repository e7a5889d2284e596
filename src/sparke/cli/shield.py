"""``sparke shield``: a SPELL shield (a bank of the model's x0 rows) from a folder of images or a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import err, human_size, image_progress, out, say, user_errors, user_warnings


def shield_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="A folder of images (with or without metadata.jsonl), a run folder of `sparke generate`, or a "
            "sparke or none run's bank.safetensors (its run's images are used).",
            show_default=False,
        ),
    ],
    model: Annotated[
        str, typer.Option(help="The model the shield is for: 'embedded', a pipeline folder or a hub id.")
    ] = "embedded",
    out_file: Annotated[
        Path, typer.Option("--out", "-o", help="The shield file to write (safetensors).")
    ] = Path("shield.safetensors"),
    height: Annotated[
        int | None,
        typer.Option(min=8, help="Resize the images to this height (pixels).  \\[default: their own]"),
    ] = None,
    width: Annotated[
        int | None,
        typer.Option(min=8, help="Resize the images to this width (pixels).  \\[default: their own]"),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, ...")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Images encoded at a time.")] = 8,
) -> None:
    """Make a SPELL shield from images: their x0 rows in the model's own space, for `sparke generate --method spell --shield FILE`.

    Latent models encode the images with their VAE (the posterior mean, scaled as the pipeline's latents);
    pixel-space models (the embedded one) take the pixels. The images must be the size you generate at
    (--height and --width resize them). SPELL then keeps every new image out of a ball around each of them.
    """
    from sparke.runs import RunError
    from sparke.runs.generation import resolve_device
    from sparke.runs.model import load_model
    from sparke.runs.shield import make_shield, shield_images

    with user_errors(), user_warnings():
        if out_file.is_dir():
            raise RunError(
                f"--out {out_file}: is a folder; give the file to write, e.g. {out_file / 'shield.safetensors'}"
            )
        if not out_file.parent.is_dir():
            raise RunError(f"--out {out_file}: no such folder {out_file.parent}")
        if (height is None) != (width is None):
            raise RunError("--height and --width: give both or neither")
        folder, note = shield_images(source)
        say(note, "note")
        with err.status(f"loading {model} ..."):
            pipe = load_model(model, resolve_device(device))
        size = None if height is None else (height, width)
        with image_progress("shield") as progress:
            bank = make_shield(
                folder,
                pipe,
                size,
                batch_size,
                lambda done, total: progress("images", done, total),
                {"model": model, "source": str(source.absolute())},
            )
        try:
            bank.save(out_file)
        except OSError as error:
            raise RunError(f"{out_file}: cannot write ({error.strerror or error})") from None
    meta = bank.metadata
    say(
        f"{out_file} ({human_size(out_file.stat().st_size)}): {len(bank):,} rows of {bank.x.shape[1]:,} "
        f"({meta['width']}x{meta['height']} images); use it with --method spell --shield {out_file}",
        "done",
        console=out,
    )
