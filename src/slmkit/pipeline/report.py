"""The report of one or more runs: report.md and a self-contained report.html.

What a person choosing a model needs, measured: the original against every
model a stage made (parameters, bytes on disk, peak RAM, prefill/decode speed,
time to first token, perplexity, KL divergence from the original and top-1
agreement with it, task accuracies, each with its change from the original),
each GGUF plan's types and predicted KL beside the KL measured, plots (quality
against size with the Pareto front, decode speed per model, per-layer sparsity
or quantization error), sample answers of the original and the final model,
and the command that runs each artefact.
This module computes them; the layout is in templates/report.md.j2 and report.html.j2.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from slmkit.errors import SlmError, json_problem
from slmkit.models.checkpoint import read_manifest, write_atomic
from slmkit.models.loading import WEB_MANIFEST, is_onnx, is_pte, local_path
from slmkit.pipeline.registry import STAGES
from slmkit.pipeline.run import RUN_FILE

# (key in a measurement, column title, unit, higher is better, format)
COLUMNS = [
    ("parameters", "parameters", "", None, "{:,.0f}"),
    ("bytes_on_disk", "on disk", "MB", False, "{:.1f}"),
    ("peak_rss_bytes", "peak RAM", "MB", False, "{:.0f}"),
    ("prefill_tokens_per_s", "prefill", "tok/s", True, "{:.1f}"),
    ("decode_tokens_per_s", "decode", "tok/s", True, "{:.1f}"),
    ("time_to_first_token_s", "first token", "s", False, "{:.3f}"),
    ("token_perplexity", "perplexity", "", False, "{:.3f}"),
    ("kl_mean", "KL to original", "nats", False, "{:.3g}"),  # a near-lossless file's is 1e-4 or less
    ("top1_agreement", "top-1 agreement", "%", True, "{:.1f}"),
]
ACCURACY_KEYS = ("acc", "acc_norm", "accuracy", "macro_f1")
PERCENT_KEYS = (*ACCURACY_KEYS, "top1_agreement")  # shares, shown as percentages
EVAL_KEYS = ("token_perplexity", "kl_mean", "top1_agreement", *ACCURACY_KEYS)  # what the table takes from eval
PLAN_BUDGETS = ("size", "bpw", "max_kl")  # a GGUF plan's budget, one of them, in its stage's result
MEGABYTE_KEYS = ("bytes_on_disk", "peak_rss_bytes")


@dataclass
class ModelRow:
    run: str
    label: str
    stage: str
    path: str
    runtime: str | None = None  # what ran it: "llamacpp", "torch", "torch int8" (see _runtime)
    values: dict = field(default_factory=dict)
    variant_of: str | None = None  # the label of the model this row measured again, run another way
    compiled: bool = False  # its decode step was compiled when benched
    plan: dict | None = None  # the GGUF plan it holds: its totals, budget and "stage", the stage that made it

    @property
    def name(self) -> str:
        return self.label if not self.run else f"{self.run}/{self.label}"

    @property
    def backend(self) -> str | None:
        return f"{self.runtime} compiled" if self.compiled and self.runtime else self.runtime


def read_run(directory: Path) -> dict:
    path = directory / RUN_FILE
    if not path.is_file():
        raise SlmError(f"{directory}: no {RUN_FILE} here; give a directory `slm run` wrote")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SlmError(f"{path}: not valid JSON ({json_problem(exc)})") from None


def _bytes_on_disk(path: Path) -> int | None:
    from slmkit.models.info import bytes_on_disk  # torch: kept out of CLI start-up

    return bytes_on_disk(path) if path.exists() else None


def _data_of(state: dict) -> str:
    """The run's --data, else what calibrated it without: a synth stage's answers, or the model's own text."""
    if state["data"]:
        return state["data"]
    synth = [name for name, record in state["stages"].items() if record.get("stage") == "synth"]
    return f"none (calibrated on {synth[-1]}'s answers)" if synth else "none (data-free)"


def makes_model(stage: str) -> bool:
    """Whether a stage's output is a model (a synth stage's is data); a stage this slmkit no longer knows
    counts as one, so its output still gets a row."""
    kind = STAGES.get(stage)
    return kind is None or kind.schema.makes_model


def collect_rows(directory: Path, state: dict, run_label: str) -> list[ModelRow]:
    """One row per model of the run and way it ran (backend and torch weights), filled from every measuring
    stage (later ones win): a model benched in float32 and again on int8 gets a row for each."""
    rows = {"original": ModelRow(run_label, "original", "original", state["model"])}
    newest = rows["original"]  # the model the next model-making stage starts from
    for name, record in state["stages"].items():
        if record.get("status") != "done":
            continue
        if record["stage"] in ("eval", "bench"):
            for label, result in record["result"].items():
                row = rows.get(label)
                if row is None:
                    continue
                runtime = _runtime(result)
                if row.runtime is not None and runtime is not None and runtime != row.runtime:
                    row = _variant_row(rows, row, runtime)
                row.runtime = runtime or row.runtime
                if record["stage"] == "bench":
                    row.compiled = bool(result.get("compiled"))
                    row.values.update({key: result.get(key) for key in
                                       ("parameters", "bytes_on_disk", "peak_rss_bytes", "prefill_tokens_per_s",
                                        "decode_tokens_per_s", "time_to_first_token_s")})
                else:
                    row.values.update({key: value for key, value in result.items() if key in EVAL_KEYS})
        elif makes_model(record["stage"]):
            path = directory / record["output"]
            rows[name] = ModelRow(run_label, name, record["stage"], str(path),
                                  plan=_plan_of(name, record, path, newest))
            rows[name].values.setdefault("bytes_on_disk", _bytes_on_disk(path))
            newest = rows[name]
    original = rows["original"]
    if original.values.get("bytes_on_disk") is None:  # not benched: an alias's files, if they are here
        found = local_path(original.path)
        original.values["bytes_on_disk"] = _bytes_on_disk(found) if found else None
    ordered = []  # each model, then its variants
    for row in rows.values():
        if row.variant_of is None:
            ordered.append(row)
            for variant in (v for v in rows.values() if v.variant_of == row.label):
                if variant.values.get("bytes_on_disk") is None:  # measured by eval only
                    variant.values["bytes_on_disk"] = row.values.get("bytes_on_disk")
                ordered.append(variant)
    return ordered


def _variant_row(rows: dict[str, ModelRow], base: ModelRow, runtime: str) -> ModelRow:
    """The row of `base`'s model measured on `runtime` ("gptq-w8 (torch int8)"), made on first use."""
    label = f"{base.label} ({runtime})"
    if label not in rows:
        rows[label] = ModelRow(base.run, label, base.stage, base.path, runtime, variant_of=base.label,
                               plan=base.plan)
    return rows[label]


def _plan_of(name: str, record: dict, path: Path, source: ModelRow) -> dict | None:
    """The GGUF plan a stage's model holds: a planned checkpoint's own (the totals its gguf-plan.json records: the
    file's bytes, the predicted KL, the count of each type; the budget from its stage's result), or, for a GGUF
    written as a plan says, the plan of `source`, the checkpoint it was exported from."""
    from slmkit.compress.gguf_plan import PLAN_FILE, read_plan_summary  # torch: kept out of CLI start-up

    result = record.get("result") or {}
    if record["stage"] == "export":
        return source.plan if result.get("quant") == "plan" else None
    if not (path / PLAN_FILE).is_file():
        return None
    return {**read_plan_summary(path), **{key: result.get(key) for key in PLAN_BUDGETS}, "stage": name}


def _runtime(result: dict) -> str | None:
    """The backend a measurement ran on, with the torch weights it ran ("torch int8"): what changes the
    numbers a model gives, so a model measured both ways gets a row for each. (Compiling the decode step
    changes its speed only: the row says "compiled".)"""
    backend = result.get("backend")
    if backend != "torch":
        return backend
    weights = result.get("weights") or result.get("dtype")  # eval records weights, bench the dtype it ran
    return f"torch {weights}" if weights and weights != "float32" else "torch"


def _format(key: str, value) -> str:
    if value is None:
        return "—"
    if key in MEGABYTE_KEYS:
        value = value / 1e6
    spec = next((c[4] for c in COLUMNS if c[0] == key), "{:.2f}")
    return spec.format(value * 100 if key in PERCENT_KEYS else value)


def _change(value, reference) -> str:
    if value is None or not reference:
        return ""
    return f"{100 * (value / reference - 1):+.1f}%"


def _table(rows: list[ModelRow]) -> tuple[list[str], list[list[str]]]:
    """Header and cells; every number after the first row carries its change from that run's original."""
    accuracy_keys = [k for k in ACCURACY_KEYS if any(k in r.values for r in rows)]
    keys = [c[0] for c in COLUMNS if any(r.values.get(c[0]) is not None for r in rows)] + accuracy_keys
    titles = {c[0]: c[1] + (f" ({c[2]})" if c[2] else "") for c in COLUMNS}
    titles.update({k: f"{k} (%)" for k in accuracy_keys})
    header = ["model", "stage", "backend"] + [titles[k] for k in keys]
    originals = {r.run: r for r in rows if r.label == "original"}
    cells = []
    for row in rows:
        reference = originals.get(row.run)
        line = [row.name, row.stage, row.backend or "—"]
        for key in keys:
            text = _format(key, row.values.get(key))
            if reference is not row and reference and row.values.get(key) is not None:
                change = _change(row.values[key], reference.values.get(key))
                text = f"{text} ({change})" if change else text
            line.append(text)
        cells.append(line)
    return header, cells


def _plans(rows: list[ModelRow]) -> list[tuple[str, str]]:
    """(model, its GGUF plan in a line) for each model made from a plan and compared with the original (for a
    plan none of whose models was, its checkpoint): the budget, the type counts, the GGUF file's size, and the KL
    the plan predicted beside the KL the eval stage measured."""
    planned = [row for row in rows if row.plan]
    measured_plans = {(row.run, row.plan["stage"]) for row in planned if row.values.get("kl_mean") is not None}
    shown = [row for row in planned if row.values.get("kl_mean") is not None
             or ((row.run, row.plan["stage"]) not in measured_plans and row.label == row.plan["stage"])]
    found = []
    for row in shown:
        plan = row.plan
        made_by = "its plan" if plan["stage"] == row.label else f"the plan of {plan['stage']}"
        types = ", ".join(f"{count} {type_name}" for type_name, count in plan["types"].items())
        measured = row.values.get("kl_mean")
        measured_text = "not measured" if measured is None else _format("kl_mean", measured)
        if row.values.get("top1_agreement") is not None:
            measured_text += f" (top-1 agreement {_format('top1_agreement', row.values['top1_agreement'])}%)"
        budget = f" ({_budget(plan)})" if any(plan.get(key) for key in PLAN_BUDGETS) else ""
        found.append((row.name, f"{made_by}{budget}: {types}; GGUF file "
                                f"{_format('bytes_on_disk', plan['file_bytes'])} MB; predicted KL "
                                f"{_format('kl_mean', plan['predicted_kl'])}, measured KL {measured_text}"))
    return found


def _budget(plan: dict) -> str:
    """The one budget a plan was made under (GGUFPlanConfig: size, bpw or max_kl)."""
    if plan.get("size"):
        return f"size {_format('bytes_on_disk', plan['size'])} MB"
    if plan.get("bpw"):
        return f"{plan['bpw']} bits per weight"
    return f"max KL {plan['max_kl']}"


def headline(rows: list[ModelRow]) -> dict:
    """Original vs the final model of the first run: size ratio, decode speed ratio, perplexity change, and the
    final model's KL divergence from the original."""
    first_run = [r for r in rows if r.run == rows[0].run]
    original = first_run[0]
    measured = [r for r in first_run[1:] if r.values.get("token_perplexity") is not None
                or r.values.get("decode_tokens_per_s") is not None]
    final = (measured or first_run)[-1]

    def ratio(key):
        a, b = original.values.get(key), final.values.get(key)
        return a / b if a and b else None

    speed = (final.values.get("decode_tokens_per_s") or 0) / original.values["decode_tokens_per_s"] \
        if original.values.get("decode_tokens_per_s") and final.values.get("decode_tokens_per_s") else None
    ppl_a, ppl_b = original.values.get("token_perplexity"), final.values.get("token_perplexity")
    return {"original": original.name, "final": final.name, "size_ratio": ratio("bytes_on_disk"),
            "decode_speed_ratio": speed,
            "perplexity_change_percent": 100 * (ppl_b / ppl_a - 1) if ppl_a and ppl_b else None,
            "original_perplexity": ppl_a, "final_perplexity": ppl_b,
            "final_kl": final.values.get("kl_mean")}


def _headline_text(numbers: dict) -> str:
    parts = []
    if numbers["size_ratio"]:
        parts.append(f"{numbers['size_ratio']:.2f}x smaller on disk")
    if numbers["decode_speed_ratio"]:
        parts.append(f"{numbers['decode_speed_ratio']:.2f}x the decode speed")
    if numbers["perplexity_change_percent"] is not None:
        parts.append(f"perplexity {numbers['original_perplexity']:.3f} -> {numbers['final_perplexity']:.3f} "
                     f"({numbers['perplexity_change_percent']:+.1f}%)")
    if numbers["final_kl"] is not None:
        parts.append(f"KL {_format('kl_mean', numbers['final_kl'])} nats per token from the original")
    return f"{numbers['final']} vs {numbers['original']}: " + (", ".join(parts) if parts else "not measured")


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _plots(rows: list[ModelRow], layer_series: dict[str, tuple[str, list[float]]],
           curves: dict[str, dict] | None = None) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = {"pareto": _pareto_plot(plt, rows), "decode": _decode_plot(plt, rows),
             "layers": _layers_plot(plt, layer_series) if layer_series else None,
             "loss": _loss_plot(plt, curves) if curves else None}
    plots = {}
    for name, figure in drawn.items():
        if figure is not None:
            plots[name] = _png(figure)
            plt.close(figure)
    return plots


def _label_axes(axes, title: str, xlabel: str, ylabel: str) -> None:
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)


def _pareto_plot(plt, rows: list[ModelRow]):
    measured = [r for r in rows if r.values.get("bytes_on_disk") and r.values.get("token_perplexity")]
    if not measured:
        return None
    figure, axes = plt.subplots(figsize=(6.4, 4))
    for run in sorted({r.run for r in measured}):
        mine = [r for r in measured if r.run == run]
        axes.scatter([r.values["bytes_on_disk"] / 1e6 for r in mine],
                     [r.values["token_perplexity"] for r in mine], label=run or None, zorder=3)
    for r in measured:
        axes.annotate(r.name, (r.values["bytes_on_disk"] / 1e6, r.values["token_perplexity"]),
                      textcoords="offset points", xytext=(4, 4), fontsize=8)
    # The front: models no other model beats on both size and perplexity.
    front, best = [], float("inf")
    for size, perplexity in sorted((r.values["bytes_on_disk"] / 1e6, r.values["token_perplexity"])
                                   for r in measured):
        if perplexity < best:
            front.append((size, perplexity))
            best = perplexity
    axes.plot([p[0] for p in front], [p[1] for p in front], "--", color="grey", label="Pareto front", zorder=2)
    _label_axes(axes, "Quality vs size", "size on disk (MB)", "perplexity (lower is better)")
    return figure


def _decode_plot(plt, rows: list[ModelRow]):
    speeds = [(r.name, r.values["decode_tokens_per_s"]) for r in rows if r.values.get("decode_tokens_per_s")]
    if not speeds:
        return None
    figure, axes = plt.subplots(figsize=(6.4, 0.6 + 0.45 * len(speeds)))
    axes.barh([s[0] for s in speeds][::-1], [s[1] for s in speeds][::-1], color="#4c72b0")
    for index, (_, value) in enumerate(speeds[::-1]):
        axes.text(value, index, f" {value:.1f}", va="center", fontsize=8)
    axes.set_xlim(0, 1.12 * max(value for _, value in speeds))  # room for the longest bar's label
    axes.set_xlabel("decode tokens/s (higher is better)")
    axes.set_title("Decode speed")
    return figure


def _layers_plot(plt, layer_series: dict[str, tuple[str, list[float]]]):
    metrics = sorted({metric for metric, _ in layer_series.values()})
    figure, axes_list = plt.subplots(len(metrics), 1, figsize=(6.4, 3.2 * len(metrics)), squeeze=False)
    for axes, metric in zip(axes_list[:, 0], metrics):  # one panel per metric: their scales differ
        for label, (series_metric, values) in layer_series.items():
            if series_metric == metric:
                axes.plot(range(len(values)), values, marker=".", label=label)
        _label_axes(axes, f"Per-layer {metric}", "", metric)
    axes_list[-1, 0].set_xlabel("layer (model order)")
    figure.tight_layout()
    return figure


def _loss_plot(plt, curves: dict[str, dict]):
    figure, axes = plt.subplots(figsize=(6.4, 4))
    for label, curve in curves.items():
        line, = axes.plot([p[0] for p in curve["train"]], [p[1] for p in curve["train"]], label=f"{label} train")
        if curve.get("eval"):
            axes.plot([p[0] for p in curve["eval"]], [p[1] for p in curve["eval"]], "o--", color=line.get_color(),
                      label=f"{label} eval")
    _label_axes(axes, "Training loss", "optimizer step", "loss")
    return figure


def _loss_curves(states: list[tuple[Path, dict]]) -> dict[str, dict]:
    """The loss curve of every finished training stage (finetune, distill), by stage name."""
    multiple = len(states) > 1
    return {(f"{directory.name}/" if multiple else "") + name: record["result"]["loss_curve"]
            for directory, state in states for name, record in state["stages"].items()
            if record.get("status") == "done" and (record.get("result") or {}).get("loss_curve", {}).get("train")}


def _layer_series(rows: list[ModelRow]) -> dict[str, tuple[str, list[float]]]:
    """Per-layer sparsity (prune) or weight MSE (quantize) from each checkpoint's manifest."""
    series = {}
    for row in rows:
        if row.stage not in ("prune", "quantize") or not Path(row.path).is_dir() or row.variant_of:
            continue
        layers = (read_manifest(row.path) or {}).get("metrics", {}).get("layers", {})
        metric = "sparsity" if row.stage == "prune" else "weight_mse"
        values = [m[metric] for m in layers.values() if metric in m]
        if values:
            series[row.name] = (metric, values)
    return series


def _commands(rows: list[ModelRow]) -> list[tuple[str, str, str]]:
    """(model, where it is, a command that runs it): chat in the terminal, and the OpenAI-compatible server
    for every artefact `slm serve` runs (a checkpoint, a GGUF; not an ONNX or ExecuTorch export); a web folder's
    page."""
    found = []
    for row in rows:
        if row.label == "original" or row.stage in ("eval", "bench") or row.variant_of:
            continue
        if (Path(row.path) / WEB_MANIFEST).is_file():
            found.append((row.name + " (browser)", row.path,
                          f"slm serve --static {row.path}  # then open http://127.0.0.1:8000/"))
            continue
        found.append((row.name, row.path, f"slm chat {row.path}"))
        if not is_onnx(row.path) and not is_pte(row.path):  # slm serve batches rows on torch and llama.cpp
            found.append((row.name + " (server)", row.path, f"slm serve {row.path}"))
        if row.path.endswith(".gguf"):
            modelfile = Path(row.path).with_suffix(".Modelfile")
            if modelfile.exists():
                found.append((row.name + " (Ollama)", str(modelfile),
                              f"cd {modelfile.parent} && ollama create {Path(row.path).stem} -f {modelfile.name}"))
    return found


def write_report(run_dirs: list[Path], out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write report.md and report.html (into the run directory, or `out_dir` for several runs)."""
    if not run_dirs:
        raise SlmError("give at least one run directory")
    if len(run_dirs) > 1 and out_dir is None:
        raise SlmError("several runs: say where the report goes with --out DIR")
    out_dir = Path(out_dir or run_dirs[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    states = [(Path(d), read_run(Path(d))) for d in run_dirs]
    multiple = len(states) > 1
    rows = []
    for directory, state in states:
        rows += collect_rows(directory, state, directory.name if multiple else "")
    numbers = headline(rows)
    plots = _plots(rows, _layer_series(rows), _loss_curves(states))
    header, cells = _table(rows)
    samples = [] if multiple else (states[0][1].get("samples") or [])
    commands = _commands(rows)
    title = "slmkit report: " + ", ".join(state["recipe_name"] for _, state in states)
    stage_times = [((f"{directory.name}/" if multiple else "") + f"{name} ({record['stage']})", record["seconds"])
                   for directory, state in states
                   for name, record in state["stages"].items() if record.get("status") == "done"]

    assets = out_dir / "report-files"
    assets.mkdir(exist_ok=True)
    for name, png in plots.items():
        write_atomic(assets / f"{name}.png", png)
    runs = [{"directory": str(directory), "model": state["model"], "data": _data_of(state),
             "evaluated_on": _evaluated_on(state), "finished": state.get("finished") or "no (stopped early)"}
            for directory, state in states]
    context = {"title": title, "runs": runs, "headline": _headline_text(numbers), "header": header, "cells": cells,
               "plans": _plans(rows), "samples": samples, "final": samples[0]["final"] if samples else None,
               "commands": commands, "stage_times": stage_times}
    markdown = _render("report.md.j2", **context, plots=list(plots))
    page = _render("report.html.j2", **context,
                   plots={name: base64.b64encode(png).decode() for name, png in plots.items()})
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    write_atomic(md_path, markdown.encode())
    write_atomic(html_path, page.encode())
    return md_path, html_path


def _evaluated_on(state: dict) -> str:
    """The files the run's eval stages scored, for the reader of a perplexity."""
    files = {result.get("data") for record in state["stages"].values() if record.get("stage") == "eval"
             for result in record.get("result", {}).values()}
    return ", ".join(sorted(f for f in files if f)) or "not evaluated"


def _render(name: str, **context) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    # StrictUndefined: a name the code stopped passing fails the report instead of printing blank.
    templates = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                            autoescape=select_autoescape(["html.j2"]), undefined=StrictUndefined,
                            trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return templates.get_template(name).render(**context)
