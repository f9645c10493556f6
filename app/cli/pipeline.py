"""The commands that run a flow (ingest, score, calibrate, retrain, pretrain-backbone, bootstrap,
demo), rebuild a scoring's reports, print the model, and serve the deployments."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from aml_model.config import DEFAULT_RECIPE, PRETRAIN_METHODS, RECIPES, PretrainConfig
from app.cli.common import LAYOUTS, CliError, UsageError, check_inputs, cluster_options, run_flow
from tasks.store import Store

if TYPE_CHECKING:
    from tasks.store_layout import RunPaths


@click.command("model-summary")
@click.option(
    "--image-size", default=224, show_default=True, help="Side of the square input, pixels."
)
@click.option(
    "--recipe",
    type=click.Choice(RECIPES),
    default="paper",
    show_default=True,
    help="The recipe whose network to print.",
)
def model_summary(image_size: int, recipe: str) -> None:
    """Print the paper architecture (or a recipe's) and its parameter counts."""
    from aml_model.architecture import build_model
    from aml_model.config import ExperimentConfig, ModelConfig
    from aml_model.summary import describe_model

    # Random backbone weights: the architecture and counts are the same as with ImageNet's.
    config = ExperimentConfig.for_recipe(
        recipe, ModelConfig(image_size=image_size, backbone_weights="none")
    )
    model = build_model(config.model)
    click.echo(describe_model(model))


@click.command("ingest")
@click.argument("source")
@click.option("--store", required=True, help="Run store: a folder or an s3:// URL.")
@click.option("--layout", type=LAYOUTS, default="auto", show_default=True)
@click.option(
    "--run-id", default=None, help="Run id [default: from the source name and its inputs]."
)
@click.option(
    "--image-size", default=224, show_default=True, help="Side of the stored cells, pixels."
)
@cluster_options
def ingest_command(
    source, store, layout, run_id, image_size, workers, scheduler, s3_endpoint_url
) -> None:
    """Decode the cell images of SOURCE into the run store (Zarr + Parquet)."""
    check_inputs([Store.at(source, s3_endpoint_url)], Store.at(store, s3_endpoint_url))
    from flows.ingest import ingest

    result = run_flow(
        ingest,
        workers,
        scheduler,
        source=source,
        store=store,
        run_id=run_id,
        layout=layout,
        image_size=image_size,
        s3_endpoint_url=s3_endpoint_url,
    )
    state = "already complete, nothing redone" if result["already_complete"] else "complete"
    click.echo(
        f"run {result['run_id']} {state}: {result['cells']} cells, {result['quarantined']} quarantined "
        f"(layout {result['layout']}) -> {result['run']}"
    )
    _echo_quarantined(Store.at(store, s3_endpoint_url).run(result["run_id"]))


#: Quarantined inputs a summary names; the run's quarantine.parquet lists them all.
_QUARANTINED_SHOWN = 10


def _echo_quarantined(paths: RunPaths) -> None:
    """Name the run's first quarantined inputs (by patient, then file) with their reasons, and where
    the full list is.

    Names are paths in the source, so in the patient layout they start with the patient's folder:
    the terminal shows real patient ids anyway (the calls), and nothing here goes to Prefect.
    """
    from tasks.inputs import quarantined_inputs

    quarantined = quarantined_inputs(paths)
    if quarantined.empty:
        return
    count = (
        f"{len(quarantined)} input{'' if len(quarantined) == 1 else 's'} quarantined, not scored"
    )
    shown = (
        ""
        if len(quarantined) <= _QUARANTINED_SHOWN
        else f"; the first {_QUARANTINED_SHOWN} here, all with their reasons in"
    )
    click.echo(f"{count}{shown or ', listed in'} {paths.quarantine_table}:")
    for row in quarantined.head(_QUARANTINED_SHOWN).itertuples():
        click.echo(f"  {row.name}: {row.reason}")


def _echo_patients(result: dict) -> None:
    from app.cli.runs import call_settings, echo_patients

    state = "already complete, nothing redone" if result["already_complete"] else "complete"
    click.echo(
        f"run {result['run_id']}, scoring {result['score_id']} {state}: {result['cells']} cells scored with "
        f"model {result['model_version']}, {result['quarantined']} inputs quarantined -> {result['run']}"
    )
    reused = result.get("reused_probabilities_from")
    click.echo(
        f"calls at {call_settings(result)}"
        + (f"; probabilities copied from scoring {reused}, not scored again" if reused else "")
    )
    echo_patients(result["patients"])


@click.command("score")
@click.argument("source")
@click.option(
    "--store", required=True, help="Run store (and model registry): a folder or an s3:// URL."
)
@click.option(
    "--model",
    default="champion",
    show_default=True,
    help="champion, a registered version, or a .keras path/URL.",
)
@click.option(
    "--run-id", default=None, help="Ingest run id [default: from the source name and its inputs]."
)
@click.option(
    "--score-id",
    default=None,
    help="Scoring id within the run [default: from the model version and the settings].",
)
@click.option(
    "--new-only",
    is_flag=True,
    default=False,
    help="Score only patients whose current images the model has not scored; nothing new, nothing done.",
)
@click.option(
    "--threshold", default=0.5, show_default=True, help="Probability at which a cell is blast-like."
)
@click.option(
    "--blast-cutoff", default=0.2, show_default=True, help="Blast-like fraction that suspects AML."
)
@click.option(
    "--min-cells",
    default=100,
    show_default=True,
    help="Fewer scored cells give INSUFFICIENT_CELLS.",
)
@click.option(
    "--max-quarantined-share",
    default=0.02,
    show_default=True,
    help="A patient with more of its inputs quarantined gets the high_quarantine_rate QC flag.",
)
@click.option("--layout", type=LAYOUTS, default="auto", show_default=True)
@click.option("--batch-size", default=64, show_default=True, help="Cells per forward pass.")
@click.option(
    "--precision",
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    default="auto",
    show_default=True,
    help="Inference precision; auto: per worker, bfloat16 on CPUs with AMX or "
    "AVX-512 BF16, float16 on GPUs, float32 elsewhere or where the model's card shows its scores drift.",
)
@click.option(
    "--explain/--no-explain",
    default=True,
    show_default=True,
    help="Grad-CAM of the most blast-like cells of AML_SUSPECTED and INDETERMINATE patients.",
)
@click.option(
    "--top-k",
    "explain_top_k",
    type=click.IntRange(min=1),
    default=12,
    show_default=True,
    help="Most blast-like cells per patient in the reports (and Grad-CAM).",
)
@click.option(
    "--site",
    default=None,
    help="Use this site's calibration of the model (see `aml-smear calibrate`).",
)
@click.option(
    "--site-operating-point",
    type=click.Choice(["fraction", "balanced"]),
    default="fraction",
    show_default=True,
    help="With --site: the site's threshold that makes the calls; fraction: the "
    "blast-like fraction is unbiased at the blast cut-off, balanced: sensitivity = specificity.",
)
@cluster_options
def score_command(source, store, workers, scheduler, **parameters) -> None:
    """Score the cells of SOURCE and call each patient.

    Each model and settings make their own scoring of the source's decoded cells; a finished
    scoring is never rewritten.
    """
    endpoint = parameters["s3_endpoint_url"]
    check_inputs([Store.at(source, endpoint)], Store.at(store, endpoint), parameters["model"])
    from flows.parameters import ScoreOptions, nest_options
    from flows.score import score_smears

    result = run_flow(
        score_smears,
        workers,
        scheduler,
        **nest_options({"source": source, "store": store, **parameters}, ScoreOptions),
    )
    if result["nothing_new"]:
        click.echo(
            f"nothing new in {source}: model {result['model_version']} has scored every patient's "
            f"current images"
        )
        return
    if result["site"]:
        click.echo(
            f"site {result['site']}: calibrated probabilities at the site's {result['site_operating_point']} "
            f"operating point make the calls; 'corrected' is the blast fraction corrected for the site's rates"
        )
    _echo_patients(result)
    _echo_quarantined(Store.at(store, endpoint).run(result["run_id"]))
    click.echo(f"patient reports: {result['report']}")


@click.command("calibrate")
@click.argument("source")
@click.option(
    "--store", required=True, help="Run store and model registry: a folder or an s3:// URL."
)
@click.option("--site", required=True, help="The site's name: letters, digits, '-' and '_'.")
@click.option(
    "--model", default="champion", show_default=True, help="champion or a registered version."
)
@click.option("--layout", type=LAYOUTS, default="auto", show_default=True)
@click.option(
    "--blast-cutoff",
    default=0.2,
    show_default=True,
    help="Blast fraction at which the site's fraction operating point is unbiased (score's cut-off).",
)
@cluster_options
def calibrate_command(
    source, store, site, model, layout, blast_cutoff, workers, scheduler, s3_endpoint_url
) -> None:
    """Calibrate the model to one site on the site's labelled cells in SOURCE."""
    check_inputs([Store.at(source, s3_endpoint_url)], Store.at(store, s3_endpoint_url), model)
    from flows.calibrate import calibrate_site

    result = run_flow(
        calibrate_site,
        workers,
        scheduler,
        source=source,
        store=store,
        site=site,
        model=model,
        layout=layout,
        blast_cutoff=blast_cutoff,
        s3_endpoint_url=s3_endpoint_url,
    )
    click.echo(
        f"site {result['site']}, model {result['model_version']}: fitted on {result['n_blast']} blast and "
        f"{result['n_other']} other labelled cells; balanced threshold {result['threshold']:g} on the "
        f"calibrated scale (raw probability {result['raw_threshold']:.3f})"
    )
    click.echo(f"{'':<20} {'accuracy':>8} {'sensitivity':>11} {'specificity':>11} {'ROC AUC':>7}")
    for label, m in (
        ("before (raw, 0.5)", result["before"]),
        ("after (calibrated)", result["after"]),
        ("after (fraction pt)", result["operating_points"]["fraction"]["metrics"]),
    ):
        click.echo(
            f"{label:<20} {m['accuracy']:>8.3f} {m['sensitivity']:>11.3f} {m['specificity']:>11.3f} "
            f"{m['roc_auc']:>7.3f}"
        )
    click.echo(f"(on the calibration cells themselves) -> {result['calibration']}")
    cutoff = result["blast_cutoff"]
    click.echo(
        f"blast-like fraction expected of a patient with {cutoff:.0%} blasts, at each operating point "
        f"(score --site-operating-point; smoothed rates of the labelled cells):"
    )
    click.echo(
        f"{'':<10} {'threshold':>9} {'raw':>6} {'sensitivity':>11} {'false-pos.':>10} {'expected':>8} "
        f"{'bias':>7}"
    )
    for name, point in result["operating_points"].items():
        bias = (
            round(point["bias_at_cutoff"], 3) + 0.0
        )  # + 0.0: the fraction point's -1e-15 prints as +0.000
        click.echo(
            f"{name:<10} {point['threshold']:>9.3f} {point['raw_threshold']:>6.3f} "
            f"{point['sensitivity']:>11.3f} {point['false_positive_rate']:>10.3f} "
            f"{cutoff + point['bias_at_cutoff']:>8.1%} {bias:>+7.3f}"
        )


@click.command("retrain")
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "--store", required=True, help="Run store and model registry: a folder or an s3:// URL."
)
@click.option("--epochs", default=50, show_default=True)
@click.option(
    "--patience", default=5, show_default=True, help="Early-stopping patience on validation loss."
)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--backbone-weights",
    default="imagenet",
    show_default=True,
    help="imagenet, none, shipped (the package's cell backbone), a registered backbone id "
    "(aml-smear pretrain-backbone), or a weights file path/URL.",
)
@click.option(
    "--backbone-weights-sha256", default=None, help="Expected sha256 of the weights file."
)
@click.option("--image-size", default=224, show_default=True)
@click.option(
    "--augment-views",
    default=2,
    show_default=True,
    help="Augmented views per training cell (cached path).",
)
@click.option(
    "--promotion-margin",
    default=0.005,
    show_default=True,
    help="Tolerated ROC AUC drop against the champion.",
)
@click.option(
    "--training-path", type=click.Choice(["cached", "plain"]), default="cached", show_default=True
)
@click.option("--layout", type=LAYOUTS, default="auto", show_default=True)
@click.option(
    "--recipe",
    type=click.Choice(RECIPES),
    default=DEFAULT_RECIPE,
    show_default=True,
    help="paper: Hassan et al. unchanged; robust: scale and colour standardisation, pooled "
    "third-stage features with a logistic head, colour and scale augmentation.",
)
@cluster_options
def retrain_command(sources, store, workers, scheduler, **parameters):
    """Train and evaluate the model on labelled SOURCES together (balanced by source and label);
    promote it if no worse than the champion."""
    endpoint = parameters["s3_endpoint_url"]
    check_inputs([Store.at(source, endpoint) for source in sources], Store.at(store, endpoint))
    from flows.parameters import RetrainOptions, nest_options
    from flows.retrain import retrain_and_evaluate

    result = run_flow(
        retrain_and_evaluate,
        workers,
        scheduler,
        **nest_options({"sources": list(sources), "store": store, **parameters}, RetrainOptions),
    )
    m = result["metrics"]
    click.echo(
        f"model {result['version']} ({'champion' if result['promoted'] else 'candidate'}): test ROC AUC "
        f"{m['roc_auc']:.3f}, accuracy {m['accuracy']:.3f}, sensitivity {m['sensitivity']:.3f}, "
        f"specificity {m['specificity']:.3f}, F1 {m['f1']:.3f} on {m['n']} cells"
    )
    click.echo(
        f"{result['reason']}; {result['embedded']} new embeddings; {result['seconds']:.0f} s -> {result['model']}"
    )
    if len(result["rates_by_type"]) > 1:
        click.echo("blast-like rate of the test cells by source and cell type:")
        for row in result["rates_by_type"]:
            auc = "" if row["roc_auc"] != row["roc_auc"] else f", ROC AUC {row['roc_auc']:.3f}"
            click.echo(
                f"  {row['source']} / {row['cell_type']}: {row['blast_like_rate']:.3f} of {row['n']}{auc}"
            )


@click.command("pretrain-backbone")
@click.argument("sources", nargs=-1)
@click.option(
    "--store", required=True, help="Run store; the backbone is registered under backbones/<id>/."
)
@click.option(
    "--run",
    "runs",
    multiple=True,
    default=None,
    metavar="RUN_ID",
    help="An ingest run of the store to train on too (repeatable): a lab's own cells.",
)
@click.option(
    "--recipe",
    type=click.Choice(RECIPES),
    default=DEFAULT_RECIPE,
    show_default=True,
    help="The recipe the backbone is for (feature layer, input normalisation, views).",
)
@click.option(
    "--start-from",
    default="none",
    show_default=True,
    help="none (random), shipped, a registered backbone id, imagenet, or a weights file path/URL.",
)
@click.option(
    "--start-from-sha256", default=None, help="Expected sha256 of a --start-from weights file."
)
@click.option("--name", default="cells", show_default=True, help="Prefix of the backbone's id.")
@click.option(
    "--method",
    type=click.Choice(PRETRAIN_METHODS),
    default="simclr",
    show_default=True,
    help="The self-supervised objective (aml_model.pretrain).",
)
@click.option(
    "--steps", default=PretrainConfig.steps, show_default=True, help="Optimiser steps in all."
)
@click.option(
    "--steps-per-task",
    default=200,
    show_default=True,
    help="Steps per task (each resumes the checkpoint).",
)
@click.option(
    "--batch-size",
    default=PretrainConfig.batch_size,
    show_default=True,
    help="Cells per step (two views each).",
)
@click.option(
    "--view-size",
    default=PretrainConfig.view_size,
    show_default=True,
    help="Side of the training views, pixels.",
)
@click.option(
    "--min-crop",
    default=PretrainConfig.min_crop,
    show_default=True,
    help="Smallest view crop, a fraction of the cell's side.",
)
@click.option(
    "--learning-rate",
    default=PretrainConfig.learning_rate,
    show_default=True,
    help="Peak learning rate.",
)
@click.option(
    "--temperature",
    default=PretrainConfig.temperature,
    show_default=True,
    help="Contrastive softmax temperature.",
)
@click.option(
    "--tone",
    default=PretrainConfig.tone,
    show_default=True,
    help="The views' random monotone tone curve per colour channel: its largest weight (0-1).",
)
@click.option(
    "--greyscale",
    default=PretrainConfig.greyscale,
    show_default=True,
    help="Share of views turned grey.",
)
@click.option(
    "--blur",
    default=PretrainConfig.blur,
    show_default=True,
    help="The views' largest Gaussian blur, sigma in pixels of the view.",
)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--checkpoint-every",
    default=PretrainConfig.checkpoint_every,
    show_default=True,
    help="Steps between checkpoints.",
)
@click.option(
    "--pool-cells",
    default=PretrainConfig.pool_cells,
    show_default=True,
    help="Most cells a task holds in memory.",
)
@click.option(
    "--image-size", default=224, show_default=True, help="The model's input side, pixels."
)
@click.option("--layout", type=LAYOUTS, default="auto", show_default=True)
@cluster_options
def pretrain_backbone_command(
    sources, store, runs, workers, scheduler, s3_endpoint_url, **parameters
) -> None:
    """Pretrain the recipe's backbone stages on the cells of SOURCES (and --run RUN_ID) without labels.

    SimCLR on two views of each cell from the recipe's augmentation; checkpointed in the store, so
    the same command run again after a crash resumes where it stopped. Registers the backbone
    for `aml-smear retrain --backbone-weights ID`.
    """
    check_inputs(
        [Store.at(source, s3_endpoint_url) for source in sources], Store.at(store, s3_endpoint_url)
    )
    from flows.parameters import PretrainOptions, nest_options
    from flows.pretrain import pretrain_backbone

    result = run_flow(
        pretrain_backbone,
        workers,
        scheduler,
        **nest_options(
            {
                "sources": list(sources),
                "runs": list(runs or ()),
                "store": store,
                "s3_endpoint_url": s3_endpoint_url,
                **parameters,
            },
            PretrainOptions,
        ),
    )
    card = result["card"]
    state = "already registered, nothing redone" if result["already_complete"] else "registered"
    resumed = (
        f", resumed at step {result['resumed_from']}"
        if 0 < result["resumed_from"] < card["steps"]
        else ""
    )
    click.echo(
        f"backbone {result['backbone_id']} {state}: {card['steps']} steps ({card['epochs']:.1f} passes over "
        f"{result['cells']} cells{resumed}), {card['train_seconds']:.0f} s of training, loss "
        f"{card['loss']['first']:.3f} -> {card['loss']['last']:.3f}, sha256 {card['sha256']}"
    )
    click.echo(
        f"train a model on it: aml-smear retrain SOURCE... --store {store} --backbone-weights "
        f"{result['backbone_id']}"
    )


@click.command("bootstrap")
@click.argument("sources", nargs=-1)
@click.option(
    "--store", default=None, help="Run store and model registry: a folder or an s3:// URL."
)
@click.option(
    "--from-variables",
    is_flag=True,
    help="Read the nightly's configuration from the Prefect variables (needs PREFECT_API_URL); "
    "SOURCES and options given here win over them.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Train and promote a new model even when the store has a champion (it stays in the "
    "champion history: `aml-smear models rollback` restores it).",
)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=None, help="Most training epochs [default: 50]."
)
@click.option(
    "--backbone-weights",
    default=None,
    help="imagenet (downloads), none, or a weights file path/URL [default: imagenet].",
)
@click.option(
    "--backbone-weights-sha256", default=None, help="Expected sha256 of the weights file."
)
@click.option(
    "--image-size", type=int, default=None, help="Model input side, pixels [default: 224]."
)
@click.option(
    "--recipe", type=click.Choice(RECIPES), default=None, help=f"[default: {DEFAULT_RECIPE}]"
)
@cluster_options
def bootstrap_command(
    sources,
    store,
    from_variables,
    force,
    epochs,
    backbone_weights,
    backbone_weights_sha256,
    image_size,
    recipe,
    workers,
    scheduler,
    s3_endpoint_url,
) -> None:
    """Train and promote the first champion of an empty store from labelled SOURCES.

    With --from-variables it trains exactly as the nightly would (the same Prefect variables), so
    the next nightly finds nothing changed and skips training. Refuses when the store already has
    a champion, unless --force.
    """
    from flows.nightly import nightly_parameters, read_nightly_variables
    from flows.parameters import RetrainOptions, nest_options
    from flows.retrain import retrain_and_evaluate
    from tasks.registry import promote_bootstrapped, require_bootstrappable

    explicit = {
        "sources": list(sources) or None,
        "store": store,
        "epochs": epochs,
        "image_size": image_size,
        "backbone_weights": backbone_weights,
        "backbone_weights_sha256": backbone_weights_sha256,
        "recipe": recipe,
        "s3_endpoint_url": s3_endpoint_url,
    }
    if not from_variables and not (sources and store):
        raise UsageError(
            "bootstrap needs SOURCE... and --store, or --from-variables to read them from Prefect",
            click.get_current_context(),
        )
    parameters, _ = nightly_parameters(explicit, read_nightly_variables() if from_variables else {})
    store = parameters["store"]
    location = Store.at(store, parameters.get("s3_endpoint_url"))
    current = require_bootstrappable(location, force)
    result = run_flow(
        retrain_and_evaluate, workers, scheduler, **nest_options(parameters, RetrainOptions)
    )
    promote_bootstrapped(location, result["version"], result["promoted"])
    m = result["metrics"]
    click.echo(
        f"champion {result['version']}: trained on {len(parameters['sources'])} source(s) "
        f"({', '.join(parameters['sources'])}), test ROC AUC {m['roc_auc']:.3f}, sensitivity "
        f"{m['sensitivity']:.3f}, specificity {m['specificity']:.3f} on {m['n']} cells -> {result['model']}"
    )
    if current:
        click.echo(
            f"replaced champion {current['version']} (`aml-smear models rollback --store {store}` restores it)"
        )
    click.echo(f"scoring and the nightly now use it: aml-smear score SOURCE --store {store}")


@click.command("report")
@click.argument("run")
@click.option(
    "--store", required=True, help="Run store holding runs/RUN: a folder or an s3:// URL."
)
@click.option(
    "--score",
    "score_id",
    default=None,
    help="The scoring of RUN [default: its latest complete one].",
)
@click.option(
    "--s3-endpoint-url",
    envvar="AML_SMEAR_S3_ENDPOINT_URL",
    default=None,
    help="S3-compatible endpoint for s3:// URLs (MinIO, moto).",
)
def report_command(run: str, store: str, score_id: str | None, s3_endpoint_url: str | None) -> None:
    """Rebuild the per-patient HTML reports and the index page of a finished scoring of RUN."""
    from aml_model.errors import AmlSmearError
    from tasks.report import build_reports
    from tasks.runs import find_scoring

    try:
        scoring = find_scoring(Store.at(store, s3_endpoint_url).run(run), score_id)
        index = build_reports(scoring)
    except (AmlSmearError, ValueError, FileNotFoundError, PermissionError) as exc:
        raise CliError(str(exc)) from exc
    click.echo(f"reports of run {run}, scoring {scoring.score_id} rebuilt: {index}")


@click.command("demo")
@click.option(
    "--store",
    default="demo-store",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for the demo data and outputs.",
)
@click.option("--epochs", default=15, show_default=True, help="Maximum training epochs.")
@cluster_options
def demo(store: str, epochs: int, workers, scheduler, s3_endpoint_url) -> None:
    """The whole pipeline on built-in synthetic demo data: train, register, score, call."""
    from flows.demo import demo_flow

    result = run_flow(
        demo_flow, workers, scheduler, store=str(Path(store).resolve()), epochs=epochs
    )
    _echo_patients(result)
    settings = result["call_settings"]
    click.echo(
        f"called with aml-smear score's defaults: threshold {settings['threshold']:g}, blast cut-off "
        f"{settings['blast_cutoff']:.0%}, min cells {settings['min_cells']}, max quarantined share "
        f"{settings['max_quarantined_share']:.0%}"
    )
    click.echo(
        f"demo outputs: {result['store']} (model {result['model_dir']}, run {result['run']})"
    )
    click.echo(f"patient reports: {result['report']}")


@click.command("serve")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Most flow runs at once [default: no limit].",
)
@click.option(
    "--scheduler",
    envvar="AML_SMEAR_DASK_SCHEDULER",
    default=None,
    metavar="tcp://HOST:PORT",
    help="Address of an existing Dask scheduler for the runs [env AML_SMEAR_DASK_SCHEDULER].",
)
@click.option(
    "--workers",
    envvar="AML_SMEAR_DASK_WORKERS",
    type=click.IntRange(min=1),
    default=None,
    help="Workers of each run's local Dask cluster [env AML_SMEAR_DASK_WORKERS; default: one per core].",
)
def serve_command(limit, scheduler, workers) -> None:
    """Serve the deployments (score-smears/on-demand, retrain-and-evaluate/nightly) without a work pool.

    Needs PREFECT_API_URL; the nightly retrain reads its Prefect variables (aml_smear_store,
    aml_smear_retrain_sources...) when each run starts. Runs until Ctrl-C, then pauses the schedules.
    """
    from prefect.exceptions import ParameterTypeError

    from app.serve import serve_deployments
    from flows.runner import dask_task_runner, quiet_dask_logs

    quiet_dask_logs()
    try:
        serve_deployments(dask_task_runner(workers, scheduler), limit=limit)
    # A Prefect variable of the wrong shape (sources not a list of URLs) fails parameter validation.
    except (ValueError, ParameterTypeError) as exc:
        from aml_model.errors import one_line

        raise CliError(one_line(exc)) from exc
