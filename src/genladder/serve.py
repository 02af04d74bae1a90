"""A local web demo of trained runs: ``genladder serve RUN_DIR…`` starts a Gradio page on 127.0.0.1.

Three tabs: *Generate* (a grid from any rung that samples: digit, sampler, steps, guidance weight, seed,
with a progress bar), *Latent space* (VAE/CVAE: two sliders along two latent directions, and the 7×7 sweep
of those directions) and *Interpolate* (AE/VAE/CVAE: a straight line in code space between two test digits).

The form handling is plain functions (``generate_grid``, ``latent_point``, ``interpolate_digits``…) that
validate every field and raise ``GenladderError`` with one line; the Gradio layer only turns such an error
into a message in the page, so bad input never stops the server. Gradio is the optional extra ``demo`` and
is imported only when the server starts. The page never leaves this machine: telemetry and Gradio's
version check are off, and its fonts and scripts come with the package.
"""

from __future__ import annotations

import collections
import html
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image

from genladder.errors import GenladderError
from genladder.figures import AUTOENCODERS, ITERATIVE, draw_samples, latent_activity, latent_line, test_digits
from genladder.plotting import grid_image
from genladder.rungs import decode_image, encode_mean, kinds, rung
from genladder.runs import Run, load_run
from genladder.sampling import SAMPLERS, SamplerConfig, can_guide

HOST = "127.0.0.1"  # local only: the page can load any run folder whose path is typed in
MAX_FLOW_STEPS = 1000  # a flow's ODE has no T; 1,000 Heun steps are already far past any visible change
MAX_IMAGES = 400  # the sampler batch, so a grid is one sampler call and one progress bar
TEST_DIGITS = 1000  # the first test digits, for latent activity and interpolation
SLIDER_RANGE = 3.0  # latent sliders span ±3 prior standard deviations
SWEEP_POINTS = 7  # the sweep is SWEEP_POINTS × SWEEP_POINTS decodings
LATENT_KINDS = kinds(variational=True)  # the rungs with a prior over their codes: sliders mean something


NOT_AVAILABLE = ("that run is not available: the demo serves the run folders on its command line, and folders "
                 "below its --runs-root")
MAX_TYPED_RUNS = 4  # typed paths kept loaded besides the command line's runs (oldest dropped first)
MAX_PATH_CHARS = 1024


class RunCatalog:
    """The runs the demo serves, loaded once, keyed by their resolved path; typed paths are loaded on demand.

    A typed path is confined: it must resolve to one of the command line's run folders or to a folder
    below ``runs_root``; anything else, missing or not, gets the same ``NOT_AVAILABLE`` message, so the
    page tells a visitor nothing about which folders exist. Typed runs are kept in a small LRU
    (``MAX_TYPED_RUNS``); the command line's are kept for good. Loading happens outside the lock (the
    files are read with size checks and never block on a FIFO), so one slow load never stalls the others.
    """

    def __init__(self, run_dirs: Sequence[str], device: str = "auto", runs_root: str | None = None) -> None:
        self.device = device
        self._runs: dict[str, Run] = {}  # resolved path -> run; command-line runs first
        self._typed: collections.OrderedDict[str, None] = collections.OrderedDict()  # LRU order of typed keys
        self._digits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._lock = threading.Lock()
        self._alias: dict[str, str] = {}  # a name as the command line gave it -> its key
        self.runs_root = None
        if runs_root is not None:
            root = Path(runs_root)
            if not root.is_dir():
                raise GenladderError(f"--runs-root {runs_root} is not a folder")
            self.runs_root = Path(os.path.realpath(root))
        for run_dir in run_dirs:  # every RUN_DIR is checked before the server starts, with its real error
            key = os.path.realpath(str(run_dir))
            self._runs[key] = load_run(str(run_dir), device=device)
            self._alias[str(run_dir)] = key
        self.names = list(self._alias)
        self._pinned = set(self._runs)

    def _key(self, name: str) -> str:
        """The resolved path a name stands for, or GenladderError(NOT_AVAILABLE) when it is not allowed."""
        if name in self._alias:
            return self._alias[name]
        if len(name) > MAX_PATH_CHARS or "\x00" in name:
            raise GenladderError(NOT_AVAILABLE)
        key = os.path.realpath(os.path.expanduser(name))
        if key in self._pinned:
            return key
        if self.runs_root is not None and self.runs_root in Path(key).parents:
            return key
        raise GenladderError(NOT_AVAILABLE)

    def get(self, name: str | None) -> Run:
        name = (name or "").strip() if isinstance(name, str) or name is None else str(name)
        if not name:
            raise GenladderError("pick a run, or type the path of a run folder")
        key = self._key(name)
        with self._lock:
            if key in self._runs:
                if key in self._typed:
                    self._typed.move_to_end(key)
                return self._runs[key]
        try:
            run = load_run(key, device=self.device)  # outside the lock: a slow disk stalls only this request
        except GenladderError as error:
            print(f"genladder serve: {name!r} refused: {error}", file=sys.stderr, flush=True)  # for the operator
            raise GenladderError(NOT_AVAILABLE) from None
        with self._lock:
            self._runs.setdefault(key, run)
            self._typed[key] = None
            while len(self._typed) > MAX_TYPED_RUNS:
                dropped, _ = self._typed.popitem(last=False)
                self._runs.pop(dropped, None)
                self._digits.pop(dropped, None)
            return self._runs[key]

    def names_of(self, kinds: tuple[str, ...]) -> list[str]:
        return [name for name in self.names if self._runs[self._alias[name]].kind in kinds]

    def __len__(self) -> int:
        return len(self._runs)

    def test_digits(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The first TEST_DIGITS test images of the run's dataset in [0, 1], with labels (cached)."""
        run = self.get(name)
        key = self._key(name.strip())
        with self._lock:
            cached = self._digits.get(key)
        if cached is None:
            cached = test_digits(run, TEST_DIGITS, None)
            with self._lock:
                if key in self._runs:
                    self._digits[key] = cached
        return cached


# --- form fields -> validated values (one-line errors that name the field) ---


def whole_number(value, field: str, low: int, high: int | None = None) -> int:
    """A form number that must be a whole number in low..high."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise GenladderError(f"{field} is empty")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise GenladderError(f"{field} must be a whole number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise GenladderError(f"{field} must be a whole number, got {value}")
    number = int(number)
    if number < low or (high is not None and number > high):
        allowed = f"in {low}..{high}" if high is not None else f"at least {low}"
        raise GenladderError(f"{field} must be {allowed}, got {number}")
    return number


def parse_digit(value, run: Run, allow_all: bool = True) -> int | None:
    """The digit field: 'all' (None: every class) or one class of a conditional run."""
    text = "" if value is None else str(value).strip()
    num_classes = run.num_classes
    if text.lower() in ("", "all"):
        if not allow_all and num_classes:
            raise GenladderError(f"pick one digit in 0..{num_classes - 1}")
        return None
    if not num_classes:
        raise GenladderError(f"this {run.kind} run is unconditional: leave digit at 'all'")
    return whole_number(text, "digit", 0, num_classes - 1)


def parse_sampler(run: Run, sampler: str, steps, guidance) -> SamplerConfig | None:
    """The diffusion and flow fields as a SamplerConfig (None for an autoencoder run, which ignores them)."""
    if run.kind not in ITERATIVE:
        return None
    if sampler not in SAMPLERS:
        raise GenladderError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    steps = whole_number(steps, "steps", 1, run.schedule.T if run.config.family == "diffusion" else MAX_FLOW_STEPS)
    weight = 0.0
    if can_guide(run.config):  # guidance needs the null label of a conditional network (not a reflowed one's)
        try:
            weight = float(guidance)
        except (TypeError, ValueError):
            raise GenladderError(f"guidance weight must be a number, got {guidance!r}") from None
        if not 0 <= weight <= 100:
            raise GenladderError(f"guidance weight must be in 0..100, got {weight}")
    return SamplerConfig(sampler=sampler, steps=steps, guidance=weight, batch_size=MAX_IMAGES).for_model(run.config)


def _check_kind(run: Run, kinds: tuple[str, ...], what: str) -> None:
    if run.kind not in kinds:
        raise GenladderError(f"{what} need a {' or '.join(kinds)} run; this run is a {run.kind}")


# --- the three tabs, without Gradio ---


def generate_grid(catalog: RunCatalog, run_name, digit, n, sampler, steps, guidance, seed,
                  progress: Callable | None = None) -> tuple[Image.Image, str]:
    """The Generate tab: a grid of new images and a one-line caption.

    ``progress(fraction, desc=...)`` (Gradio's Progress) is called after every solver step.
    """
    run = catalog.get(run_name)
    if not rung(run.kind).samples:
        raise GenladderError("an autoencoder has no prior to sample from; use the Interpolate tab, or a vae run")
    label = parse_digit(digit, run)
    n = whole_number(n, "images", 1, MAX_IMAGES)
    seed = whole_number(seed, "seed", 0, 2**63 - 1)
    config = parse_sampler(run, sampler, steps, guidance)
    callback = None
    if progress is not None and config is not None:
        done = 0

        def callback(i, t, x_t, x0_hat):
            nonlocal done
            done += 1
            progress(done / config.steps, desc=f"{config.sampler} step {done}/{config.steps}")

    conditional = run.conditional
    started = time.perf_counter()
    samples = draw_samples(run, n, label=label, grid=conditional and label is None, sampler=config, seed=seed,
                           callback=callback)
    seconds = time.perf_counter() - started
    what = "one row per digit" if samples.columns and label is None else (f"digit {label}" if conditional else "")
    how = f", {config.sampler} {config.steps} steps, guidance w = {config.guidance:g}" if config else ""
    caption = (f"{run.kind}: {len(samples.images)} images{', ' + what if what else ''}{how}, seed {seed}; "
               f"{seconds:.1f} s")
    return grid_image(samples.images, samples.columns), caption


def latent_directions(catalog: RunCatalog, run_name) -> tuple[list[tuple[str, int]], str]:
    """Dropdown choices for the latent directions, most active first, and a note on how they were ordered."""
    run = catalog.get(run_name)
    _check_kind(run, LATENT_KINDS, "the latent sliders")
    latent_dim = run.config.model.latent_dim
    try:
        x, labels = catalog.test_digits(run_name)
        activity = latent_activity(run, x, labels).cpu()
    except GenladderError as error:  # no test set here: the sliders still work, in coordinate order
        return [(f"z[{i}]", i) for i in range(latent_dim)], f"latent coordinates in order ({error})"
    order = torch.argsort(activity, descending=True).tolist()
    choices = [(f"z[{i}] (activity {activity[i]:.2f})", i) for i in order]
    return choices, f"coordinates sorted by activity (variance of the posterior mean over {len(x)} test digits)"


def _latent_setup(catalog: RunCatalog, run_name, digit, dim_x, dim_y) -> tuple[Run, torch.Tensor, int, int]:
    run = catalog.get(run_name)
    _check_kind(run, LATENT_KINDS, "the latent sliders")
    # An unconditional VAE ignores the (hidden) digit field, whatever it holds.
    label = parse_digit(digit, run, allow_all=False) if run.num_classes else None
    latent_dim = run.config.model.latent_dim
    dim_x = whole_number(dim_x, "direction 1", 0, latent_dim - 1)
    dim_y = whole_number(dim_y, "direction 2", 0, latent_dim - 1)
    if dim_x == dim_y:
        raise GenladderError("pick two different latent directions")
    return run, torch.tensor([0 if label is None else label]), dim_x, dim_y


def _slider(value, field: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise GenladderError(f"{field} must be a number, got {value!r}") from None
    if not abs(value) <= SLIDER_RANGE:
        raise GenladderError(f"{field} must be in -{SLIDER_RANGE:g}..{SLIDER_RANGE:g}, got {value}")
    return value


@torch.no_grad()
def latent_point(catalog: RunCatalog, run_name, digit, dim_x, dim_y, a, b) -> tuple[Image.Image, str]:
    """The digit decoded at z = a·e_x + b·e_y (every other coordinate at the prior mean 0), drawn large."""
    run, label, dim_x, dim_y = _latent_setup(catalog, run_name, digit, dim_x, dim_y)
    a, b = _slider(a, "direction 1 slider"), _slider(b, "direction 2 slider")
    device = next(run.model.parameters()).device
    z = torch.zeros(1, run.config.model.latent_dim, device=device)
    z[0, dim_x], z[0, dim_y] = a, b
    image = decode_image(run.kind, run.model, z, label.to(device))
    return grid_image(image, scale=8), f"z[{dim_x}] = {a:+.1f}, z[{dim_y}] = {b:+.1f}, other coordinates 0"


@torch.no_grad()
def latent_sweep(catalog: RunCatalog, run_name, digit, dim_x, dim_y) -> Image.Image:
    """SWEEP_POINTS² decodings: direction 1 left to right, direction 2 top to bottom, both over ±SLIDER_RANGE."""
    run, label, dim_x, dim_y = _latent_setup(catalog, run_name, digit, dim_x, dim_y)
    device = next(run.model.parameters()).device
    values = torch.linspace(-SLIDER_RANGE, SLIDER_RANGE, SWEEP_POINTS, device=device)
    z = torch.zeros(SWEEP_POINTS**2, run.config.model.latent_dim, device=device)
    z[:, dim_x] = values.repeat(SWEEP_POINTS)  # column index
    z[:, dim_y] = values.repeat_interleave(SWEEP_POINTS)  # row index
    images = decode_image(run.kind, run.model, z, label.to(device).expand(len(z)))
    return grid_image(images, SWEEP_POINTS)


@torch.no_grad()
def interpolate_digits(catalog: RunCatalog, run_name, first, second, steps) -> tuple[Image.Image, str]:
    """Two test digits at the ends of a row, their codes' straight line decoded in between.

    A CVAE decodes under one label, so it gets one row per label of the two digits.
    """
    run = catalog.get(run_name)
    _check_kind(run, AUTOENCODERS, "interpolations")
    x, labels = catalog.test_digits(run_name)
    first = whole_number(first, "first test digit", 0, len(x) - 1)
    second = whole_number(second, "second test digit", 0, len(x) - 1)
    steps = whole_number(steps, "steps", 2, 32)
    ends = torch.tensor([first, second], device=x.device)
    z = encode_mean(run.kind, run.model, x[ends], labels[ends])
    path = latent_line(z[0], z[1], steps)
    conditional = rung(run.kind).conditional
    row_labels = labels[ends].tolist() if conditional else [int(labels[first])]
    rows = []
    for label in dict.fromkeys(row_labels):  # one row per distinct label, in order
        decoded = decode_image(run.kind, run.model, path, torch.full((steps,), label, device=x.device))
        rows.append(torch.cat([x[first : first + 1], decoded, x[second : second + 1]]))
    caption = (f"test digit #{first} (a {int(labels[first])}) → #{second} (a {int(labels[second])}), "
               f"{steps} decoded points between the originals")
    if conditional:
        caption += "; rows decoded as " + " and ".join(str(label) for label in dict.fromkeys(row_labels))
    return grid_image(torch.cat(rows), steps + 2), caption


# --- the Gradio page ---


def message(text: str, error: bool = False) -> str:
    """A status line for the page, as escaped HTML (paths and options are shown literally)."""
    css_class = "genladder-error" if error else "genladder-note"
    return f'<p class="{css_class}">{"⚠ " if error else ""}{html.escape(text)}</p>'


MAX_CONCURRENT = 2  # requests drawing at once (2 cores); the rest are told the demo is busy
MAX_QUEUE = 16  # requests Gradio holds waiting; past that it answers "queue is full" at once
BUSY = "the demo is busy with other requests; try again in a moment"
INTERNAL = "this request failed on the server (details on the server console); try other settings"
_working = threading.BoundedSemaphore(MAX_CONCURRENT)


def in_page(fn: Callable, images: int) -> Callable:
    """Wrap a handler that returns (image…, caption) so that every outcome is a one-line message.

    A GenladderError is shown as it is; out of memory and any other exception get a fixed line (the
    traceback goes to the server's stderr, never to the visitor); beyond MAX_CONCURRENT requests at
    once the answer is BUSY at once, instead of a queue that one visitor can fill.
    """

    def handler(*args, **kwargs):
        if not _working.acquire(blocking=False):
            return (*([None] * images), message(BUSY, error=True))
        try:
            result = fn(*args, **kwargs)
        except GenladderError as error:
            return (*([None] * images), message(str(error), error=True))
        except MemoryError:
            return (*([None] * images), message("not enough memory for this request; ask for fewer images",
                                                error=True))
        except Exception:  # noqa: BLE001 - a visitor sees one fixed line; the operator gets the traceback
            traceback.print_exc(file=sys.stderr)
            return (*([None] * images), message(INTERNAL, error=True))
        finally:
            _working.release()
        if not isinstance(result, tuple):
            result = (result, "")
        return (*result[:-1], message(result[-1]))

    return handler
