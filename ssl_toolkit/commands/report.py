"""`ssl report`."""

from __future__ import annotations

import json

import click

from ssl_toolkit.cli import CONTEXT, DATA_SETTINGS, POSITIVE, FiniteFloat, data_argument, echo_rows, main, quiet_libraries
from ssl_toolkit.completion import complete_data, complete_target
from ssl_toolkit.eval.projection import UMAP_METRICS


@main.command(context_settings=CONTEXT)
@click.argument("target", shell_complete=complete_target)
@click.option(
    "--data",
    "-d",
    shell_complete=complete_data,
    help="Dataset name or image folder (labelled or not). [default: the dataset the backbone was pretrained on]",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False),
    help="HTML file (.html or .htm). [default: <run>/report.html for a run folder, else ./report.html]",
)
@click.option("--umap-neighbors", type=click.IntRange(min=2), default=15, show_default=True, help="UMAP n_neighbors.")
@click.option("--umap-min-dist", type=FiniteFloat(0.0, 1.0), default=0.1, show_default=True, help="UMAP min_dist, 0 to 1.")
@click.option("--umap-metric", type=click.Choice(UMAP_METRICS), default="cosine", show_default=True, help="UMAP metric.")
@click.option(
    "--umap-max-points",
    type=click.IntRange(min=4),
    default=5000,
    show_default=True,
    help="Above this, UMAP draws a stratified subsample; at least 4.",
)
@click.option("--clusters", type=POSITIVE, help="k-means k. [default: number of classes, or 10]")
@click.option(
    "--queries-per-class",
    type=click.IntRange(1, 10),
    default=2,
    show_default=True,
    help="Example queries per class in the neighbour grids, 1 to 10 (at most 100 rows: with more classes, the first ones).",
)
@click.option("--ivf-threshold", type=POSITIVE, default=200_000, show_default=True, help="Gallery size from which FAISS uses an IVF index.")
@click.option("--batch-size", type=POSITIVE, default=256, show_default=True, help="Images per forward pass.")
@click.option("--device", help="Where to run the backbone, e.g. cpu or cuda. [default: cuda when available]")
@click.option(
    "--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True, help="Seed of UMAP, subsampling and example picks."
)
@click.option(
    "--split",
    type=click.Choice(["auto", "train", "test"]),
    default="auto",
    show_default=True,
    help="auto: test queries, training gallery; train/test: that split alone, leave-one-out.",
)
@DATA_SETTINGS
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object on stdout (the table goes to stderr).")
def report(
    target,
    data,
    out,
    umap_neighbors,
    umap_min_dist,
    umap_metric,
    umap_max_points,
    clusters,
    queries_per_class,
    ivf_threshold,
    batch_size,
    device,
    seed,
    split,
    overrides,
    as_json,
) -> None:
    """Write one self-contained HTML report about a backbone on a dataset.

    TARGET is a run folder, a backbone file or a checkpoint-library name. The page shows the
    run's facts and training curves, its probe results, FAISS kNN / retrieval / k-means
    figures, a UMAP scatter, nearest-neighbour grids, the linear probe's confusion matrix
    and the latest pretext samples. The last line printed is `report: <path>` (with --json,
    on stderr, and the JSON alone on stdout).
    """
    quiet_libraries()
    from ssl_toolkit.eval.report import report as run_report

    umap = {"n_neighbors": umap_neighbors, "min_dist": umap_min_dist, "metric": umap_metric, "max_points": umap_max_points, "seed": seed}
    result = run_report(
        target,
        data_argument(data, overrides),
        out,
        umap=umap,
        ivf_threshold=ivf_threshold,
        clusters=clusters,
        queries_per_class=queries_per_class,
        batch_size=batch_size,
        device=device,
        seed=seed,
        split=split,
    )
    rows = [("data", result["dataset"]), ("search", result["search"]["description"])]
    if result["labelled"]:
        rows += [(f"kNN top-1 k={_k_used(k, result['knn_k'])} (%)", f"{100 * v:.2f}") for k, v in result["knn"].items()]
        rows += [(f"Recall@{_k_used(k, result['recall_k'])} (%)", f"{100 * v:.2f}") for k, v in result["recall"].items()]
        rows.append(("mAP@R (%)", f"{100 * result['map_at_r']:.2f}"))
        clusters = result["clusters"]
        scored = "nmi_mean" in clusters
        rows.append(
            (
                "k-means NMI / ARI",
                f"{clusters['nmi_mean']:.3f} / {clusters['ari_mean']:.3f}"
                if scored
                else f"not run: {clusters['not_run']}"
                if clusters["not_run"]
                else f"not scored: {clusters['unscored']}",
            )
        )
    rows.append(("seconds", f"{result['seconds']['total']:.1f}"))
    echo_rows(rows, err=as_json)
    click.echo(f"report: {result['path']}", err=as_json)
    if as_json:
        click.echo(json.dumps(result, separators=(",", ":"), allow_nan=False))


def _k_used(k: str, used: dict[str, int]) -> str:
    """``k`` as the figure used it: ``20``, or ``5 (asked 20)`` where the gallery held fewer neighbours."""
    return k if used[k] == int(k) else f"{used[k]} (asked {k})"
