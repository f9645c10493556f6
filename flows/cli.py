"""The ``aml-smear`` command line. Heavy imports (TensorFlow, Prefect) happen inside commands."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import click

from aml_model import tf_log
from aml_model.config import DEFAULT_RECIPE, PRETRAIN_METHODS, RECIPES, PretrainConfig
from flows.cli_models import models
from flows.cli_runs import runs

# Read when Prefect is first imported, and carried with every task to the Dask workers: a busy
# machine can take longer than Prefect's default 20 s to start a temporary API server.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

# Set by the command group before anything imports Prefect or TensorFlow, inherited by the Dask
# workers; a variable the user set wins. TF_CPP_MIN_LOG_LEVEL hides TensorFlow's C++ lines, those
# of its start-up included (aml_model.tf_log); the console handler keeps tracebacks and completion
# lines out of the terminal (flows.logs). --debug (AML_SMEAR_DEBUG=1) shows all of them.
_QUIET = {"TF_CPP_MIN_LOG_LEVEL": tf_log.QUIET_LEVEL, "PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS": "flows.logs.ConsoleHandler"}
_DEBUG = {"TF_CPP_MIN_LOG_LEVEL": "0", "PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS": "flows.logs.ConsoleHandler"}
_DEBUG_ENV = "AML_SMEAR_DEBUG"  # flows.logs.DEBUG_ENV


class _CliError(click.ClickException):
    """A one-line failure reason, printed as ``error: <reason>``; exit status 1."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", file=file, err=True)


class _UsageError(click.UsageError):
    """A command line that cannot run: Click's usage, then ``error: <reason>``; exit status 2."""

    def show(self, file=None) -> None:
        if self.ctx is not None:
            click.echo(f"{self.ctx.get_usage()}\nTry '{self.ctx.command_path} -h' for help.", file=file, err=True)
        click.echo(f"error: {self.format_message()}", file=file, err=True)


def _usage_error(exc: click.UsageError) -> click.UsageError:
    """Click's usage error with the reason line every other failure has (``error:``, not ``Error:``)."""
    # Without arguments Click prints the help, as an error of its own kind.
    if isinstance(exc, _UsageError | getattr(click.exceptions, "NoArgsIsHelpError", ())):
        return exc
    return _UsageError(exc.format_message(), exc.ctx)


class _Group(click.Group):
    """Any failure of a command is one line, ``error: <reason>``; its traceback only with --debug.

    Exit status 1 when a command ran and failed, 2 when its command line cannot run (Click's
    checks of the arguments, and the flow's check of its parameters' values).
    """

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _usage_error(exc) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _usage_error(exc) from None
        except (click.exceptions.Exit, click.Abort):
            raise
        except click.ClickException as exc:
            if ctx.params.get("debug") and exc.__cause__ is not None:
                import traceback

                traceback.print_exception(exc.__cause__, file=sys.stderr)
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            raise _CliError(_reason(exc)) from exc


def _reason(exc: BaseException) -> str:
    """The line to print: an expected failure's message; anything else with its type and a hint."""
    from aml_model.errors import EXPECTED_FAILURES, one_line

    # Before Prefect is imported (seconds): a missing source fails before the flow is imported.
    if isinstance(exc, EXPECTED_FAILURES):
        return one_line(exc)
    from prefect.exceptions import ParameterTypeError

    from flows.logs import failure_reason

    if isinstance(exc, ParameterTypeError):  # raised before any flow run: say it plainly
        # An options field is a CLI option of its own name: "options.epochs" is --epochs.
        message = re.sub(r"(^|\s)options\.", r"\1", one_line(exc))
        return message.replace("Flow run received invalid parameters:", "invalid parameters:")
    return failure_reason(exc) + " (aml-smear --debug shows the traceback)"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar=_DEBUG_ENV,
              help="On failure print the full traceback; show TensorFlow's C++ logs [env AML_SMEAR_DEBUG=1].")
@click.version_option(package_name="aml-smear")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Score single-cell peripheral blood smear images for AML (Hassan et al. ResNet50).

    Research use only: not a diagnosis.
    """
    settings = {**_DEBUG, _DEBUG_ENV: "1"} if debug else _QUIET
    before = {name: os.environ.get(name) for name in settings}
    for name, value in settings.items():
        if name == _DEBUG_ENV:
            os.environ[name] = value
        else:
            os.environ.setdefault(name, value)

    def restore() -> None:  # for callers that run several commands in one process (tests)
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    ctx.call_on_close(restore)


@cli.command("model-summary")
@click.option("--image-size", default=224, show_default=True, help="Side of the square input, pixels.")
@click.option("--recipe", type=click.Choice(RECIPES), default="paper", show_default=True,
              help="The recipe whose network to print.")
def model_summary(image_size: int, recipe: str) -> None:
    """Print the paper architecture (or a recipe's) and its parameter counts."""
    from aml_model.architecture import build_model
    from aml_model.config import ExperimentConfig, ModelConfig
    from aml_model.summary import describe_model

    # Random backbone weights: the architecture and counts are the same as with ImageNet's.
    config = ExperimentConfig.for_recipe(recipe, ModelConfig(image_size=image_size, backbone_weights="none"))
    model = build_model(config.model)
    click.echo(describe_model(model))


_LAYOUTS = click.Choice(["auto", "patient", "class", "manifest"])


def _cluster_options(command):
    """--workers / --scheduler / --s3-endpoint-url, shared by every flow command."""
    command = click.option("--s3-endpoint-url", envvar="AML_SMEAR_S3_ENDPOINT_URL", default=None,
                           help="S3-compatible endpoint for s3:// URLs (MinIO, moto). Credentials "
                                "come from the usual AWS_* variables.")(command)
    command = click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
                           help="Address of an existing Dask scheduler.")(command)
    return click.option("--workers", type=click.IntRange(min=1), default=None,
                        help="Workers of a new local Dask cluster [default: one per CPU core].")(command)


def _check_inputs(sources, store: str, s3_endpoint_url: str | None, model: str | None = None) -> None:
    """What the flow checks first, checked before the flow is imported (Prefect: 3-4 s) and its
    temporary Prefect server and Dask cluster start (about 10 s): a missing source, store or model
    fails in a second. The flow checks again, for its other callers (deployments, Python).

    Raises:
        FileNotFoundError: a source, the store's bucket or the model does not exist.
        ValueError: the store is a file.
    """
    from flows.parameters import require_existing, require_store

    require_existing(sources, "source", s3_endpoint_url)
    require_store(store, s3_endpoint_url)
    if model is not None:
        from tasks import storage
        from tasks.registry import allow_model_file, names_a_file, resolve_model

        if names_a_file(model) or os.path.exists(model):
            # The user named this file on their own command line: this process may load it.
            allow_model_file(model)
        resolve_model(model, store, storage.storage_options_for(store, s3_endpoint_url))


def _check_parameters(flow_fn, parameters: dict) -> None:
    """The flow's own parameter check (types, choices, bounds), before any server or cluster starts.

    Raises:
        _UsageError: naming each invalid parameter and what it accepts (exit status 2).
    """
    import logging

    from prefect.exceptions import ParameterTypeError

    # Prefect logs the failure with every parameter's value over two lines; the error says it in one.
    logger = logging.getLogger("prefect.flows")
    disabled, logger.disabled = logger.disabled, True
    try:
        flow_fn.validate_parameters(parameters)
    except ParameterTypeError as exc:
        raise _UsageError(_reason(exc)) from exc
    finally:
        logger.disabled = disabled


def _run_flow(flow_fn, workers: int | None, scheduler: str | None, **parameters):
    """Run a flow on a Dask task runner; a failure becomes a one-line reason (``_Group``)."""
    from flows.runner import dask_task_runner, quiet_dask_logs, shared_prefect_api

    quiet_dask_logs()
    _check_parameters(flow_fn, parameters)
    runner = dask_task_runner(workers, scheduler)
    with shared_prefect_api():
        return flow_fn.with_options(task_runner=runner)(**parameters)


@cli.command("ingest")
@click.argument("source")
@click.option("--store", required=True, help="Run store: a folder or an s3:// URL.")
@click.option("--layout", type=_LAYOUTS, default="auto", show_default=True)
@click.option("--run-id", default=None, help="Run id [default: from the source name and its inputs].")
@click.option("--image-size", default=224, show_default=True, help="Side of the stored cells, pixels.")
@_cluster_options
def ingest_command(source, store, layout, run_id, image_size, workers, scheduler, s3_endpoint_url) -> None:
    """Decode the cell images of SOURCE into the run store (Zarr + Parquet)."""
    _check_inputs([source], store, s3_endpoint_url)
    from flows.ingest import ingest

    result = _run_flow(ingest, workers, scheduler, source=source, store=store, run_id=run_id, layout=layout,
                       image_size=image_size, s3_endpoint_url=s3_endpoint_url)
    state = "already complete, nothing redone" if result["already_complete"] else "complete"
    click.echo(f"run {result['run_id']} {state}: {result['cells']} cells, {result['quarantined']} quarantined "
               f"(layout {result['layout']}) -> {result['run']}")
    _echo_quarantined(store, result["run_id"], s3_endpoint_url)


#: Quarantined inputs a summary names; the run's quarantine.parquet lists them all.
_QUARANTINED_SHOWN = 10


def _echo_quarantined(store: str, run_id: str, s3_endpoint_url: str | None) -> None:
    """Name the run's first quarantined inputs (by patient, then file) with their reasons, and where
    the full list is.

    Names are paths in the source, so in the patient layout they start with the patient's folder:
    the terminal shows real patient ids anyway (the calls), and nothing here goes to Prefect.
    """
    from tasks import storage
    from tasks.inputs import quarantined_inputs

    paths = storage.RunPaths(store, run_id)
    quarantined = quarantined_inputs(paths, storage.storage_options_for(store, s3_endpoint_url))
    if quarantined.empty:
        return
    count = f"{len(quarantined)} input{'' if len(quarantined) == 1 else 's'} quarantined, not scored"
    shown = ("" if len(quarantined) <= _QUARANTINED_SHOWN else
             f"; the first {_QUARANTINED_SHOWN} here, all with their reasons in")
    click.echo(f"{count}{shown or ', listed in'} {paths.quarantine_table}:")
    for row in quarantined.head(_QUARANTINED_SHOWN).itertuples():
        click.echo(f"  {row.name}: {row.reason}")


def _echo_patients(result: dict) -> None:
    from flows.cli_runs import call_settings, echo_patients

    state = "already complete, nothing redone" if result["already_complete"] else "complete"
    click.echo(f"run {result['run_id']}, scoring {result['score_id']} {state}: {result['cells']} cells scored with "
               f"model {result['model_version']}, {result['quarantined']} inputs quarantined -> {result['run']}")
    reused = result.get("reused_probabilities_from")
    click.echo(f"calls at {call_settings(result)}"
               + (f"; probabilities copied from scoring {reused}, not scored again" if reused else ""))
    echo_patients(result["patients"])


@cli.command("score")
@click.argument("source")
@click.option("--store", required=True, help="Run store (and model registry): a folder or an s3:// URL.")
@click.option("--model", default="champion", show_default=True, help="champion, a registered version, or a .keras path/URL.")
@click.option("--run-id", default=None, help="Ingest run id [default: from the source name and its inputs].")
@click.option("--score-id", default=None,
              help="Scoring id within the run [default: from the model version and the settings].")
@click.option("--new-only", is_flag=True, default=False,
              help="Score only patients whose current images the model has not scored; nothing new, nothing done.")
@click.option("--threshold", default=0.5, show_default=True, help="Probability at which a cell is blast-like.")
@click.option("--blast-cutoff", default=0.2, show_default=True, help="Blast-like fraction that suspects AML.")
@click.option("--min-cells", default=100, show_default=True, help="Fewer scored cells give INSUFFICIENT_CELLS.")
@click.option("--max-quarantined-share", default=0.02, show_default=True,
              help="A patient with more of its inputs quarantined gets the high_quarantine_rate QC flag.")
@click.option("--layout", type=_LAYOUTS, default="auto", show_default=True)
@click.option("--batch-size", default=64, show_default=True, help="Cells per forward pass.")
@click.option("--precision", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True, help="Inference precision; auto: per worker, bfloat16 on CPUs with AMX or "
              "AVX-512 BF16, float16 on GPUs, float32 elsewhere or where the model's card shows its scores drift.")
@click.option("--explain/--no-explain", default=True, show_default=True,
              help="Grad-CAM of the most blast-like cells of AML_SUSPECTED and INDETERMINATE patients.")
@click.option("--top-k", "explain_top_k", type=click.IntRange(min=1), default=12, show_default=True,
              help="Most blast-like cells per patient in the reports (and Grad-CAM).")
@click.option("--site", default=None, help="Use this site's calibration of the model (see `aml-smear calibrate`).")
@click.option("--site-operating-point", type=click.Choice(["fraction", "balanced"]), default="fraction",
              show_default=True, help="With --site: the site's threshold that makes the calls; fraction: the "
              "blast-like fraction is unbiased at the blast cut-off, balanced: sensitivity = specificity.")
@_cluster_options
def score_command(source, store, workers, scheduler, **parameters) -> None:
    """Score the cells of SOURCE and call each patient.

    Each model and settings make their own scoring of the source's decoded cells; a finished
    scoring is never rewritten.
    """
    _check_inputs([source], store, parameters["s3_endpoint_url"], parameters["model"])
    from flows.parameters import ScoreOptions, nest_options
    from flows.score import score_smears

    result = _run_flow(score_smears, workers, scheduler,
                       **nest_options({"source": source, "store": store, **parameters}, ScoreOptions))
    if result["nothing_new"]:
        click.echo(f"nothing new in {source}: model {result['model_version']} has scored every patient's "
                   f"current images")
        return
    if result["site"]:
        click.echo(f"site {result['site']}: calibrated probabilities at the site's {result['site_operating_point']} "
                   f"operating point make the calls; 'corrected' is the blast fraction corrected for the site's rates")
    _echo_patients(result)
    _echo_quarantined(store, result["run_id"], parameters["s3_endpoint_url"])
    click.echo(f"patient reports: {result['report']}")


@cli.command("calibrate")
@click.argument("source")
@click.option("--store", required=True, help="Run store and model registry: a folder or an s3:// URL.")
@click.option("--site", required=True, help="The site's name: letters, digits, '-' and '_'.")
@click.option("--model", default="champion", show_default=True, help="champion or a registered version.")
@click.option("--layout", type=_LAYOUTS, default="auto", show_default=True)
@click.option("--blast-cutoff", default=0.2, show_default=True,
              help="Blast fraction at which the site's fraction operating point is unbiased (score's cut-off).")
@_cluster_options
def calibrate_command(source, store, site, model, layout, blast_cutoff, workers, scheduler, s3_endpoint_url) -> None:
    """Calibrate the model to one site on the site's labelled cells in SOURCE."""
    _check_inputs([source], store, s3_endpoint_url, model)
    from flows.calibrate import calibrate_site

    result = _run_flow(calibrate_site, workers, scheduler, source=source, store=store, site=site, model=model,
                       layout=layout, blast_cutoff=blast_cutoff, s3_endpoint_url=s3_endpoint_url)
    click.echo(f"site {result['site']}, model {result['model_version']}: fitted on {result['n_blast']} blast and "
               f"{result['n_other']} other labelled cells; balanced threshold {result['threshold']:g} on the "
               f"calibrated scale (raw probability {result['raw_threshold']:.3f})")
    click.echo(f"{'':<20} {'accuracy':>8} {'sensitivity':>11} {'specificity':>11} {'ROC AUC':>7}")
    for label, m in (("before (raw, 0.5)", result["before"]), ("after (calibrated)", result["after"]),
                     ("after (fraction pt)", result["operating_points"]["fraction"]["metrics"])):
        click.echo(f"{label:<20} {m['accuracy']:>8.3f} {m['sensitivity']:>11.3f} {m['specificity']:>11.3f} "
                   f"{m['roc_auc']:>7.3f}")
    click.echo(f"(on the calibration cells themselves) -> {result['calibration']}")
    cutoff = result["blast_cutoff"]
    click.echo(f"blast-like fraction expected of a patient with {cutoff:.0%} blasts, at each operating point "
               f"(score --site-operating-point; smoothed rates of the labelled cells):")
    click.echo(f"{'':<10} {'threshold':>9} {'raw':>6} {'sensitivity':>11} {'false-pos.':>10} {'expected':>8} "
               f"{'bias':>7}")
    for name, point in result["operating_points"].items():
        bias = round(point["bias_at_cutoff"], 3) + 0.0  # + 0.0: the fraction point's -1e-15 prints as +0.000
        click.echo(f"{name:<10} {point['threshold']:>9.3f} {point['raw_threshold']:>6.3f} "
                   f"{point['sensitivity']:>11.3f} {point['false_positive_rate']:>10.3f} "
                   f"{cutoff + point['bias_at_cutoff']:>8.1%} {bias:>+7.3f}")


@cli.command("retrain")
@click.argument("sources", nargs=-1, required=True)
@click.option("--store", required=True, help="Run store and model registry: a folder or an s3:// URL.")
@click.option("--epochs", default=50, show_default=True)
@click.option("--patience", default=5, show_default=True, help="Early-stopping patience on validation loss.")
@click.option("--seed", default=0, show_default=True)
@click.option("--backbone-weights", default="imagenet", show_default=True,
              help="imagenet, none, shipped (the package's cell backbone), a registered backbone id "
                   "(aml-smear pretrain-backbone), or a weights file path/URL.")
@click.option("--backbone-weights-sha256", default=None, help="Expected sha256 of the weights file.")
@click.option("--image-size", default=224, show_default=True)
@click.option("--augment-views", default=2, show_default=True, help="Augmented views per training cell (cached path).")
@click.option("--promotion-margin", default=0.005, show_default=True, help="Tolerated ROC AUC drop against the champion.")
@click.option("--training-path", type=click.Choice(["cached", "plain"]), default="cached", show_default=True)
@click.option("--layout", type=_LAYOUTS, default="auto", show_default=True)
@click.option("--recipe", type=click.Choice(RECIPES), default=DEFAULT_RECIPE, show_default=True,
              help="paper: Hassan et al. unchanged; robust: scale and colour standardisation, pooled "
                   "third-stage features with a logistic head, colour and scale augmentation.")
@_cluster_options
def retrain_command(sources, store, workers, scheduler, **parameters):
    """Train and evaluate the model on labelled SOURCES together (balanced by source and label);
    promote it if no worse than the champion."""
    _check_inputs(sources, store, parameters["s3_endpoint_url"])
    from flows.parameters import RetrainOptions, nest_options
    from flows.retrain import retrain_and_evaluate

    result = _run_flow(retrain_and_evaluate, workers, scheduler,
                       **nest_options({"sources": list(sources), "store": store, **parameters}, RetrainOptions))
    m = result["metrics"]
    click.echo(f"model {result['version']} ({'champion' if result['promoted'] else 'candidate'}): test ROC AUC "
               f"{m['roc_auc']:.3f}, accuracy {m['accuracy']:.3f}, sensitivity {m['sensitivity']:.3f}, "
               f"specificity {m['specificity']:.3f}, F1 {m['f1']:.3f} on {m['n']} cells")
    click.echo(f"{result['reason']}; {result['embedded']} new embeddings; {result['seconds']:.0f} s -> {result['model']}")
    if len(result["rates_by_type"]) > 1:
        click.echo("blast-like rate of the test cells by source and cell type:")
        for row in result["rates_by_type"]:
            auc = "" if row["roc_auc"] != row["roc_auc"] else f", ROC AUC {row['roc_auc']:.3f}"
            click.echo(f"  {row['source']} / {row['cell_type']}: {row['blast_like_rate']:.3f} of {row['n']}{auc}")


@cli.command("pretrain-backbone")
@click.argument("sources", nargs=-1)
@click.option("--store", required=True, help="Run store; the backbone is registered under backbones/<id>/.")
@click.option("--run", "runs", multiple=True, default=None, metavar="RUN_ID",
              help="An ingest run of the store to train on too (repeatable): a lab's own cells.")
@click.option("--recipe", type=click.Choice(RECIPES), default=DEFAULT_RECIPE, show_default=True,
              help="The recipe the backbone is for (feature layer, input normalisation, views).")
@click.option("--start-from", default="none", show_default=True,
              help="none (random), shipped, a registered backbone id, imagenet, or a weights file path/URL.")
@click.option("--start-from-sha256", default=None, help="Expected sha256 of a --start-from weights file.")
@click.option("--name", default="cells", show_default=True, help="Prefix of the backbone's id.")
@click.option("--method", type=click.Choice(PRETRAIN_METHODS), default="simclr", show_default=True,
              help="The self-supervised objective (aml_model.pretrain).")
@click.option("--steps", default=PretrainConfig.steps, show_default=True, help="Optimiser steps in all.")
@click.option("--steps-per-task", default=200, show_default=True, help="Steps per task (each resumes the checkpoint).")
@click.option("--batch-size", default=PretrainConfig.batch_size, show_default=True,
              help="Cells per step (two views each).")
@click.option("--view-size", default=PretrainConfig.view_size, show_default=True,
              help="Side of the training views, pixels.")
@click.option("--min-crop", default=PretrainConfig.min_crop, show_default=True,
              help="Smallest view crop, a fraction of the cell's side.")
@click.option("--learning-rate", default=PretrainConfig.learning_rate, show_default=True, help="Peak learning rate.")
@click.option("--temperature", default=PretrainConfig.temperature, show_default=True,
              help="Contrastive softmax temperature.")
@click.option("--tone", default=PretrainConfig.tone, show_default=True,
              help="The views' random monotone tone curve per colour channel: its largest weight (0-1).")
@click.option("--greyscale", default=PretrainConfig.greyscale, show_default=True, help="Share of views turned grey.")
@click.option("--blur", default=PretrainConfig.blur, show_default=True,
              help="The views' largest Gaussian blur, sigma in pixels of the view.")
@click.option("--seed", default=0, show_default=True)
@click.option("--checkpoint-every", default=PretrainConfig.checkpoint_every, show_default=True,
              help="Steps between checkpoints.")
@click.option("--pool-cells", default=PretrainConfig.pool_cells, show_default=True,
              help="Most cells a task holds in memory.")
@click.option("--image-size", default=224, show_default=True, help="The model's input side, pixels.")
@click.option("--layout", type=_LAYOUTS, default="auto", show_default=True)
@_cluster_options
def pretrain_backbone_command(sources, store, runs, workers, scheduler, s3_endpoint_url, **parameters) -> None:
    """Pretrain the recipe's backbone stages on the cells of SOURCES (and --run RUN_ID) without labels.

    SimCLR on two views of each cell from the recipe's augmentation; checkpointed in the store, so
    the same command run again after a crash resumes where it stopped. Registers the backbone
    for `aml-smear retrain --backbone-weights ID`.
    """
    _check_inputs(sources, store, s3_endpoint_url)
    from flows.parameters import PretrainOptions, nest_options
    from flows.pretrain import pretrain_backbone

    result = _run_flow(pretrain_backbone, workers, scheduler, **nest_options(
        {"sources": list(sources), "runs": list(runs or ()), "store": store, "s3_endpoint_url": s3_endpoint_url,
         **parameters}, PretrainOptions))
    card = result["card"]
    state = "already registered, nothing redone" if result["already_complete"] else "registered"
    resumed = f", resumed at step {result['resumed_from']}" if 0 < result["resumed_from"] < card["steps"] else ""
    click.echo(f"backbone {result['backbone_id']} {state}: {card['steps']} steps ({card['epochs']:.1f} passes over "
               f"{result['cells']} cells{resumed}), {card['train_seconds']:.0f} s of training, loss "
               f"{card['loss']['first']:.3f} -> {card['loss']['last']:.3f}, sha256 {card['sha256']}")
    click.echo(f"train a model on it: aml-smear retrain SOURCE... --store {store} --backbone-weights "
               f"{result['backbone_id']}")


@cli.command("bootstrap")
@click.argument("sources", nargs=-1)
@click.option("--store", default=None, help="Run store and model registry: a folder or an s3:// URL.")
@click.option("--from-variables", is_flag=True,
              help="Read the nightly's configuration from the Prefect variables (needs PREFECT_API_URL); "
                   "SOURCES and options given here win over them.")
@click.option("--force", is_flag=True,
              help="Train and promote a new model even when the store has a champion (it stays in the "
                   "champion history: `aml-smear models rollback` restores it).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Most training epochs [default: 50].")
@click.option("--backbone-weights", default=None,
              help="imagenet (downloads), none, or a weights file path/URL [default: imagenet].")
@click.option("--backbone-weights-sha256", default=None, help="Expected sha256 of the weights file.")
@click.option("--image-size", type=int, default=None, help="Model input side, pixels [default: 224].")
@click.option("--recipe", type=click.Choice(RECIPES), default=None, help=f"[default: {DEFAULT_RECIPE}]")
@_cluster_options
def bootstrap_command(sources, store, from_variables, force, epochs, backbone_weights, backbone_weights_sha256,
                      image_size, recipe, workers, scheduler, s3_endpoint_url) -> None:
    """Train and promote the first champion of an empty store from labelled SOURCES.

    With --from-variables it trains exactly as the nightly would (the same Prefect variables), so
    the next nightly finds nothing changed and skips training. Refuses when the store already has
    a champion, unless --force.
    """
    from flows.nightly import nightly_parameters, read_nightly_variables
    from flows.parameters import RetrainOptions, nest_options
    from flows.retrain import retrain_and_evaluate
    from tasks import storage
    from tasks.registry import read_champion, set_champion

    explicit = {"sources": list(sources) or None, "store": store, "epochs": epochs, "image_size": image_size,
                "backbone_weights": backbone_weights, "backbone_weights_sha256": backbone_weights_sha256,
                "recipe": recipe, "s3_endpoint_url": s3_endpoint_url}
    if not from_variables and not (sources and store):
        raise _UsageError("bootstrap needs SOURCE... and --store, or --from-variables to read them from Prefect",
                          click.get_current_context())
    parameters, _ = nightly_parameters(explicit, read_nightly_variables() if from_variables else {})
    store = parameters["store"]
    options = storage.storage_options_for(store, parameters.get("s3_endpoint_url"))
    current = read_champion(store, options)
    if current and not force:
        raise _CliError(f"{store} already has champion {current['version']}; nothing done (the nightly retrains "
                        f"it; --force trains and promotes another)")
    result = _run_flow(retrain_and_evaluate, workers, scheduler, **nest_options(parameters, RetrainOptions))
    if not result["promoted"]:
        set_champion(store, result["version"], options, reason="aml-smear bootstrap --force")
    m = result["metrics"]
    click.echo(f"champion {result['version']}: trained on {len(parameters['sources'])} source(s) "
               f"({', '.join(parameters['sources'])}), test ROC AUC {m['roc_auc']:.3f}, sensitivity "
               f"{m['sensitivity']:.3f}, specificity {m['specificity']:.3f} on {m['n']} cells -> {result['model']}")
    if current:
        click.echo(f"replaced champion {current['version']} (`aml-smear models rollback --store {store}` restores it)")
    click.echo(f"scoring and the nightly now use it: aml-smear score SOURCE --store {store}")


@cli.command("report")
@click.argument("run")
@click.option("--store", required=True, help="Run store holding runs/RUN: a folder or an s3:// URL.")
@click.option("--score", "score_id", default=None, help="The scoring of RUN [default: its latest complete one].")
@click.option("--s3-endpoint-url", envvar="AML_SMEAR_S3_ENDPOINT_URL", default=None,
              help="S3-compatible endpoint for s3:// URLs (MinIO, moto).")
def report_command(run: str, store: str, score_id: str | None, s3_endpoint_url: str | None) -> None:
    """Rebuild the per-patient HTML reports and the index page of a finished scoring of RUN."""
    from aml_model.errors import AmlSmearError
    from tasks import storage
    from tasks.report import build_reports
    from tasks.runs import find_scoring

    options = storage.storage_options_for(store, s3_endpoint_url)
    try:
        scoring = find_scoring(storage.RunPaths(store, run), score_id, options)
        index = build_reports(scoring, options)
    except (AmlSmearError, ValueError, FileNotFoundError, PermissionError) as exc:
        raise _CliError(str(exc)) from exc
    click.echo(f"reports of run {run}, scoring {scoring.score_id} rebuilt: {index}")


@cli.command("demo")
@click.option("--store", default="demo-store", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the demo data and outputs.")
@click.option("--epochs", default=15, show_default=True, help="Maximum training epochs.")
@_cluster_options
def demo(store: str, epochs: int, workers, scheduler, s3_endpoint_url) -> None:
    """The whole pipeline on built-in synthetic demo data: train, register, score, call."""
    from flows.demo import demo_flow

    result = _run_flow(demo_flow, workers, scheduler, store=str(Path(store).resolve()), epochs=epochs)
    _echo_patients(result)
    settings = result["call_settings"]
    click.echo(f"called with aml-smear score's defaults: threshold {settings['threshold']:g}, blast cut-off "
               f"{settings['blast_cutoff']:.0%}, min cells {settings['min_cells']}, max quarantined share "
               f"{settings['max_quarantined_share']:.0%}")
    click.echo(f"demo outputs: {result['store']} (model {result['model_dir']}, run {result['run']})")
    click.echo(f"patient reports: {result['report']}")


@cli.command("serve")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Most flow runs at once [default: no limit].")
@click.option("--scheduler", envvar="AML_SMEAR_DASK_SCHEDULER", default=None, metavar="tcp://HOST:PORT",
              help="Address of an existing Dask scheduler for the runs [env AML_SMEAR_DASK_SCHEDULER].")
@click.option("--workers", envvar="AML_SMEAR_DASK_WORKERS", type=click.IntRange(min=1), default=None,
              help="Workers of each run's local Dask cluster [env AML_SMEAR_DASK_WORKERS; default: one per core].")
def serve_command(limit, scheduler, workers) -> None:
    """Serve the deployments (score-smears/on-demand, retrain-and-evaluate/nightly) without a work pool.

    Needs PREFECT_API_URL; the nightly retrain reads its Prefect variables (aml_smear_store,
    aml_smear_retrain_sources...) when each run starts. Runs until Ctrl-C, then pauses the schedules.
    """
    from prefect.exceptions import ParameterTypeError

    from flows.runner import dask_task_runner, quiet_dask_logs
    from flows.serve import serve_deployments

    quiet_dask_logs()
    try:
        serve_deployments(dask_task_runner(workers, scheduler), limit=limit)
    # A Prefect variable of the wrong shape (sources not a list of URLs) fails parameter validation.
    except (ValueError, ParameterTypeError) as exc:
        from aml_model.errors import one_line

        raise _CliError(one_line(exc)) from exc


cli.add_command(models)
cli.add_command(runs)


def main() -> None:
    """Entry point for ``python -m flows.cli``."""
    cli(prog_name="aml-smear")


if __name__ == "__main__":
    sys.exit(main())
