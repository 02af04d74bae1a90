"""The Gradio layout of ``genladder serve``: components and events only; the work is in ``genladder.serve``.

``build_app`` imports Gradio only when called, so importing this module needs no extra. Every component a
test drives has an ``elem_id``. Imports go one way: serve (the work) ← serve_page (the page) ← serve_http
(the server).
"""

from __future__ import annotations

import os

from genladder.errors import GenladderError
from genladder.figures import AUTOENCODERS, ITERATIVE
from genladder.rungs import rung
from genladder.sampling import DEFAULT_SAMPLER, FAMILY_SAMPLERS, can_guide
from genladder.serve import (
    LATENT_KINDS,
    MAX_IMAGES,
    SLIDER_RANGE,
    TEST_DIGITS,
    RunCatalog,
    generate_grid,
    in_page,
    interpolate_digits,
    latent_directions,
    latent_point,
    latent_sweep,
    message,
)

DIGITS = [str(d) for d in range(10)]
INTRO = """# genladder — the ladder of generative models
Pick a trained run (or type the path of another run folder) and draw digits. Diffusion runs sample with the
chosen solver; classifier-free guidance ε̃ = (1 + w)·ε(x, c) − w·ε(x, ∅) needs a cddpm run. Problems with
the form show up under the picture."""


def build_page(gr, catalog: RunCatalog):
    with gr.Blocks(title="genladder demo", analytics_enabled=False) as page:
        gr.Markdown(INTRO)
        with gr.Tab("Generate"):
            _generate_tab(gr, catalog)
        latent_runs = catalog.names_of(LATENT_KINDS)
        if latent_runs:
            with gr.Tab("Latent space"):
                _latent_tab(gr, catalog, latent_runs, page)
        autoencoder_runs = catalog.names_of(AUTOENCODERS)
        if autoencoder_runs:
            with gr.Tab("Interpolate"):
                _interpolate_tab(gr, catalog, autoencoder_runs)
    return page


def _run_dropdown(gr, names: list[str], elem_id: str):
    return gr.Dropdown(choices=names, value=names[0], allow_custom_value=True, elem_id=elem_id,
                       label="run (pick one, or type the path of a run folder)")


def _generate_tab(gr, catalog: RunCatalog) -> None:
    samplers = [name for name in catalog.names if rung(catalog.get(name).kind).samples] or catalog.names
    first = catalog.get(samplers[0])
    with gr.Row():
        with gr.Column(scale=1):
            run = _run_dropdown(gr, samplers, "gen-run")
            digit = gr.Dropdown(choices=["all", *DIGITS], value="all", allow_custom_value=True, elem_id="gen-digit",
                                label="digit (conditional runs; 'all' = one row per digit)")
            n = gr.Number(value=100, precision=0, label=f"images (1–{MAX_IMAGES})", elem_id="gen-n")
            with gr.Group(visible=first.kind in ITERATIVE) as diffusion_options:
                sampler = gr.Radio(**_sampler_choices(first.config), elem_id="gen-sampler",
                                   label="sampler: ancestral ddpm, ddim, dpmpp = DPM-Solver++(2M), dpmpp-sde = its "
                                   "SDE variant (diffusion); the ODE solvers euler, heun, midpoint (flow)")
                steps = gr.Number(value=20, precision=0, label="steps", elem_id="gen-steps")
                guidance = gr.Slider(0, 8, value=2, step=0.5, label="guidance weight w (cddpm, cflow)",
                                     visible=can_guide(first.config), elem_id="gen-guidance")
            seed = gr.Number(value=0, precision=0, label="seed", elem_id="gen-seed")
            button = gr.Button("Generate", variant="primary", elem_id="gen-button")
        with gr.Column(scale=2):
            grid = _picture(gr, "samples", "gen-grid")
            status = gr.HTML(elem_id="gen-status")

    def on_generate(run_name, digit, n, sampler, steps, guidance, seed, progress=gr.Progress()):  # noqa: B008
        return _keep_last_picture(gr, in_page(generate_grid, 1)(catalog, run_name, digit, n, sampler, steps, guidance,
                                                                seed, progress=progress))

    def on_run(run_name):
        """Show the fields this run uses (digit for conditional runs, sampler options for diffusion)."""
        try:
            loaded = catalog.get(run_name)
        except GenladderError as error:
            return gr.update(), gr.update(), gr.update(), gr.update(), message(str(error), error=True)
        conditional = loaded.conditional
        digit = gr.update(visible=True) if conditional else gr.update(visible=False, value="all")
        return (digit, gr.update(visible=loaded.kind in ITERATIVE), gr.update(**_sampler_choices(loaded.config)),
                gr.update(visible=can_guide(loaded.config)), "")

    # the progress bar on the picture only (on every output it was drawn twice: over the grid and the message)
    button.click(on_generate, [run, digit, n, sampler, steps, guidance, seed], [grid, status], show_progress_on=grid)
    run.change(on_run, run, [digit, diffusion_options, sampler, guidance, status])


def _picture(gr, caption: str, elem_id: str):
    """An output picture with its caption above it, not on it: Gradio draws an image's own label over the
    image's top-left corner, where it hid the first row of the latent sweep."""
    gr.Markdown(caption, elem_id=f"{elem_id}-caption")
    return gr.Image(type="pil", format="png", label=caption, show_label=False, interactive=False, elem_id=elem_id)


def _keep_last_picture(gr, outputs: tuple) -> tuple:
    """A handler's (picture…, message) with each missing picture (an error's) as "no change": the visitor keeps
    the last good picture under the message instead of an empty frame."""
    return tuple(gr.update() if output is None else output for output in outputs)


def _sampler_choices(description) -> dict:
    """The sampler field's choices and default for a run (its ModelDescription): its family's samplers
    (diffusion's for the others, whose sampler field is hidden)."""
    family = description.family if description.family in FAMILY_SAMPLERS else "diffusion"
    return {"choices": list(FAMILY_SAMPLERS[family]), "value": DEFAULT_SAMPLER[family]}


def _latent_tab(gr, catalog: RunCatalog, names: list[str], page) -> None:
    choices, note = _directions_or_empty(catalog, names[0])
    with gr.Row():
        with gr.Column(scale=1):
            run = _run_dropdown(gr, names, "latent-run")
            digit = gr.Dropdown(choices=DIGITS, value="0", allow_custom_value=True, elem_id="latent-digit",
                                label="digit (cvae)", visible=rung(catalog.get(names[0]).kind).conditional)
            dim_x = gr.Dropdown(choices=choices, value=_nth_value(choices, 0), label="direction 1 (latent coordinate)",
                                elem_id="latent-dim-x")
            dim_y = gr.Dropdown(choices=choices, value=_nth_value(choices, 1), label="direction 2 (latent coordinate)",
                                elem_id="latent-dim-y")
            a = gr.Slider(-SLIDER_RANGE, SLIDER_RANGE, value=0, step=0.1, elem_id="latent-a",
                          label="along direction 1 (prior standard deviations)")
            b = gr.Slider(-SLIDER_RANGE, SLIDER_RANGE, value=0, step=0.1, elem_id="latent-b",
                          label="along direction 2 (prior standard deviations)")
            order = gr.Markdown(note, elem_id="latent-order")
        with gr.Column(scale=2):
            with gr.Row():
                with gr.Column():
                    point = _picture(gr, "decoded at the sliders", "latent-point")
                with gr.Column():
                    sweep = _picture(gr, f"sweep: direction 1 across, direction 2 down, ±{SLIDER_RANGE:g}",
                                     "latent-sweep")
            status = gr.HTML(elem_id="latent-status")

    def on_point(run_name, digit, dim_x, dim_y, a, b):
        return _keep_last_picture(gr, in_page(latent_point, 1)(catalog, run_name, digit, dim_x, dim_y, a, b))

    def on_sweep(run_name, digit, dim_x, dim_y):
        return _keep_last_picture(gr, in_page(latent_sweep, 1)(catalog, run_name, digit, dim_x, dim_y))

    def on_run(run_name):
        try:
            loaded = catalog.get(run_name)
            new_choices, new_note = latent_directions(catalog, run_name)
        except GenladderError as error:
            return gr.update(), gr.update(), gr.update(), gr.update(), message(str(error), error=True)
        return (gr.update(visible=rung(loaded.kind).conditional),
                gr.update(choices=new_choices, value=_nth_value(new_choices, 0)),
                gr.update(choices=new_choices, value=_nth_value(new_choices, 1)), new_note, "")

    point_inputs, sweep_inputs = [run, digit, dim_x, dim_y, a, b], [run, digit, dim_x, dim_y]
    run.change(on_run, run, [digit, dim_x, dim_y, order, status]).then(
        on_sweep, sweep_inputs, [sweep, status]).then(on_point, point_inputs, [point, status])
    for field in (digit, dim_x, dim_y):
        field.input(on_sweep, sweep_inputs, [sweep, status]).then(on_point, point_inputs, [point, status])
    for slider in (a, b):
        slider.change(on_point, point_inputs, [point, status])
    page.load(on_sweep, sweep_inputs, [sweep, status]).then(on_point, point_inputs, [point, status])


def _directions_or_empty(catalog: RunCatalog, name: str) -> tuple[list[tuple[str, int]], str]:
    try:
        return latent_directions(catalog, name)
    except GenladderError as error:
        return [], str(error)


def _nth_value(choices: list[tuple[str, int]], index: int):
    return choices[index][1] if len(choices) > index else None


def _interpolate_tab(gr, catalog: RunCatalog, names: list[str]) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            run = _run_dropdown(gr, names, "interp-run")
            first = gr.Number(value=0, precision=0, label=f"first test digit (index 0–{TEST_DIGITS - 1})",
                              elem_id="interp-first")
            second = gr.Number(value=1, precision=0, label="second test digit", elem_id="interp-second")
            steps = gr.Number(value=10, precision=0, label="points on the line (2–32)", elem_id="interp-steps")
            button = gr.Button("Interpolate", variant="primary", elem_id="interp-button")
        with gr.Column(scale=2):
            row = _picture(gr, "original, decoded straight line between the codes, original", "interp-row")
            status = gr.HTML(elem_id="interp-status")

    def on_interpolate(run_name, first, second, steps):
        return _keep_last_picture(gr, in_page(interpolate_digits, 1)(catalog, run_name, first, second, steps))

    button.click(on_interpolate, [run, first, second, steps], [row, status], show_progress_on=row)


def import_gradio():
    """Gradio, with its telemetry and version check off; a one-line error when the extra is missing."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # never phone home: the demo is local
    try:
        import gradio
    except ImportError:
        raise GenladderError("the web demo needs Gradio: pip install 'genladder[demo]'") from None
    return gradio


def build_app(catalog: RunCatalog):
    """The Gradio Blocks page over the catalog's runs."""
    return build_page(import_gradio(), catalog)
