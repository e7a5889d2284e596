"""``sparke generate``: images for a prompt set, with or without guidance, into a resumable run folder.

The options are the aliases of ``sparke.cli.options``; ``build_config`` turns them into a ``RunConfig``
(a plain function, tested without typer) and ``run_with_progress`` generates with a progress bar.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparke.methods import METHODS

from . import options as o
from .common import err, fail, out, plural, print_notes, say, setting_value, user_errors, user_warnings

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
# a run folder's plan lists every image: beyond this a run is refused at once (not a MemoryError minutes later)
MAX_RUN_IMAGES = 10_000_000


@dataclass
class GenerateRequest:
    """The options of ``sparke generate`` as given (None: the default of the pipeline or the method)."""

    prompts_file: Path | None = None
    prompt: list[str] | None = None
    images_per_prompt: int = 4
    model: str = "embedded"
    steps: int | None = None
    cfg: float | None = None
    negative_prompt: str | None = None
    height: int | None = None
    width: int | None = None
    seed: int = 0
    batch_size: int = 4
    dtype: str = "auto"
    method: str = "sparke"
    scale: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # SETTING_OPTIONS given, e.g. {"every": 2}
    prompt_encoder: str | None = None
    extra: list[str] | None = None  # --set KEY=VALUE
    bank: Path | None = None


def generate_command(
    out_dir: o.OutDir = None,
    prompts_file: o.PromptsFile = None,
    prompt: o.Prompt = None,
    images_per_prompt: o.ImagesPerPrompt = 4,
    model: o.Model = "embedded",
    steps: o.Steps = None,
    cfg: o.Cfg = None,
    negative_prompt: o.NegativePrompt = None,
    height: o.Height = None,
    width: o.Width = None,
    seed: o.Seed = 0,
    batch_size: o.BatchSize = 4,
    device: o.Device = "auto",
    dtype: o.Dtype = "auto",
    method: o.Method = o.MethodName("sparke"),
    scale: o.Scale = None,
    every: o.Every = None,
    sigma_image: o.SigmaImage = None,
    sigma_prompt: o.SigmaPrompt = None,
    space: o.Space = None,
    centre: o.Centre = None,
    objective: o.Objective = None,
    kernel: o.Kernel = None,
    window: o.Window = None,
    step: o.Step = None,
    shield: o.Shield = None,
    prompt_encoder: o.PromptEncoder = None,
    settings: o.Settings = None,
    bank: o.Bank = None,
) -> None:
    """Generate images for a prompt set into a run folder; rerun the same command to resume it.

    Writes DIR/images/*.png, DIR/manifest.jsonl (one line per image: file, prompt, cluster, seed, method,
    settings, model) and DIR/bank.safetensors (the features the guidance pushes away from). Ctrl-C or a kill
    loses at most the batch in progress; a folder made with other settings is refused.
    """
    from sparke.runs.generation import resolve_device

    if out_dir is None:
        raise fail(
            "--out DIR is required: the run folder to write (made if missing), e.g. `sparke generate --prompt "
            "'a red circle' --out runs/first`; `sparke generate --help` lists every option"
        )
    given = dict(every=every, sigma_image=sigma_image, sigma_prompt=sigma_prompt, space=space, centre=centre)
    given.update(objective=objective, kernel=kernel, window=window, step=step, shield=shield)
    request = GenerateRequest(
        prompts_file, prompt, images_per_prompt, model, steps, cfg, negative_prompt, height, width, seed,
        batch_size, dtype, o.MethodName(method).value, scale, given, prompt_encoder, settings, bank,
    )  # fmt: skip
    with user_errors("rerun the same command to resume"), user_warnings():
        device_name = resolve_device(device)
        config, notes = build_config(request, device_name)
        print_notes(notes)
        for warning in checker_warnings(config):
            say(warning, "warning")
        summary = run_with_progress(config, out_dir, device=device_name)
    if _is_main_process():
        print_summary(summary)


def checker_warnings(config: Any) -> list[str]:
    """For the embedded model: a warning naming the prompts whose shape or colour the shapes world does not
    know, said before any image is made (`sparke evaluate` leaves their images out of the checker's Match)."""
    from sparke.embedded.requirements import is_embedded_model, unreadable_prompts

    if not is_embedded_model(config.model):
        return []
    unread = unreadable_prompts([entry.prompt for entry in config.prompts])
    if not unread:
        return []
    prompt, why = next(iter(unread.items()))
    total = len({entry.prompt for entry in config.prompts})
    return [
        f"{len(unread)} of {total} prompts name no shape or colour the embedded shapes world knows (e.g. "
        f"{prompt!r}: {why}): the model draws something else, and `sparke evaluate` leaves their images out "
        "of the checker's Match (the words it knows: sparke.embedded.world)"
    ]


def build_config(request: GenerateRequest, device: str = "cpu") -> tuple[Any, list[str]]:
    """(RunConfig, notes) of a request, or ``RunError`` with one line naming the option at fault."""
    from sparke.methods import resolve_settings
    from sparke.runs import RunConfig, RunError
    from sparke.runs.generation import resolve_dtype

    entries, notes = read_entries(request)
    check_sampling(request, len(entries))
    method = request.method
    spec = METHODS[method]
    overrides = _overrides(request.settings, request.prompt_encoder, request.extra)
    try:
        resolved = resolve_settings(spec, overrides)
    except ValueError as error:
        raise RunError(f"--method {method}: {error}") from None
    if request.scale is not None and not spec.has_scale and request.scale != 0:
        raise RunError(f"--method {method} has no scale; leave --scale out")
    config = RunConfig(
        prompts=entries,
        model=_model_record(request.model),
        method=method,
        scale=spec.default_scale if request.scale is None else float(request.scale),
        settings=resolved,
        images_per_prompt=request.images_per_prompt,
        steps=request.steps,
        cfg=request.cfg,
        seed=request.seed,
        batch_size=request.batch_size,
        dtype=resolve_dtype(request.dtype, device, request.model),
        negative_prompt=request.negative_prompt,
        height=request.height,
        width=request.width,
        init_bank=_init_bank(request.bank),
    )
    return config, notes


def read_entries(request: GenerateRequest) -> tuple[list[Any], list[str]]:
    """The prompts of --prompts then --prompt, and notes on repeated prompts."""
    from sparke.runs import PromptEntry, RunError, read_prompts

    entries = list(read_prompts(request.prompts_file)) if request.prompts_file is not None else []
    entries += [PromptEntry(p) for p in request.prompt or []]
    if not entries:
        raise RunError("no prompts: give --prompts FILE or --prompt TEXT")
    if any(not e.prompt.strip() for e in entries):
        raise RunError("--prompt: an empty prompt")
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.prompt] = counts.get(entry.prompt, 0) + 1
    notes = [
        f"the prompt {prompt!r} is given {times} times: each copy gets its own images and seeds, and "
        "`sparke evaluate` counts them as one prompt"
        for prompt, times in counts.items()
        if times > 1
    ]
    return entries, notes


def check_sampling(request: GenerateRequest, n_prompts: int) -> None:
    """Refuse counts and scales no pipeline can use, before anything is loaded or written."""
    from sparke.runs import RunError

    n = request.images_per_prompt
    if n < 1:
        raise RunError(f"--images-per-prompt {n}: give 1 or more")
    if n * n_prompts > MAX_RUN_IMAGES:
        raise RunError(
            f"--images-per-prompt {n}: {plural(n_prompts, 'prompt')} x {n} images is more than a run holds "
            f"({MAX_RUN_IMAGES:,} images); split the prompts into several runs"
        )
    if request.batch_size < 1:
        raise RunError(f"--batch-size {request.batch_size}: give 1 or more")
    if request.cfg is not None and not request.cfg >= 0:
        raise RunError(
            f"--cfg {request.cfg:g}: the guidance scale must be 0 or more (1 or less turns it off)"
        )
    if request.steps is not None and request.steps < 1:
        raise RunError(f"--steps {request.steps}: give 1 or more")
    if request.steps is not None and request.model == "embedded":
        from sparke.embedded.pipeline import CLEAN_STEPS, MIN_STEPS

        if request.steps < MIN_STEPS:
            raise RunError(
                f"--steps {request.steps}: the embedded model needs {MIN_STEPS} or more (one returns noise)"
            )
        if request.steps < CLEAN_STEPS:
            warnings.warn(
                f"--steps {request.steps}: the embedded model's images keep visible noise below {CLEAN_STEPS} steps "
                "(the demo and the benchmark use 10)",
                UserWarning,
                stacklevel=2,
            )


def _init_bank(bank: Path | None) -> dict[str, Any] | None:
    from sparke.runs import RunError, file_sha256

    if bank is None:
        return None
    if bank.is_dir() and (bank / "bank.safetensors").is_file():
        bank = bank / "bank.safetensors"  # a run folder: its bank
    if not bank.is_file():
        raise RunError(f"--bank {bank}: no such bank file")
    return {"path": str(bank.resolve()), "sha256": file_sha256(bank)}


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
        if name == "every":
            value = int(value) if str(value).strip().isdigit() else str(value).strip()
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
        print_notes(long_prompt_notes(session.pipe, [p.prompt for p in session.config.prompts]))
        done = session.done_images
        if done:
            say(f"resuming {out_dir}: {done} of {plural(session.config.n_images, 'image')} already done")
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


def long_prompt_notes(pipe: Any, prompts: list[str]) -> list[str]:
    """A note when prompts are longer than the pipeline's text encoder reads (CLIP: 77 tokens; the embedded
    model's MiniLM: 256): the rest of such a prompt has no effect on its images."""
    tokenizer = getattr(pipe, "tokenizer", None)
    limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer is None or not isinstance(limit, int) or limit > 100_000:  # no tokenizer, or no stated limit
        if type(pipe).__name__ != "ShapesPipeline":
            return []
        from sparke.encoders.minilm import MAX_LENGTH, load_minilm

        tokenizer, limit = load_minilm()[0], MAX_LENGTH
    from sparke.encoders.quiet import quiet_transformers

    with quiet_transformers():  # no "sequence length is longer than the maximum" log: the note says it
        lengths = {p: len(tokenizer(p)["input_ids"]) for p in dict.fromkeys(prompts)}
    long = {p: n for p, n in lengths.items() if n > limit}
    if not long:
        return []
    first, tokens = next(iter(long.items()))
    return [
        f"{plural(len(long), 'prompt')} longer than the {limit} tokens the text encoder reads (the first: "
        f"{tokens} tokens, {first[:40]!r}...); the rest of each has no effect on its images"
    ]


def print_summary(summary: Any) -> None:
    """``done: 12 images in DIR (4 new, 8 from before) in 3.1 s (0.78 s per new image)``, the bank, what next."""
    per = summary.seconds / summary.generated if summary.generated else None
    timing = f" in {summary.seconds:.1f} s ({per:.2f} s per new image)" if per is not None else ""
    before = f", {summary.resumed} from before" if summary.resumed else ""
    say(
        f"{plural(summary.total, 'image')} in {summary.out} ({summary.generated} new{before}){timing}",
        "done",
        console=out,
    )
    if summary.bank_rows is not None:
        say(f"bank: {plural(summary.bank_rows, 'row')} in {summary.out / 'bank.safetensors'}", console=out)
    say(f"next: sparke evaluate {summary.out}", console=out)
