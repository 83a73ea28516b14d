"""``cdsf-bench export-splits``: the subjects of every split of a run or a suite, as TSV.

It reads the folders' splits.csv and results.csv only: no plugin, no torch.
"""

from __future__ import annotations

from pathlib import Path

import click

from cdsf_bench.results import write_text

#: the files ``--out FOLDER`` receives
SPLITS_TSV = "splits.tsv"
PARTICIPANTS_TSV = "participants.tsv"


@click.command("export-splits")
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help=f"Write {SPLITS_TSV} and a BIDS-style {PARTICIPANTS_TSV} into this folder (default: "
    f"{SPLITS_TSV} to standard output).",
)
def export_splits(folder: Path, out: Path | None) -> None:
    """Write the subject ids of every split of every replicate of a run or suite FOLDER as TSV.

    splits.tsv has one row per run and subject: suite, scenario, task, method, seed, fold,
    run_folder, participant_id, diagnosis, labelled, split. participants.tsv (with --out) has
    one row per participant and one split column per replicate, "n/a" where a replicate did
    not use the subject: what another study needs to re-run a result on the same subjects.
    """
    from cdsf_bench.splits_export import participants_table, split_table

    splits = split_table(folder)
    if out is None:
        click.echo(splits.to_csv(sep="\t", index=False), nl=False)
        return
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / SPLITS_TSV, splits.to_csv(sep="\t", index=False))
    write_text(out / PARTICIPANTS_TSV, participants_table(splits).to_csv(sep="\t", index=False))
    click.echo(f"wrote {out / SPLITS_TSV} and {out / PARTICIPANTS_TSV}")
