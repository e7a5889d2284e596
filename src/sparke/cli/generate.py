"""``sparke generate``: images for a prompt set, with or without guidance, into a resumable run folder."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any

import typer

from sparke.methods import METHODS

from .common import err, fail, out, print_notes, setting_value, user_errors, user_warnings

PROMPTS = "Prompts"
MODEL = "Model and sampling"
GUIDANCE = "Guidance (see `sparke.methods`)"
OUTPUT = "Output"

# option name -> setting name of the method (only the settings the chosen method has may be given)
SETTING_OPTIONS = (
    "every",
    "sigma_image",
    "sigma_prompt",
    "space",
    "centre",
    "objective",
    "kernel",
    "window",
    "step",
    "shield",
)


# a str Enum of the registry's names, so --help lists the choices (methods added to METHODS appear too)
MethodName = enum.Enum("MethodName", {name: name for name in METHODS}, type=str)


def _method_help() -> str:
    return "Generation method: " + ", ".join(METHODS) + " (`sparke methods` describes each)."


def _defaults(setting: str) -> str:
    """The help's default of a method setting, per method: "[default: 10 (sparke, rke, vendi); 1 (pg)]"."""
    by_value: dict[str, list[str]] = {}
    for name, spec in METHODS.items():
        if setting in spec.defaults:
            value = spec.defaults[setting]
            text = ",".join(f"{v:g}" for v in value) if isinstance(value, list) else str(value)
            by_value.setdefault(text, []).append(name)
    if not by_value:
        return ""
    if len(by_value) == 1:
        ((value, names),) = by_value.items()
        return f"  \\[default: {value}; methods {', '.join(names)}]"
    parts = "; ".join(f"{value} ({', '.join(names)})" for value, names in by_value.items())
    return f"  \\[default: {parts}]"


def generate_command(
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Run folder: images/, manifest.jsonl, bank.safetensors (made if missing).  \\[required]",
            rich_help_panel=OUTPUT,
            show_default=False,
        ),
    ] = None,
    prompts_file: Annotated[
        Path | None,
        typer.Option(
            "--prompts",
            help="Prompt file: one prompt per line ('cluster<TAB>prompt' names its cluster), or .jsonl lines "
            '{"prompt": ..., "cluster": ...}.',
            rich_help_panel=PROMPTS,
            show_default=False,
        ),
    ] = None,
    prompt: Annotated[
        list[str] | None,
        typer.Option(
            "--prompt",
            "-p",
            help="A prompt (repeat for more); added after --prompts.",
            rich_help_panel=PROMPTS,
        ),
    ] = None,
    images_per_prompt: Annotated[
        int,
        typer.Option("--images-per-prompt", "-n", min=1, help="Images per prompt.", rich_help_panel=PROMPTS),
    ] = 4,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="'embedded' (the shipped 32x32 shapes model), a diffusers pipeline folder, or a hub id "
            "(from the local cache when HF_HUB_OFFLINE=1).",
            rich_help_panel=MODEL,
        ),
    ] = "embedded",
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps", min=1, help="Denoising steps.  \\[default: the pipeline's own]", rich_help_panel=MODEL
        ),
    ] = None,
    cfg: Annotated[
        float | None,
        typer.Option(
            "--cfg",
            help="Classifier-free guidance scale.  \\[default: the pipeline's own]",
            rich_help_panel=MODEL,
        ),
    ] = None,
    negative_prompt: Annotated[
        str | None,
        typer.Option("--negative-prompt", help="Negative prompt for every image.", rich_help_panel=MODEL),
    ] = None,
    height: Annotated[
        int | None, typer.Option(help="Image height (pipelines that take one).", rich_help_panel=MODEL)
    ] = None,
    width: Annotated[
        int | None, typer.Option(help="Image width (pipelines that take one).", rich_help_panel=MODEL)
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Run seed; image i uses a seed derived from (seed, i).", rich_help_panel=MODEL)
    ] = 0,
    batch_size: Annotated[
        int,
        typer.Option("--batch-size", "-b", min=1, help="Images per pipeline call.", rich_help_panel=MODEL),
    ] = 4,
    device: Annotated[
        str, typer.Option(help="auto (cuda, mps, cpu), cpu, cuda, cuda:1, ...", rich_help_panel=MODEL)
    ] = "auto",
    dtype: Annotated[
        str,
        typer.Option(
            help="auto (float16 on CUDA for hub models, else float32), float32, float16, bfloat16.",
            rich_help_panel=MODEL,
        ),
    ] = "auto",
    method: Annotated[
        MethodName, typer.Option("--method", help=_method_help(), rich_help_panel=GUIDANCE)
    ] = MethodName("sparke"),
    scale: Annotated[
        float | None,
        typer.Option(
            help="Guidance strength (0 = unguided).  \\[default: the method's own]", rich_help_panel=GUIDANCE
        ),
    ] = None,
    every: Annotated[
        int | None,
        typer.Option(help="Guide every k-th denoising step." + _defaults("every"), rich_help_panel=GUIDANCE),
    ] = None,
    sigma_image: Annotated[
        float | None,
        typer.Option(
            help="Image-feature kernel bandwidth (unit-norm features)." + _defaults("sigma_image"),
            rich_help_panel=GUIDANCE,
        ),
    ] = None,
    sigma_prompt: Annotated[
        float | None,
        typer.Option(
            help="Prompt-feature kernel bandwidth." + _defaults("sigma_prompt"), rich_help_panel=GUIDANCE
        ),
    ] = None,
    space: Annotated[
        str | None,
        typer.Option(
            help="Feature space: x0 (the clean estimate) or latent (the paper's)." + _defaults("space"),
            rich_help_panel=GUIDANCE,
        ),
    ] = None,
    centre: Annotated[
        bool | None,
        typer.Option(
            "--centre/--no-centre",
            help="Compare latents minus each channel's spatial mean: guidance moves layout, not global colour "
            "(latent and x0 spaces)." + _defaults("centre"),
            rich_help_panel=GUIDANCE,
            show_default=False,
        ),
    ] = None,
    objective: Annotated[
        str | None,
        typer.Option(
            help="cond-rke (SPARKE), rke, cond-vendi or vendi." + _defaults("objective"),
            rich_help_panel=GUIDANCE,
        ),
    ] = None,
    kernel: Annotated[
        str | None, typer.Option(help="gaussian or cosine." + _defaults("kernel"), rich_help_panel=GUIDANCE)
    ] = None,
    window: Annotated[
        str | None,
        typer.Option(
            help="START,END: fractions of the trajectory where guidance acts." + _defaults("window"),
            rich_help_panel=GUIDANCE,
        ),
    ] = None,
    step: Annotated[
        str | None,
        typer.Option(
            help="relative (scale x |z| x g/|g|) or raw (scale x g)." + _defaults("step"),
            rich_help_panel=GUIDANCE,
        ),
    ] = None,
    prompt_encoder: Annotated[
        str | None,
        typer.Option(
            "--prompt-encoder",
            help="Prompt features for guidance: pipeline (its text encoder) or minilm."
            + _defaults("prompt_encoder"),
            rich_help_panel=GUIDANCE,
        ),
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Any other setting of the method (VALUE read as JSON, else as text); repeatable.",
            rich_help_panel=GUIDANCE,
        ),
    ] = None,
    shield: Annotated[
        Path | None,
        typer.Option(
            help="spell: a saved bank of x0 rows in the model's own space (e.g. a spell run's bank.safetensors) "
            "whose images new ones must stay away from.",
            rich_help_panel=GUIDANCE,
            show_default=False,
        ),
    ] = None,
    bank: Annotated[
        Path | None,
        typer.Option(
            help="Start from this bank (e.g. another run's bank.safetensors): new images are also pushed away "
            "from its rows. Must come from the same model and feature space.",
            rich_help_panel=GUIDANCE,
            show_default=False,
        ),
    ] = None,
) -> None:
    """Generate images for a prompt set into a run folder; rerun the same command to resume it.

    Writes DIR/images/*.png, DIR/manifest.jsonl (one line per image: file, prompt, cluster, seed, method, settings, model) and DIR/bank.safetensors (the features the guidance pushes away from). Ctrl-C or a kill loses at most the batch in progress; a folder made with other settings is refused.
    """
    from sparke.methods import resolve_settings
    from sparke.runs import PromptEntry, RunConfig, RunError, file_sha256, read_prompts
    from sparke.runs.generation import resolve_device, resolve_dtype

    method = MethodName(method).value
    if out_dir is None:
        raise fail(
            "--out DIR is required: the run folder to write (made if missing), e.g. `sparke generate --prompt "
            "'a red circle' --out runs/first`; `sparke generate --help` lists every option"
        )
    with user_errors("rerun the same command to resume"), user_warnings():
        entries = list(read_prompts(prompts_file)) if prompts_file is not None else []
        entries += [PromptEntry(p) for p in prompt or []]
        if not entries:
            raise RunError("no prompts: give --prompts FILE or --prompt TEXT")
        if any(not e.prompt.strip() for e in entries):
            raise RunError("--prompt: an empty prompt")
        spec = METHODS[method]
        given = dict(
            every=every,
            sigma_image=sigma_image,
            sigma_prompt=sigma_prompt,
            space=space,
            centre=centre,
            objective=objective,
            kernel=kernel,
            window=window,
            step=step,
            shield=shield,
        )
        overrides = _overrides(given, prompt_encoder, settings)
        try:
            resolved = resolve_settings(spec, overrides)
        except ValueError as error:
            raise RunError(f"--method {method}: {error}") from None
        if scale is not None and not spec.has_scale and scale != 0:
            raise RunError(f"--method {method} has no scale; leave --scale out")
        run_scale = spec.default_scale if scale is None else float(scale)
        init_bank = None
        if bank is not None:
            if bank.is_dir() and (bank / "bank.safetensors").is_file():
                bank = bank / "bank.safetensors"  # a run folder: its bank
            if not bank.is_file():
                raise RunError(f"--bank {bank}: no such bank file")
            init_bank = {"path": str(bank.resolve()), "sha256": file_sha256(bank)}
        device_name = resolve_device(device)
        config = RunConfig(
            prompts=entries,
            model=_model_record(model),
            method=method,
            scale=run_scale,
            settings=resolved,
            images_per_prompt=images_per_prompt,
            steps=steps,
            cfg=cfg,
            seed=seed,
            batch_size=batch_size,
            dtype=resolve_dtype(dtype, device_name, model),
            negative_prompt=negative_prompt,
            height=height,
            width=width,
            init_bank=init_bank,
        )
        summary = run_with_progress(config, out_dir, device=device_name)
    if _is_main_process():
        print_summary(summary)


def _is_main_process() -> bool:
    from sparke.runs.distributed import is_main_process

    return is_main_process()


def _model_record(model: str) -> str:
    from sparke.runs.generation import model_record

    return model_record(model)


def _overrides(
    options: dict[str, Any], prompt_encoder: str | None, extra: list[str] | None
) -> dict[str, Any]:
    """Settings given on the command line (None = the method's default is kept)."""
    from sparke.runs import RunError

    overrides: dict[str, Any] = {}
    for name in SETTING_OPTIONS:
        value = options.get(name)
        if value is None:
            continue
        if name == "window":
            try:
                lo, hi = (float(v) for v in str(value).split(","))
            except ValueError:
                raise RunError(f"--window {value!r}: expected START,END such as 0,0.5") from None
            value = [lo, hi]
        if name == "shield":
            if not Path(value).is_file():
                raise RunError(f"--shield {value}: no such bank file")
            value = str(Path(value).resolve())
        overrides[name] = value
    if prompt_encoder is not None:
        overrides["prompt_encoder"] = prompt_encoder
    for item in extra or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RunError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip().replace("-", "_")] = setting_value(raw)
    return overrides


def run_with_progress(
    config: Any, out_dir: Path, *, device: str = "auto", pipe: Any = None, label: str = ""
) -> Any:
    """``sparke.runs.generate`` with a rich spinner while loading and a progress bar while generating."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from sparke.runs import generate

    if not _is_main_process():  # under a launcher, rank 0 alone shows progress
        return generate(config, out_dir, device=device, pipe=pipe)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("images"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    status = err.status(f"loading {config.model} and checking {out_dir} ...")
    state: dict[str, Any] = {}

    def on_start(session: Any) -> None:
        status.stop()
        print_notes(session.notes, str(out_dir))
        done = session.done_images
        if done:
            err.print(
                f"resuming {out_dir}: {done} of {session.config.n_images} images already done",
                highlight=False,
            )
        progress.start()
        state["task"] = progress.add_task(
            label or f"{config.method} -> {out_dir}", total=session.config.n_images, completed=done
        )

    def on_batch(session: Any, count: int) -> None:
        progress.update(state["task"], completed=session.done_images)

    status.start()
    try:
        return generate(config, out_dir, device=device, pipe=pipe, on_start=on_start, on_batch=on_batch)
    finally:
        status.stop()
        progress.stop()


def print_summary(summary: Any) -> None:
    per = summary.seconds / summary.generated if summary.generated else None
    timing = f" in {summary.seconds:.1f} s ({per:.2f} s/image)" if per is not None else ""
    before = f", {summary.resumed} from before" if summary.resumed else ""
    out.print(
        f"[green]done[/]: {summary.total} images in {summary.out} ({summary.generated} new{before}){timing}",
        highlight=False,
    )
    if summary.bank_rows is not None:
        out.print(f"bank: {summary.bank_rows} rows in {summary.out / 'bank.safetensors'}", highlight=False)
    out.print(f"next: sparke evaluate {summary.out}", highlight=False)
