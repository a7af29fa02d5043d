"""The ``mobilepeft`` command line (typer).

Expected user errors (:class:`~mobilepeft.errors.UserError`, bad flags) print one clear message
and exit with status 2; anything else is a bug: one line, status 1, and ``--debug`` shows its
traceback.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from mobilepeft import _quiet  # noqa: F401
from mobilepeft.errors import UserError
from mobilepeft.settings import choices_of
from mobilepeft.train.config import TrainConfig

app = typer.Typer(
    help="On-device fine-tuning and deployment toolkit for small vision-language models (MobileVLM).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Datasets: generate the built-in synthetic VQA set.", no_args_is_help=True)
app.add_typer(data_app, name="data")
adapter_app = typer.Typer(help="Inspect adapters, lower them to plain PEFT LoRA, read them back from a device.", no_args_is_help=True)
app.add_typer(adapter_app, name="adapter")


#: every command that writes a directory takes this flag (the rule: mobilepeft/outputs.py)
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace a previous output of this command in --output-dir (a folder mobilepeft did not write is never replaced).")]


def claim_output(output_dir: Path, kind: str, overwrite: bool, *inputs: Path | str | None) -> Path:
    from mobilepeft.outputs import claim_output_dir

    return claim_output_dir(output_dir, kind, overwrite=overwrite, inputs=inputs)


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def _key_values(values: list[str] | None, field: str) -> dict[str, int] | None:
    items = _split(values)
    if items is None:
        return None
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise UserError(f"expected NAME=INT pairs, got {item!r}", field=field, hint="e.g. down_proj=6,q_proj=2")
        out[key.strip()] = int(value)
    return out


def _fractions(value: str | None, field: str) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError as exc:
        raise UserError(f"expected comma-separated numbers, got {value!r}", field=field, hint="e.g. 0.1,0.7") from exc


#: the --help panel of each config section
_PANELS = {"model": "Model", "data": "Data", "adapter": "Adapter", "schedule": "Rank schedule (HyDRA)",
           "optim": "Optimisation", "output": "Output, checkpoints and evaluation"}


def _flag_parameter(name: str, entry) -> inspect.Parameter:
    """One ``mobilepeft train`` option from its declaration (mobilepeft/settings.py)."""
    f, hint, kind = entry.field, entry.hint, entry.field.metadata.get("cli")
    default = f.default_factory() if callable(f.default_factory) else f.default
    option = "--" + name.replace("_", "-")
    listed = f" One of: {', '.join(choices_of(f))}." if callable(f.metadata.get("choices")) else ""
    shown = dict(help=f.metadata["help"] + listed, rich_help_panel=_PANELS[entry.section] + (
        f": {entry.method}" if entry.method else ""))
    if kind == "switch":
        annotated = Annotated[bool, typer.Option(f"{option}/--no-{name.replace('_', '-')}", **shown)]
    elif kind in ("list", "key_values"):
        annotated = Annotated[list[str] | None, typer.Option(option, **shown)]
        default = None
    elif kind == "fractions":
        annotated = Annotated[str, typer.Option(option, **shown)]
        default = ",".join(map(str, default))
    else:
        annotated = Annotated[hint, typer.Option(option, **shown)]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotated)


#: how the text of a flag becomes its value, by the ``cli`` kind its declaration names
_PARSERS = {"list": lambda v, name: _split(v), "key_values": _key_values, "fractions": _fractions}


def train_cmd(ctx: typer.Context, config: Path | None = None, **flags: object) -> None:
    """Fine-tune adapters (and the projector) on LLaVA-format data.

    Example: mobilepeft train --model ckpt/ --data data/train.json --eval-data data/val.json --output-dir runs/lora

    On N GPUs, the same flags under torchrun: torchrun --nproc-per-node N -m mobilepeft train ... (docs/distributed.md).
    """
    from mobilepeft.distributed import from_environment
    from mobilepeft.train.trainer import Trainer

    table = TrainConfig.flags()
    # Flags given on the command line win over --config; the defaults --help shows are the declared ones.
    overrides = {}
    for name, value in flags.items():
        if ctx.get_parameter_source(name).name == "COMMANDLINE":
            parse = _PARSERS.get(table[name].field.metadata.get("cli"))
            overrides[name] = parse(value, name) if parse else value
    cfg = TrainConfig.from_sources(config, overrides)
    result = Trainer(cfg, progress=True).run()
    if from_environment().is_root:
        _report_training(result)


train_cmd.__signature__ = inspect.Signature([
    inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
    *(_flag_parameter(name, entry) for name, entry in TrainConfig.flags().items()),
    inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Path | None, typer.Option(help="YAML file: the flags' keys (flat) or a saved train_config.yaml (nested); "
                                       "flags override it.")]),
])
app.command("train")(train_cmd)


def _report_training(result) -> None:
    typer.echo(f"trained {result.steps} steps; final train loss {result.final_loss:.4f}")
    if result.eval_before and result.eval_after:
        b, a = result.eval_before, result.eval_after
        typer.echo(f"val loss     {b['loss']:.4f} -> {a['loss']:.4f}")
        typer.echo(f"val accuracy {b['accuracy']:.3f} -> {a['accuracy']:.3f}  ({a['n']} samples, exact match)")
    if result.skipped:
        typer.echo(f"skipped {len(result.skipped)} bad samples (first: {result.skipped[0]})")
    typer.echo(f"{result.adapter_dir.name}: {result.adapter_dir}")
    if (result.output_dir / "rank_history.png").is_file():
        typer.echo(f"rank history: {result.output_dir / 'rank_history.json'} (+ .png)")


@app.command("eval")
def eval_cmd(
    model: Annotated[Path, typer.Option(help="MobileVLM checkpoint directory (a merged or fully fine-tuned one too).")],
    data: Annotated[Path, typer.Option(help="Questions: LLaVA conversation JSON, or a LLaVA question file (.jsonl: question_id, image, text), e.g. GQA/TextVQA/ScienceQA.")],
    adapter: Annotated[Path | None, typer.Option(help="Adapter directory to apply (any method; from `mobilepeft train`).")] = None,
    image_folder: Annotated[Path | None, typer.Option(help="Folder the 'image' paths are relative to (default: the data file's folder).")] = None,
    answers: Annotated[Path | None, typer.Option(help="Reference answers kept apart from the questions: GQA's {qid: {answer}}, TextVQA's {data: [{question_id, answers}]}.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Questions answered per batch.")] = 16,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest answer generated (greedy).")] = 16,
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate only the first N questions.")] = None,
    output: Annotated[Path | None, typer.Option(help="Write every answer as JSON Lines (LLaVA answers-file fields + scores).")] = None,
    metrics_json: Annotated[Path | None, typer.Option(help="Write the scores (overall + per question type) as JSON.")] = None,
) -> None:
    """Answer an evaluation set greedily and score it: exact match and VQA accuracy, per question type.

    Example: mobilepeft eval --model ckpt/ --adapter runs/lora/adapter --data data/val.json --image-folder data/
    """
    import json

    from mobilepeft.evaluation.eval_set import load_eval_set
    from mobilepeft.evaluation.vqa import evaluate_answers
    from mobilepeft.io import atomic_file, write_json
    from mobilepeft.loading import load_vlm

    folder = image_folder or data.parent
    items = load_eval_set(data, folder, answers)[:limit]
    vlm = load_vlm(model, adapter=adapter)
    report = evaluate_answers(vlm, items, folder, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=True)
    typer.echo(f"{'question type':<24}{'n':>7}{'exact match':>14}{'VQA acc':>10}")
    for name, s in [*report.by_type.items(), ("overall", report.overall)]:
        typer.echo(f"{name:<24}{s.n:>7}{s.exact_match:>14.2%}{s.vqa_accuracy:>10.2%}")
    model_id = f"{model}" + (f"+{adapter}" if adapter else "")
    if output is not None:
        with atomic_file(output, "w") as fh:
            for row in report.predictions:
                fh.write(json.dumps({**row, "model_id": model_id}) + "\n")
        typer.echo(f"answers: {output}")
    if metrics_json is not None:
        write_json(metrics_json, {"model": str(model), "adapter": str(adapter) if adapter else None,
                                  "data": str(data), **report.to_dict()})
        typer.echo(f"scores: {metrics_json}")


@app.command("init-model")
def init_model_cmd(
    output_dir: Annotated[Path, typer.Option(help="Where to write the checkpoint directory.")],
    preset: Annotated[str, typer.Option(help="Model size preset: tiny (the demo's), small (~25M, benchmarks) or mobilevlm-1.7b-shape (MobileVLM V2 1.7B's real dimensions, random weights, written shard by shard in sharded safetensors).")] = "tiny",
    projector: Annotated[str, typer.Option(help="ldpnetv2 (MobileVLM V2) or ldpnet (V1).")] = "ldpnetv2",
    weight_format: Annotated[str, typer.Option(help="safetensors, sharded, bin or sharded-bin.")] = "safetensors",
    seed: Annotated[int, typer.Option(min=0, help="Seed of the random initialisation.")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Write a randomly initialised model in the exact MobileVLM checkpoint format."""
    from mobilepeft.models.checkpoint import WEIGHT_FORMATS
    from mobilepeft.presets import PRESETS, write_preset

    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}", field="preset", hint=f"choose from {', '.join(PRESETS)}")
    if weight_format not in WEIGHT_FORMATS:
        raise UserError(f"unknown weight format {weight_format!r}", field="weight-format",
                        hint=f"choose from {', '.join(WEIGHT_FORMATS)}")
    if projector not in ("ldpnet", "ldpnetv2"):
        raise UserError(f"unknown projector {projector!r}", field="projector", hint="ldpnet (V1) or ldpnetv2 (V2)")
    claim_output(output_dir, "checkpoint", overwrite)
    path = write_preset(preset, output_dir, projector_type=projector, seed=seed, weight_format=weight_format)
    typer.echo(f"wrote {preset} MobileVLM ({projector}) to {path}")


@data_app.command("synth")
def data_synth_cmd(
    output_dir: Annotated[Path, typer.Option(help="Dataset directory (images/, train.json, val.json).")],
    n_train: Annotated[int, typer.Option(min=1, help="Training samples.")] = 800,
    n_val: Annotated[int, typer.Option(min=0, help="Validation samples (0: none).")] = 160,
    image_size: Annotated[int, typer.Option(min=16, help="Image side in pixels.")] = 64,
    seed: Annotated[int, typer.Option(min=0, help="Generator seed.")] = 0,
    overwrite: Overwrite = False,
) -> None:
    """Write the built-in synthetic visual-question dataset in LLaVA format."""
    from mobilepeft.data.synth import write_synthetic_dataset

    claim_output(output_dir, "dataset", overwrite)
    info = write_synthetic_dataset(output_dir, n_train=n_train, n_val=n_val, image_size=image_size, seed=seed)
    typer.echo(f"wrote synthetic dataset to {output_dir}: {info}")


@app.command("merge")
def merge_cmd(
    model: Annotated[Path, typer.Option(help="Base MobileVLM checkpoint directory the adapter was trained on.")],
    adapter: Annotated[Path, typer.Option(help="Adapter directory (OUT/adapter from mobilepeft train).")],
    output_dir: Annotated[Path, typer.Option(help="Where the merged checkpoint goes.")],
    overwrite: Overwrite = False,
) -> None:
    """Fold an adapter (any method) and its trained projector into a full MobileVLM checkpoint.

    The result has the input's key names, weight format, dtypes, config, tokenizer and CLIP
    config, so any MobileVLM loader reads it; inference pays nothing for the adapter.

    Example: mobilepeft merge --model ckpt/ --adapter runs/lora/adapter --output-dir merged/
    """
    from mobilepeft.merge import merge_adapter

    claim_output(output_dir, "checkpoint", overwrite, model, adapter)
    path = merge_adapter(model, adapter, output_dir)
    typer.echo(f"merged {adapter} into {model} -> {path}")


@adapter_app.command("info")
def adapter_info_cmd(
    adapter_dir: Annotated[Path, typer.Argument(help="Adapter directory.")],
    model: Annotated[Path | None, typer.Option(help="Base checkpoint (default: the one the adapter records).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Method, modules, ranks, trainable parameters and budget vs LoRA at the same nominal rank."""
    import json

    from mobilepeft.adapters.summary import format_summary, summarize_adapter

    summary = summarize_adapter(adapter_dir, model)
    typer.echo(json.dumps(summary.to_dict(), indent=2) if json_out else format_summary(summary, adapter_dir))


@adapter_app.command("to-lora")
def adapter_to_lora_cmd(
    adapter_dir: Annotated[Path, typer.Argument(help="Adapter directory of any method.")],
    output_dir: Annotated[Path, typer.Option(help="Where the PEFT LoRA adapter goes.")],
    model: Annotated[Path | None, typer.Option(help="Base checkpoint (default: the one the adapter records).")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Write the exactly equivalent PEFT LoRA adapter (per-module rank_pattern/alpha_pattern).

    Example: mobilepeft adapter to-lora runs/adaring/adapter --output-dir runs/adaring/lora
    """
    from mobilepeft.merge import lower_adapter

    claim_output(output_dir, "adapter", overwrite, adapter_dir, model)
    path = lower_adapter(adapter_dir, output_dir, model)
    typer.echo(f"wrote PEFT LoRA adapter to {path}")


@app.callback(invoke_without_command=True)
def root_options(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", is_eager=True, help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an unexpected error (also MOBILEPEFT_DEBUG=1).")] = False,
) -> None:
    """On-device fine-tuning and deployment toolkit for small vision-language models (MobileVLM)."""
    if version:
        from mobilepeft import __version__

        typer.echo(f"mobilepeft {__version__}")
        raise typer.Exit()
    if not ctx.invoked_subcommand:
        typer.echo(ctx.get_help())
        raise typer.Exit()


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return its exit status (``main`` exits with it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("MOBILEPEFT_DEBUG", "") not in ("", "0")
    world = os.environ.get("WORLD_SIZE", "1")  # under torchrun, say which process failed
    where = f"[rank {os.environ.get('RANK', '?')}/{world}] " if world != "1" else ""
    try:
        typer.main.get_command(app).main(args=args, prog_name="mobilepeft", standalone_mode=True)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except UserError as err:
        typer.echo(f"{where}error: {err.render()}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted; the last checkpoint is intact (use --resume to continue)", err=True)
        return 130
    except Exception as exc:
        if debug:
            raise
        typer.echo(f"{where}error: unexpected {type(exc).__name__}: {exc}\n"
                   "  rerun with --debug for the traceback, and please report it", err=True)
        return 1
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
