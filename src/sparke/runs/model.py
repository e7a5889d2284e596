"""The model of a run: the device and dtype it runs in, loading a pipeline (embedded, a folder, a hub id), and
checking what its call takes against the run's options before the first batch."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch

from sparke.guidance.bank import bank_placement

from .config import RunConfig, RunError

__all__ = [
    "EMBEDDED",
    "DTYPES",
    "check_call_arguments",
    "load_model",
    "model_record",
    "one_line",
    "pipeline_defaults",
    "place_bank",
    "resolve_device",
    "resolve_dtype",
]

EMBEDDED = "embedded"


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> cuda, then mps, then cpu; anything else is checked to exist."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise RunError(f"--device {device!r}: not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {device}: CUDA is not available on this machine")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RunError(f"--device {device}: MPS is not available on this machine")
    return str(dev)


def resolve_dtype(dtype: str, device: str, model: str) -> str:
    """``auto`` -> float16 for hub/folder models on CUDA, float32 otherwise (and always for the embedded one)."""
    if dtype == "auto":
        return "float16" if device.startswith("cuda") and model != EMBEDDED else "float32"
    if dtype not in DTYPES:
        raise RunError(f"--dtype {dtype!r}: choose one of auto, {', '.join(DTYPES)}")
    return dtype


def model_record(model: str) -> str:
    """How a model is named in run files: ``embedded``, a local folder's absolute path, or the hub id."""
    if model == EMBEDDED:
        return model
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def missing_folder(option: str, spec: str) -> None:
    """``RunError`` "--clip /x/y: no such folder" when ``spec`` is meant as a local folder (``looks_like_path``)
    and none is there, rather than the hub's message about repository ids."""
    path = Path(spec).expanduser()
    if looks_like_path(spec) and not path.exists():
        raise RunError(f"{option} {spec}: no such folder")


def looks_like_path(model: str) -> bool:
    """Whether ``model`` names a local path rather than a hub id ("name" or "org/name")."""
    return _looks_like_path(model)


def _looks_like_path(model: str) -> bool:
    # hub ids are "name" or "org/name"; anything else with a separator or a leading ./ ~ / is meant as a folder
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or os.sep != "/" and os.sep in model


def load_model(model: str, device: str = "cpu", dtype: str = "float32") -> Any:
    """A diffusers pipeline on ``device`` with its progress bar off; ``RunError`` with one line when missing.

    ``embedded``: the shipped shapes model. A folder: ``DiffusionPipeline.from_pretrained`` (a saved
    ``ShapesPipeline`` too). Otherwise a hub id, from the local cache when the hub is offline.
    """
    torch_dtype = DTYPES[dtype]
    quiet_loading()
    if model == EMBEDDED:
        from sparke.embedded.pipeline import load_pipeline

        try:
            pipe = load_pipeline(device=device, dtype=torch_dtype)
        except FileNotFoundError as error:
            raise RunError(
                f"the embedded model's weights are missing ({error}); reinstall sparke, or run `make retrain`"
            ) from None
        pipe.set_progress_bar_config(disable=True)
        return pipe
    path = Path(model).expanduser()
    if path.is_file():
        raise RunError(single_file_message(model))
    if path.exists() or _looks_like_path(model):
        if not path.is_dir():
            raise RunError(f"--model {model}: no such folder")
        index = path / "model_index.json"
        if not index.is_file():
            raise RunError(f"--model {model}: not a diffusers pipeline folder (no model_index.json)")
        try:
            class_name = json.loads(index.read_text()).get("_class_name")
        except (OSError, ValueError) as error:
            raise RunError(f"--model {model}: unreadable model_index.json ({error})") from None
    else:
        class_name = None
    from sparke.encoders.quiet import quiet_transformers

    try:
        with quiet_transformers():  # no "Loading weights" bars nor torchvision notices from transformers
            pipe = _from_pretrained(model, path, class_name, torch_dtype)
    except (OSError, ValueError, ImportError, AttributeError) as error:
        if class_name:
            raise RunError(f"--model {model}: cannot load this folder ({one_line(error)})") from None
        raise RunError(
            f"--model {model}: not a local folder nor in the Hugging Face cache ({one_line(error, 160)}); "
            "give a pipeline folder, or download the model once (`hf download "
            f"{model}`) and rerun"
        ) from None
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def single_file_message(model: str) -> str:
    """What to do with a single-file checkpoint (``x.safetensors``, ``x.ckpt``): sparke loads diffusers
    pipeline folders, and diffusers reads a single file only with the config of its pipeline, which needs the
    hub when it is not local; so the file is converted once into a folder."""
    name = Path(model).name
    kind = "a single-file checkpoint" if Path(model).suffix in (".safetensors", ".ckpt", ".bin") else "a file"
    return (
        f"--model {model}: {kind}, not a pipeline folder; convert it once with diffusers "
        f'(`python -c "from diffusers import StableDiffusionPipeline as P; '
        f"P.from_single_file('{name}', config='CONFIG_FOLDER').save_pretrained('{Path(name).stem}')\"`, "
        "the pipeline class of its family, CONFIG_FOLDER a local folder of that model's configs) and give "
        f"--model {Path(name).stem}"
    )


def _from_pretrained(model: str, path: Path, class_name: str | None, torch_dtype: torch.dtype) -> Any:
    if class_name == "ShapesPipeline":
        from sparke.embedded.pipeline import ShapesPipeline

        return ShapesPipeline.from_pretrained(str(path), torch_dtype=torch_dtype)
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(
        str(path) if class_name else model,
        torch_dtype=torch_dtype,
        local_files_only=os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"),
    )


def quiet_loading() -> None:
    """No loading progress bars (ours is the only one) and no ``torch_dtype`` rename warning."""
    import warnings

    warnings.filterwarnings("ignore", message=".*torch_dtype.*is deprecated", category=FutureWarning)
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:
        pass


def pipeline_defaults(pipe: Any) -> tuple[int, float]:
    """(num_inference_steps, guidance_scale) defaults of the pipeline's ``__call__`` (50 / 7.5 if absent)."""
    params = inspect.signature(pipe.__call__).parameters
    steps = params.get("num_inference_steps")
    cfg = params.get("guidance_scale")
    steps_v = steps.default if steps is not None and isinstance(steps.default, int) else 50
    cfg_v = cfg.default if cfg is not None and isinstance(cfg.default, (int, float)) else 7.5
    return int(steps_v), float(cfg_v)


def check_call_arguments(pipe: Any, config: RunConfig) -> None:
    """``RunError`` when the pipeline's ``__call__`` does not take an option the run sets (``--height`` on a
    fixed-size model, a height its autoencoder cannot make, ...): checked before the first batch."""
    params = inspect.signature(pipe.__call__).parameters
    name = type(pipe).__name__
    for option, key, value in (
        ("--height", "height", config.height),
        ("--width", "width", config.width),
        ("--negative-prompt", "negative_prompt", config.negative_prompt),
    ):
        if value is None:
            continue
        if key not in params:
            fixed = ""
            if key in ("height", "width") and getattr(pipe, "image_size", None):
                fixed = f" (it makes {pipe.image_size}x{pipe.image_size} images)"
            raise RunError(f"{option}: the model ({name}) takes no {key}{fixed}; leave {option} out")
    factor = getattr(pipe, "vae_scale_factor", None)
    for option, value in (("--height", config.height), ("--width", config.width)):
        if value is None:
            continue
        if value < 1:
            raise RunError(f"{option} {value}: must be a positive number of pixels")
        if isinstance(factor, int) and factor > 1 and value % factor:
            raise RunError(f"{option} {value}: the model ({name}) needs a multiple of {factor}")
    for option, key, value in (
        ("--steps", "num_inference_steps", config.steps),
        ("--cfg", "guidance_scale", config.cfg),
    ):
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if value is not None and key not in params and not takes_any:
            raise RunError(f"{option}: the model ({name}) takes no {key}; leave {option} out")
    if config.steps is not None and config.steps < 1:
        raise RunError(f"--steps {config.steps}: must be at least 1")


def place_bank(bank: Any, pipe: Any) -> Any:
    """``bank`` moved to the pipeline's device and dtype (its files stay loadable on a CPU)."""
    if hasattr(bank, "to"):
        device, dtype = bank_placement(pipe)
        moved = bank.to(device, dtype)
        return bank if moved is None else moved
    return bank


def one_line(error: BaseException | str, limit: int = 240) -> str:
    """The first line of an error's message, without library prefixes, cut at a word (never mid-word)."""
    text = str(error).strip() or type(error).__name__
    text = text.splitlines()[0].strip()
    for prefix in ("Value error, ", "Assertion failed, ", "Type error, "):  # pydantic's wording
        if text.startswith(prefix):
            text = text[len(prefix) :]
    if len(text) > limit:
        cut = text.rfind(" ", 0, limit)
        text = text[: cut if cut > limit // 2 else limit].rstrip(" ,;:") + " ..."
    return text
