"""Do newer guidance rules beat classifier-free guidance on a trained cddpm? One run, one weight, rule by rule.

    python benchmarks/guidance_rules.py runs/cpu-fast --guidance 1 --rows cfg,rescale:0.7,apg:0,auto:step_0000516 \
        --n 1000 --markdown rules.md

Each row draws ``--n`` samples (equal shares of the digits, one seed for every row, the run's own sampler and
20 steps) with one rule in place of genladder's classifier-free guidance, and measures them under both feature
networks, each FID beside its floor at the same n (``genladder evaluate``'s figures). The rules, with w the
guidance weight:

* ``cfg`` — Ho & Salimans 2022, eq. 6: (1 + w)·out(x, c) − w·out(x, ∅), what ``genladder sample --guidance``
  does (out is the network's raw output: ε̂, x̂₀ or v̂).
* ``rescale:φ`` — Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed", eqs. 15–16:
  the guided output rescaled to the conditional output's standard deviation (per image), mixed back with
  weight φ: their cure for over-exposed, over-saturated guided images.
* ``apg:η`` — Sadat et al. 2024, "Eliminating oversaturation and artifacts of high guidance scales" (adaptive
  projected guidance, without its momentum and norm threshold): the update Δ = x̂₀(x, c) − x̂₀(x, ∅) split into
  its part parallel to x̂₀(x, c) and the rest; x̂₀ = x̂₀(x, c) + w·(Δ⊥ + η·Δ∥). Their claim: the parallel part
  saturates, the orthogonal part improves the image.
* ``auto:CHECKPOINT`` — Karras et al. 2024, "Guiding a diffusion model with a bad version of itself"
  (autoguidance): the same rule as cfg with the unconditional output replaced by the *conditional* output of
  an earlier checkpoint of the same run, (1 + w)·out(x, c) − w·out_early(x, c). The paper's guide is also
  smaller; here it is only shorter-trained. ``auto:CHECKPOINT:W_CFG`` adds classifier-free guidance of weight
  W_CFG on top, out(x, c) + w·(out(x, c) − out_early(x, c)) + W_CFG·(out(x, c) − out(x, ∅)) (their §5 combines
  the two the same way): three network passes a step instead of two.

The rules are swapped in for ``genladder.sampling.classifier_free_guidance`` while a row is drawn, so that
everything else (sampler, seeds, judges) is the library's own; none of them is part of the library, since
none paid here (docs/performance.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

import genladder.sampling as sampling
from genladder.checkpoint import atomic_write_bytes
from genladder.diffusion.objective import DiffusionObjective, OutputFn, as_eps_fn
from genladder.errors import GenladderError
from genladder.evaluate import EvaluationConfig, evaluate_run
from genladder.evaluate.curves import curve_markdown, curve_row
from genladder.evaluate.evaluation import RealDigitCache
from genladder.runs import load_run

ORIGINAL_RULE = sampling.classifier_free_guidance


class X0Space:
    """The affine maps between a network's raw output and the clean-image estimate x̂₀ at (x_t, t), through the
    library's own table of prediction types: ``as_eps_fn`` (output → ε̂) and ``DiffusionObjective.target``
    ((x̂₀, ε̂) → the output a network of this type gives)."""

    def __init__(self, schedule, prediction: str) -> None:
        self.schedule, self.prediction = schedule, prediction
        self.objective = DiffusionObjective(schedule, prediction)

    def x0(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        eps = as_eps_fn(lambda *_: out, self.schedule, self.prediction)(x_t, t)
        return self.schedule.predict_x0_from_eps(x_t, t, eps)

    def output(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return self.objective.target(x0, self.schedule.predict_eps_from_x0(x_t, t, x0), t)


def per_image(values: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, values.dim()))


def rescaled(guided: torch.Tensor, conditional: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. 2024, eq. 15 (match the conditional output's std per image), then eq. 16 (mix with weight φ)."""
    matched = guided * (conditional.std(dim=per_image(guided), keepdim=True)
                        / guided.std(dim=per_image(guided), keepdim=True))
    return phi * matched + (1 - phi) * guided


def projected(x0_cond: torch.Tensor, x0_uncond: torch.Tensor, w: float, eta: float) -> torch.Tensor:
    """Sadat et al. 2024: Δ = x̂₀(c) − x̂₀(∅) split along x̂₀(c) (per image); x̂₀(c) + w·(Δ⊥ + η·Δ∥)."""
    delta = x0_cond - x0_uncond
    unit = torch.nn.functional.normalize(x0_cond.flatten(1), dim=1).view_as(x0_cond)
    parallel = (delta * unit).sum(dim=per_image(delta), keepdim=True) * unit
    return x0_cond + w * (delta - parallel + eta * parallel)


def make_rule(rule: str, parameter: str, space: X0Space, guide: torch.nn.Module | None):
    """A drop-in for classifier_free_guidance(model, labels, w, null_label) that applies ``rule``."""
    cfg_weight = float(parameter.partition(":")[2] or 0) if rule == "auto" else 0.0  # auto:CHECKPOINT[:W_CFG]

    def guidance(model, labels: torch.Tensor, guidance_weight: float, null_label: int) -> OutputFn:
        w = float(guidance_weight)
        if w == 0.0 or rule == "cfg":
            return ORIGINAL_RULE(model, labels, w, null_label)

        def fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            y = labels.to(x_t.device)
            if rule == "auto" and not cfg_weight:  # Karras et al. 2024: the earlier checkpoint's output guides
                return (1 + w) * model(x_t, t, y) - w * guide(x_t, t, y)
            # the conditional and unconditional passes as one batch [c; ∅], as classifier_free_guidance does
            out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_label)]))
            conditional, unconditional = out.chunk(2)
            if rule == "auto":
                return conditional + w * (conditional - guide(x_t, t, y)) + cfg_weight * (conditional - unconditional)
            if rule == "rescale":
                return rescaled((1 + w) * conditional - w * unconditional, conditional, float(parameter))
            x0 = projected(space.x0(x_t, t, conditional), space.x0(x_t, t, unconditional), w, float(parameter))
            return space.output(x_t, t, x0)

        return fn

    return guidance


@contextmanager
def rule_in_place(rule) -> Iterator[None]:
    sampling.classifier_free_guidance = rule
    try:
        yield
    finally:
        sampling.classifier_free_guidance = ORIGINAL_RULE


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--rows", default="cfg,rescale:0.7,apg:0", help="rule[:parameter],… (default "
                        "cfg,rescale:0.7,apg:0)")
    parser.add_argument("--guidance", type=float, default=1.0, help="the weight w of every row (default 1)")
    parser.add_argument("--n", type=int, default=1000, help="samples per row (default 1000)")
    parser.add_argument("--sampler", choices=sampling.DIFFUSION_SAMPLERS, help="20 steps of this sampler (default: "
                        "the library's; the committed table used dpmpp, the default then)")
    parser.add_argument("--markdown", help="write the table here too")
    args = parser.parse_args()

    run_dir = Path(args.run_dir)
    run = load_run(run_dir, device="cpu")
    if run.kind != "cddpm":
        raise SystemExit(f"guidance_rules: {run_dir} is a {run.kind} run; these rules are written for a cddpm")
    schedule_config = run.config.objective.schedule
    space = X0Space(schedule_config.build(), schedule_config.prediction)
    evaluation = EvaluationConfig(n=args.n, samples_only=True,
                                  sampling=sampling.SamplerConfig(sampler=args.sampler, steps=20,
                                                                  guidance=args.guidance))
    names, rows, cache = [], [], RealDigitCache()
    for spec in args.rows.split(","):
        rule, _, parameter = spec.partition(":")
        if rule not in ("cfg", "rescale", "apg", "auto") or (rule != "cfg" and not parameter):
            raise SystemExit(f"guidance_rules: unknown row {spec!r}; use cfg, rescale:PHI, apg:ETA or "
                     "auto:CHECKPOINT[:W_CFG]")
        guide = (load_run(run_dir, device="cpu", checkpoint_name=parameter.partition(":")[0]).model
                 if rule == "auto" else None)
        print(f"genladder: {spec}", file=sys.stderr, flush=True)
        with rule_in_place(make_rule(rule, parameter, space, guide)):
            result = evaluate_run(run_dir, evaluation, progress=False, quiet=True, write=False, cache=cache)
        names.append(spec)
        rows.append(curve_row(result))
    table = curve_markdown(f"rule (w = {args.guidance:g})", names, rows)
    print(table, end="")
    if args.markdown:
        atomic_write_bytes(args.markdown, table.encode())
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GenladderError as error:
        sys.exit(f"guidance_rules: {error}")
