"""``dsample generate``: deterministic, resumable, multi-process batch image generation.

* Each image's noise comes from its own generator seeded by (seed, prompt index, sample index)
  (:func:`image_seed`), and the bundled model calls its UNet on a fixed number of rows
  (:func:`pipelines.digits.fixed_size_calls`), so an image's pixels do not depend on the batch size or on
  how many processes share the work.
* Outputs are crash-safe (:mod:`pipelines.outputs`): a rerun of the same command skips finished images
  and redoes the rest; a killed run loses nothing already listed in ``manifest.jsonl``.
* Under ``accelerate launch --num_processes N`` or ``torchrun --nproc_per_node N`` prompts are dealt
  round-robin to the processes: prompt ``i`` belongs to rank ``i mod N``, so there are no duplicates or
  gaps. (On a machine without GPUs, ``accelerate launch`` starts N processes only with ``--multi_gpu``,
  which then uses gloo; with ``--cpu`` or no flag it starts one.)
* With ``search`` (``--search smc --particles 8 --reward digits``) each image is the result of an
  inference-time search (:class:`pipelines.search_pipeline.SearchPipeline`) for its prompt, seeded by the
  image's own seed. The images of a batch (``batch_size`` of them) are searched side by side, the particles
  of all of them sharing every network call; the manifest records each image's reward, the NFE spent on it
  and its anytime curve (``curve``: ``[[nfe, best reward scored so far], ...]``, :mod:`search.trace`).
  Shared calls make a searched image depend on its batch only through floating-point rounding of batched
  kernels; the same command reproduces the same images.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from .outputs import (
    Manifest,
    a1111_parameters,
    atomic_write_bytes,
    image_grid,
    png_bytes,
    read_manifest,
    remove_stale_temporaries,
    rewrite_manifest,
)
from .prompts import PromptSpec, UsageError, check_settings, load_prompts
from .sampler_names import DEFAULT_SAMPLER, SamplerSpec, resolve_sampler

__all__ = ["GenerateOptions", "ImageJob", "generate", "image_seed", "plan_jobs", "load_model"]

BUNDLED_DIGITS = "digits"
#: a video's frames per second in its GIF/MP4 unless --fps is given: the family's own examples' rate
#: (Wan's export_to_video(..., fps=16)), else DEFAULT_FPS (CogVideoX's examples use 8)
DEFAULT_FPS = 8.0
VIDEO_FPS = {"Wan": 16.0}  # pipeline class-name prefix -> fps
DEFAULT_VIDEO_FORMATS = ("gif", "frames")
VIDEO_FORMATS = ("gif", "frames", "mp4")  # the GIF is always written: the manifest's file, the report's
DEFAULT_PARTICLES = 8
#: the search configuration of an image, as its manifest line records it (None/absent without search)
SEARCH_KEYS = ("search", "particles", "max_nfe", "reward_name", "reward_options")


def image_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """A 63-bit generator seed for one image, a hash of (seed, prompt index, sample index)."""
    digest = hashlib.sha256(f"dsample/{seed}/{prompt_index}/{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass(frozen=True)
class GenerateOptions:
    prompts: list[str] | None = None
    prompt_file: str | None = None
    model: str = BUNDLED_DIGITS
    sampler: str = DEFAULT_SAMPLER
    steps: int = 20
    guidance: float | None = None
    seed: int = 0
    num_images: int = 1
    batch_size: int | None = None
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    out: str = "outputs"
    device: str | None = None
    quiet: bool = False
    # inference-time search (None: plain generation)
    search: str | None = None
    particles: int | None = None  # None: DEFAULT_PARTICLES with search
    max_nfe: int | None = None
    reward: str | None = None  # a registered reward name or an importable "module:Class"
    reward_options: Mapping[str, Any] | Sequence[str] | None = None  # a dict, or "key=value" strings
    # video models only (None: the pipeline's default frame count; DEFAULT_FPS / VIDEO_FPS; gif + frames)
    num_frames: int | None = None
    fps: float | None = None
    video_formats: Sequence[str] | None = None  # "gif", "frames", "mp4" or comma lists of them


@dataclass(frozen=True)
class ImageJob:
    prompt_index: int
    sample_index: int
    prompt: str
    settings: dict[str, Any]  # steps, guidance, seed, sampler, negative_prompt, width, height
    sampler: SamplerSpec
    search: dict[str, Any] | None = None  # SEARCH_KEYS -> values, None without search

    @property
    def seed(self) -> int:
        return image_seed(self.settings["seed"], self.prompt_index, self.sample_index)

    @property
    def is_video(self) -> bool:
        return "video_formats" in self.settings  # only a video model's jobs have video settings

    @property
    def relpath(self) -> str:
        if self.is_video:  # the GIF (always written); frames and MP4 lie beside it, see _write_video_files
            return f"videos/{self.prompt_index}_{self.sample_index}.gif"
        return f"images/{self.prompt_index}_{self.sample_index}.png"

    def batch_key(self) -> str:
        """Jobs with equal keys can share one pipeline call (prompts and seeds may differ)."""
        shared = {k: v for k, v in self.settings.items() if k not in ("seed", "negative_prompt")}
        return json.dumps(shared, sort_keys=True)


# ---------------------------------------------------------------------------------------------- models
class DigitsModel:
    """The bundled class-conditional digits pipeline (8x8 grey images); prompts are digits or their names."""

    name = "dsample-digits"
    is_video = False
    default_guidance = 2.0  # the lowest guidance at which every generated digit is recognised
    default_batch_size = 64

    def __init__(self, path: str | Path | None, device: str | None):
        from .digits import DIGITS_MODEL, DigitsPipeline

        self.pipe = DigitsPipeline.from_pretrained(path or DIGITS_MODEL).to(device or "cpu")
        self.pipe.set_progress_bar_config(disable=True)
        self.base_config = dict(self.pipe.scheduler.config)
        self.size = self.pipe.unet.config.sample_size

    def check_prompt(self, prompt: str) -> None:
        from .digits import parse_digit

        parse_digit(prompt)

    def check_settings(self, settings: dict[str, Any]) -> None:
        for key in ("width", "height"):
            if settings.get(key) not in (None, self.size):
                raise ValueError(
                    f"the digits model draws {self.size}x{self.size} images; {key} cannot be changed"
                )

    def generate(
        self, jobs: list[ImageJob], scheduler, generators: list[torch.Generator]
    ) -> list[Image.Image]:
        s = jobs[0].settings
        self.pipe.scheduler = scheduler
        return self.pipe(
            [j.prompt for j in jobs],
            num_inference_steps=s["steps"],
            guidance_scale=s["guidance"],
            generator=generators,
        ).images


def is_video_pipeline(pipe: Any) -> bool:
    """Whether a diffusers pipeline makes videos: it has a ``video_processor`` (diffusers' VideoProcessor,
    which every video pipeline, e.g. WanPipeline and CogVideoXPipeline, uses to return ``.frames``)."""
    return getattr(pipe, "video_processor", None) is not None


class DiffusersModel:
    """Any diffusers text-to-image (or text-to-video: :func:`is_video_pipeline`) pipeline, by hub id or
    local directory; a video pipeline's :meth:`generate` returns each job's frames."""

    default_guidance = None  # the pipeline's own default
    default_batch_size = 1

    def __init__(self, model: str, device: str | None):
        from diffusers import DiffusionPipeline

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.pipe = DiffusionPipeline.from_pretrained(model, dtype=dtype).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.base_config = dict(self.pipe.scheduler.config)
        self.name = Path(model).name if Path(model).exists() else model
        self.is_video = is_video_pipeline(self.pipe)
        family = type(self.pipe).__name__
        self.default_fps = next((v for k, v in VIDEO_FPS.items() if family.startswith(k)), DEFAULT_FPS)

    def check_prompt(self, prompt: str) -> None:
        return None

    def check_settings(self, settings: dict[str, Any]) -> None:
        return None

    def generate(
        self, jobs: list[ImageJob], scheduler, generators: list[torch.Generator]
    ) -> list[Image.Image]:
        s = jobs[0].settings
        self.pipe.scheduler = scheduler
        kwargs: dict[str, Any] = {
            "num_inference_steps": s["steps"],
            "generator": generators,
            "output_type": "pil",
        }
        if s["guidance"] is not None:
            kwargs["guidance_scale"] = s["guidance"]
        if any(j.settings["negative_prompt"] for j in jobs):
            kwargs["negative_prompt"] = [j.settings["negative_prompt"] or "" for j in jobs]
        for key in ("width", "height"):
            if s[key] is not None:
                kwargs[key] = s[key]
        if self.is_video:  # one list of PIL frames per job
            if s["num_frames"] is not None:
                kwargs["num_frames"] = s["num_frames"]
            return self.pipe([j.prompt for j in jobs], **kwargs).frames
        return self.pipe([j.prompt for j in jobs], **kwargs).images


def load_model(model: str, device: str | None) -> DigitsModel | DiffusersModel:
    """The bundled digits model (``"digits"`` or a saved ``DigitsPipeline`` directory) or a diffusers one."""
    try:
        index = Path(model) / "model_index.json"
        if model == BUNDLED_DIGITS:
            return DigitsModel(None, device)
        if index.is_file() and json.loads(index.read_text()).get("_class_name") == "DigitsPipeline":
            return DigitsModel(model, device)
        return DiffusersModel(model, device)
    except (OSError, ValueError, RuntimeError, ImportError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"cannot load model {model!r}: {message}") from None


# ---------------------------------------------------------------------------------------------- search
def search_config(opts: GenerateOptions) -> dict[str, Any] | None:
    """The run's search settings (:data:`SEARCH_KEYS`, canonical names), or None; ``UsageError`` if bad."""
    from search.registry import get_search

    if opts.search is None:
        given = {
            "--reward": opts.reward is not None,
            "--particles": opts.particles is not None,
            "--max-nfe": opts.max_nfe is not None,
            "--reward-option": bool(opts.reward_options),
        }
        extra = [flag for flag, present in given.items() if present]
        if extra:
            raise UsageError(f"{', '.join(extra)} given without --search")
        return None
    try:
        method = get_search(opts.search)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if not opts.reward:
        raise UsageError(f"--search {opts.search} needs --reward (see `dsample rewards`, or module:Class)")
    particles = DEFAULT_PARTICLES if opts.particles is None else opts.particles
    if particles < 1:
        raise UsageError(f"--particles must be >= 1, got {particles}")
    if opts.max_nfe is not None and opts.max_nfe < 1:
        raise UsageError(f"--max-nfe must be >= 1, got {opts.max_nfe}")
    from rewards.registry import canonical_reward_name

    try:
        reward_name = canonical_reward_name(opts.reward)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return {
        "search": method.name,
        "particles": particles,
        "max_nfe": opts.max_nfe,
        "reward_name": reward_name,
        "reward_options": _reward_options(opts.reward_options),
    }


def _reward_options(options: Mapping[str, Any] | Sequence[str] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if isinstance(options, Mapping):
        return dict(options)
    from .score import parse_option

    return dict(parse_option(text) for text in options)


def load_search_reward(config: dict[str, Any], device: str | torch.device | None, video: bool = False):
    """The reward of a :func:`search_config`: a registered name or an importable ``module:Class``; one
    that scores images, or with ``video`` (a video model) one that scores videos."""
    from .score import ScoreOptions, build_reward

    options = ScoreOptions(
        run="", reward=config["reward_name"], options=config["reward_options"], device=device
    )
    return build_reward(options, "video" if video else "image")[1]


def _search_batch(model, searcher, jobs: list[ImageJob]) -> list[tuple[Any, float, int, list[list[float]]]]:
    """Images (video jobs: frames) of jobs with the same settings, searched side by side -- their particles
    share every network call (:class:`pipelines.search_pipeline.SearchPipeline`) -- each from its own seed:
    per job (image, its reward, NFE spent, anytime curve)."""
    s = jobs[0].settings
    device = getattr(model.pipe, "_execution_device", None) or model.pipe.device
    kwargs: dict[str, Any] = {
        "num_inference_steps": s["steps"],
        "guidance_scale": s["guidance"],
        # on the chain's device: the search draws its prior there
        "generator": [torch.Generator(device=device).manual_seed(job.seed) for job in jobs],
        "output_type": "pil",
    }
    if s["negative_prompt"]:
        kwargs["negative_prompt"] = s["negative_prompt"]
    for key in ("width", "height", "num_frames"):
        if s.get(key) is not None:
            kwargs[key] = s[key]
    out = searcher([job.prompt for job in jobs], **kwargs)
    return [(out.images[i], float(out.scores[i]), int(out.nfe[i]), out.curves[i]) for i in range(len(jobs))]


# ---------------------------------------------------------------------------------------------- video
def video_formats(opts: GenerateOptions) -> tuple[str, ...] | None:
    """The video files to write (in :data:`VIDEO_FORMATS` order, always with the GIF), or None when
    ``--video-format`` is not given; ``UsageError`` for unknown formats or MP4 without imageio-ffmpeg."""
    if opts.video_formats is None:
        return None
    if isinstance(opts.video_formats, str):
        raise UsageError(f"video_formats must be a list of strings, not {opts.video_formats!r}")
    names = [n.strip().lower() for text in opts.video_formats for n in str(text).split(",") if n.strip()]
    unknown = [n for n in names if n not in VIDEO_FORMATS]
    if unknown or not names:
        raise UsageError(f"--video-format takes {', '.join(VIDEO_FORMATS)} (or a comma list), got {unknown}")
    if "mp4" in names:
        try:
            import imageio.v2  # noqa: F401
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            from .video import VIDEO_EXTRA_HINT

            raise UsageError(
                f"--video-format mp4 needs imageio and imageio-ffmpeg: install the [video] extra "
                f"({VIDEO_EXTRA_HINT})"
            ) from None
    return tuple(f for f in VIDEO_FORMATS if f == "gif" or f in names)


def check_video_options(opts: GenerateOptions) -> tuple[str, ...] | None:
    """Check the video flags that need no model (before it loads); ``UsageError`` if bad. Returns
    :func:`video_formats`."""
    formats = video_formats(opts)
    if opts.num_frames is not None and opts.num_frames < 1:
        raise UsageError(f"--num-frames must be >= 1, got {opts.num_frames}")
    if opts.fps is not None and not (math.isfinite(opts.fps) and opts.fps > 0):
        raise UsageError(f"--fps must be a positive number, got {opts.fps}")
    return formats


def _video_settings(opts: GenerateOptions, model) -> dict[str, Any]:
    """A video model's per-job video settings (num_frames, fps, video_formats); {} for an image model,
    which refuses the video flags."""
    formats = check_video_options(opts)
    if not getattr(model, "is_video", False):
        flags = {"--num-frames": opts.num_frames, "--fps": opts.fps, "--video-format": opts.video_formats}
        given = [flag for flag, value in flags.items() if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)}: only for video models; {model.name} makes images")
        return {}
    return {
        "num_frames": opts.num_frames,  # None: the pipeline's default (the manifest records the count made)
        "fps": float(opts.fps if opts.fps is not None else model.default_fps),
        "video_formats": list(formats or DEFAULT_VIDEO_FORMATS),
    }


def _write_video_files(root: Path, job: ImageJob, pixels) -> dict[str, Any]:
    """Write a job's video (uint8 frames (F, H, W, C)) in its formats; its manifest fields."""
    from .video import write_video

    s = job.settings
    written = write_video(pixels, root / job.relpath, fps=s["fps"], formats=s["video_formats"])
    return {
        "num_frames": int(pixels.shape[0]),
        "fps": s["fps"],
        "video_formats": list(s["video_formats"]),
        "video": {fmt: path.relative_to(root).as_posix() for fmt, path in written.items()},
    }


def _tidy_videos(root: Path) -> None:
    """Delete temporaries a killed run left under ``videos/`` (and its frame directories)."""
    videos = root / "videos"
    if videos.is_dir():
        for directory in [videos, *(d for d in videos.iterdir() if d.is_dir())]:
            remove_stale_temporaries(directory)


# ---------------------------------------------------------------------------------------------- planning
def plan_jobs(specs: list[PromptSpec], opts: GenerateOptions, model) -> list[ImageJob]:
    """Every image of the run, in (prompt, sample) order, with its settings; ``UsageError`` on bad input."""
    base = check_settings(
        {
            "steps": opts.steps,
            "guidance": opts.guidance,
            "seed": opts.seed,
            "num_images": opts.num_images,
            "sampler": opts.sampler,
            "negative_prompt": opts.negative_prompt,
            "width": opts.width,
            "height": opts.height,
        },
        "command line",
    )
    search = search_config(opts)
    video = _video_settings(opts, model)
    samplers: dict[str, SamplerSpec] = {}
    jobs = []
    for p, spec in enumerate(specs):
        merged = {**base, **spec.overrides}
        where = f"prompt {p} ({spec.text!r})"
        name = merged.get("sampler", DEFAULT_SAMPLER)
        try:
            sampler = samplers[name] = samplers.get(name) or resolve_sampler(name)
            model.check_prompt(spec.text)
            model.check_settings(merged)
        except ValueError as err:
            raise UsageError(f"{where}: {err}" if spec.overrides or p else str(err)) from None
        if search is not None:
            sampler = _search_sampler(search["search"], sampler, where)
        guidance = merged.get("guidance", model.default_guidance)
        settings = {
            "steps": merged["steps"],
            "guidance": guidance,
            "seed": merged["seed"],
            "sampler": sampler.label,
            "negative_prompt": merged.get("negative_prompt"),
            "width": merged.get("width"),
            "height": merged.get("height"),
            **video,
        }
        odd = [k for k in ("width", "height") if (settings[k] or 0) % 2]
        if "mp4" in video.get("video_formats", ()) and odd:
            raise UsageError(f"{where}: --video-format mp4 (H.264) needs an even {' and '.join(odd)}")
        for s in range(merged["num_images"]):
            jobs.append(ImageJob(p, s, spec.text, settings, sampler, search))
    return jobs


def _search_sampler(method: str, sampler: SamplerSpec, where: str) -> SamplerSpec:
    """What the search's chains solve with: DPM++ 2M, or its SDE form for particle and tree methods."""
    from search.registry import get_search

    if sampler.label != resolve_sampler(DEFAULT_SAMPLER).label:
        raise UsageError(
            f"{where}: --search solves with its own sampler (DPM++ 2M; DPM++ 2M SDE for particle and tree "
            f"methods), not {sampler.label!r}"
        )
    return resolve_sampler("DPM++ 2M SDE") if get_search(method).stochastic else sampler


def _batches(jobs: list[ImageJob], size: int, one_negative_prompt: bool = False) -> Iterator[list[ImageJob]]:
    """Runs of at most ``size`` consecutive jobs that can share one pipeline call (``one_negative_prompt``:
    and one negative prompt, as a search call takes)."""

    def key(job: ImageJob) -> str:
        return job.batch_key() + (f"/{job.settings['negative_prompt']}" if one_negative_prompt else "")

    batch: list[ImageJob] = []
    for job in jobs:
        if batch and (len(batch) == size or key(job) != key(batch[0])):
            yield batch
            batch = []
        batch.append(job)
    if batch:
        yield batch


# ---------------------------------------------------------------------------------------------- processes
class _Processes:
    """Rank, size and barriers: accelerate's PartialState when launched with several processes."""

    def __init__(self):
        self.state = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            self.state = PartialState(cpu=not torch.cuda.is_available())
        self.rank = self.state.process_index if self.state else 0
        self.size = self.state.num_processes if self.state else 1
        self.is_main = self.rank == 0

    def gpu_device(self) -> str | None:
        """This process's own GPU under a multi-GPU launch (else ``None``: the model's default device)."""
        if self.state and self.state.device.type == "cuda":
            return str(self.state.device)
        return None

    def barrier(self) -> None:
        if self.state:
            self.state.wait_for_everyone()

    def close(self) -> None:
        """Tear the process group down before exit: gloo's threads abort the process if left running."""
        if self.state:
            self.state.destroy_process_group()

    def gather(self, value: float) -> list[float]:
        """``value`` from every process (all processes must call this)."""
        if not self.state:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])


# ---------------------------------------------------------------------------------------------- the run
def _check_existing(jobs: list[ImageJob], done: dict[tuple[int, int], dict], root: Path) -> None:
    for job in jobs:
        record = done.get((job.prompt_index, job.sample_index))
        if record and (
            record.get("prompt") != job.prompt
            or record.get("settings") != job.settings
            or {k: record.get(k) for k in SEARCH_KEYS} != {k: (job.search or {}).get(k) for k in SEARCH_KEYS}
        ):
            raise UsageError(
                f"{root / job.relpath} was made with other settings or prompt; use a new --out "
                "(or delete the directory) to generate with these"
            )


def _write_image(
    root: Path,
    job: ImageJob,
    image: Any,
    model_name: str,
    manifest: Manifest,
    rank: int,
    found: tuple[float, int, list[list[float]]] | None = None,
) -> None:
    """Write one image (a video job: its frames, as a video pipeline returns them) and its manifest line,
    after the files are in place; ``found``: the search's (reward, NFE, anytime curve) for the image."""
    pixels = None
    if job.is_video:
        from .video import to_uint8_frames

        pixels = to_uint8_frames(image)  # (F, H, W, C) uint8
        height, width = (int(n) for n in pixels.shape[1:3])
    else:
        width, height = image.width, image.height
    extra = {
        "sampler_label": job.sampler.a1111_name,
        "schedule_type": job.sampler.schedule_type,
        "image_seed": job.seed,
        "width": width,
        "height": height,
        "model": model_name,
    }
    record = {
        "image": job.relpath,
        "prompt_index": job.prompt_index,
        "sample_index": job.sample_index,
        "prompt": job.prompt,
        "settings": job.settings,
        "image_seed": job.seed,
        "model": model_name,
        "width": width,
        "height": height,
        "process": rank,
    }
    if job.search is not None and found is not None:
        record.update(job.search)
        record["reward"], record["nfe"], record["curve"] = found
        extra.update(search=job.search["search"], particles=job.search["particles"], nfe=found[1])
        extra.update(reward_name=job.search["reward_name"], reward=found[0])
    if pixels is not None:
        record.update(_write_video_files(root, job, pixels))
        manifest.append(record)
        return
    text = {"parameters": a1111_parameters(job.prompt, job.settings, extra), "dsample": json.dumps(record)}
    atomic_write_bytes(root / job.relpath, png_bytes(image, text))
    manifest.append(record)


def _load_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.copy()


def _grid_tile(root: Path, prompt_index: int, sample_index: int) -> Image.Image:
    """A job's image, or a video job's first frame (its PNG frame if written, else the GIF's)."""
    png = root / f"images/{prompt_index}_{sample_index}.png"
    if png.is_file():
        return _load_image(png)
    frame = root / f"videos/{prompt_index}_{sample_index}/frame_0000.png"
    tile = _load_image(frame if frame.is_file() else root / f"videos/{prompt_index}_{sample_index}.gif")
    return tile.convert("RGB") if tile.mode == "P" else tile


def _write_grid(root: Path, prompt_index: int, count: int) -> None:
    """``grids/{prompt}.png``: the prompt's images, or for a video model each video's first frame."""
    images = [_grid_tile(root, prompt_index, s) for s in range(count)]
    grid = image_grid([im.convert(images[0].mode) for im in images])
    atomic_write_bytes(root / f"grids/{prompt_index}.png", png_bytes(grid, {}))


def generate(opts: GenerateOptions) -> dict[str, Any]:
    """Run a batch generation; returns counts and timing. ``UsageError`` before anything is written."""
    procs = _Processes()
    try:
        return _generate_with(procs, opts)
    finally:
        procs.close()


def _generate_with(procs: _Processes, opts: GenerateOptions) -> dict[str, Any]:
    if opts.quiet:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    search = search_config(opts)  # bad search settings fail before the model loads
    check_video_options(opts)  # as do bad video flags (--video-format mp4 without its extra)
    specs = _prompt_specs(opts)
    model = load_model(opts.model, opts.device or procs.gpu_device())
    jobs = plan_jobs(specs, opts, model)
    batch_size = model.default_batch_size if opts.batch_size is None else opts.batch_size
    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    searcher = None
    if search is not None:
        from .search_pipeline import SearchPipeline

        device = model.pipe.device
        reward = load_search_reward(search, None if device.type == "cpu" else device, model.is_video)
        searcher = SearchPipeline(
            model.pipe,
            search["search"],
            reward,
            particles=search["particles"],
            max_nfe=search["max_nfe"],
        )
    root = Path(opts.out)
    if root.exists() and not root.is_dir():
        raise UsageError(f"--out {str(root)!r} exists and is not a directory")
    manifest_path = root / "manifest.jsonl"
    done, manifest_clean = read_manifest(manifest_path, root)
    _check_existing(jobs, done, root)

    if procs.is_main:  # one process tidies up after a killed run before anyone appends to the manifest
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "grids").mkdir(exist_ok=True)
        remove_stale_temporaries(root / "images")
        remove_stale_temporaries(root / "grids")
        _tidy_videos(root)
        if not manifest_clean:
            rewrite_manifest(manifest_path, done)
    procs.barrier()

    mine = [j for j in jobs if j.prompt_index % procs.size == procs.rank]
    todo = [j for j in mine if (j.prompt_index, j.sample_index) not in done]
    per_prompt: dict[int, int] = {}
    for job in mine:
        per_prompt[job.prompt_index] = per_prompt.get(job.prompt_index, 0) + 1
    remaining = {p: 0 for p in per_prompt}
    for job in todo:
        remaining[job.prompt_index] += 1

    manifest = Manifest(manifest_path)
    schedulers: dict[str, Any] = {}
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="img", disable=opts.quiet or not procs.is_main, desc="generate")
    for p, left in remaining.items():  # prompts finished by an earlier run may still lack a grid
        if left == 0 and not (root / f"grids/{p}.png").exists():
            _write_grid(root, p, per_prompt[p])
    found: list[tuple[float, int]] = []
    for batch in _batches(todo, batch_size, search is not None):
        if searcher is not None:
            for job, (image, score, nfe, curve) in zip(
                batch, _search_batch(model, searcher, batch), strict=True
            ):
                found.append((score, nfe))
                _write_image(root, job, image, model.name, manifest, procs.rank, (score, nfe, curve))
                remaining[job.prompt_index] -= 1
                if remaining[job.prompt_index] == 0:
                    _write_grid(root, job.prompt_index, per_prompt[job.prompt_index])
                bar.set_postfix(reward=f"{score:.3g}", nfe=nfe, refresh=False)
                bar.update(1)
            continue
        spec = batch[0].sampler
        if spec.label not in schedulers:
            schedulers[spec.label] = spec.make_scheduler(model.base_config)
        generators = [torch.Generator().manual_seed(job.seed) for job in batch]
        images = model.generate(batch, schedulers[spec.label], generators)
        for job, image in zip(batch, images):
            _write_image(root, job, image, model.name, manifest, procs.rank)
            remaining[job.prompt_index] -= 1
            if remaining[job.prompt_index] == 0:
                _write_grid(root, job.prompt_index, per_prompt[job.prompt_index])
        bar.update(len(batch))
    bar.close()
    seconds = max(procs.gather(time.perf_counter() - start))  # the slowest process sets the pace
    made = int(sum(procs.gather(len(todo))))
    result = {
        "images": made,
        "skipped": len(jobs) - made,
        "seconds": seconds,
        "out": str(root),
        "is_main": procs.is_main,
        "videos": bool(jobs) and jobs[0].is_video,  # "images" then counts videos, in out/videos
    }
    if search is not None:  # means over the images this run made (all processes)
        reward_sum = sum(procs.gather(float(sum(r for r, _ in found))))
        nfe_sum = sum(procs.gather(float(sum(n for _, n in found))))
        result["search"] = {
            **search,
            "mean_reward": reward_sum / made if made else None,
            "mean_nfe": nfe_sum / made if made else None,
        }
    return result


def _prompt_specs(opts: GenerateOptions) -> list[PromptSpec]:
    if not opts.prompts and opts.prompt_file is None and opts.model == BUNDLED_DIGITS:
        return [PromptSpec(str(d)) for d in range(10)]  # the bundled model's default: every digit
    return load_prompts(opts.prompts, opts.prompt_file)
