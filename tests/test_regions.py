"""Tests of the brain-region atlas: its masks on the reference grid, its symmetry, its docs.

The engine reads regional uptake through the atlas on every cohort, so the atlas must stand
on its own (no phantom imported), its masks must be non-empty brain voxels around their
centres at the resolutions the benchmark runs, and docs/data.md must show what it holds.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cdsf_bench.data.grid import reference_grid
from cdsf_bench.data.regions import (
    ATROPHY_REGIONS,
    HYPOMETABOLISM_REGIONS,
    REFERENCE_REGIONS,
    REGIONS,
    region_masks,
)
from cdsf_bench.data.templates import grid_mni_coordinates, load_templates

DATA_GUIDE = Path(__file__).resolve().parent.parent / "docs" / "data.md"


def test_engine_and_metrics_score_regions_without_the_phantom() -> None:
    """Importing the engine and metrics and building the regions' masks loads no phantom."""
    script = (
        "import sys\n"
        "import numpy as np\n"
        "from cdsf_bench.data.regions import hypometabolism_masks\n"
        "atlas_only = 'cdsf_bench.data.phantom' in sys.modules\n"
        "import cdsf_bench.engine, cdsf_bench.metrics\n"
        "from cdsf_bench.data.grid import reference_grid\n"
        "grid = reference_grid(8.0)\n"
        "masks = hypometabolism_masks(grid.affine, np.ones(grid.shape, dtype=bool))\n"
        "assert all(mask.any() for mask in masks.values())\n"
        "print(atlas_only, 'cdsf_bench.data.phantom' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("resolution", [4.0, 8.0])
def test_masks_are_brain_voxels_around_every_centre(resolution: float) -> None:
    grid = reference_grid(resolution)
    brain = load_templates(resolution).brain_mask
    mni = grid_mni_coordinates(grid)
    low, high = mni.reshape(-1, 3).min(0), mni.reshape(-1, 3).max(0)
    masks = region_masks(grid.affine, grid.shape, brain, REGIONS)
    assert list(masks) == list(REGIONS)
    for name, mask in masks.items():
        region = REGIONS[name]
        assert mask.shape == grid.shape and not (mask & ~brain).any(), name
        distances = np.stack([np.linalg.norm(mni - np.asarray(c), axis=-1) for c in region.centres_mm])
        assert distances.min(0)[mask].max() <= region.sigma_mm + 1e-6, name
        for centre, distance in zip(region.centres_mm, distances, strict=True):
            assert (low <= np.asarray(centre) - region.sigma_mm).all(), (name, centre)
            assert (np.asarray(centre) + region.sigma_mm <= high).all(), (name, centre)
            assert (mask & (distance <= region.sigma_mm)).any(), (name, centre)


def _mirrored(centres: tuple[tuple[float, float, float], ...]) -> bool:
    return {(-x, y, z) for x, y, z in centres} == set(centres)


@pytest.mark.parametrize("resolution", [4.0, 8.0])
def test_pairs_lie_one_per_hemisphere_and_mirror(resolution: float) -> None:
    """A pair has a centre in each hemisphere at the same y and z; mirrored pairs and
    midline regions give masks that are their own mirror image on the symmetric grid."""
    grid = reference_grid(resolution)
    x = grid_mni_coordinates(grid)[..., 0]
    np.testing.assert_array_equal(x[::-1], -x)  # the grid itself is symmetric about x = 0
    masks = region_masks(grid.affine, grid.shape, np.ones(grid.shape, dtype=bool), REGIONS)
    for name, region in REGIONS.items():
        if len(region.centres_mm) == 1:
            assert region.centres_mm[0][0] == 0.0, name
        else:
            (left, *left_yz), (right, *right_yz) = region.centres_mm
            assert left < 0.0 < right and left_yz == right_yz, name
        if _mirrored(region.centres_mm):
            np.testing.assert_array_equal(masks[name][::-1], masks[name], err_msg=name)
    # the design brief's hippocampi, 26 mm left and 28 mm right of the midline
    assert [name for name, region in REGIONS.items() if not _mirrored(region.centres_mm)] == ["hippocampus"]


def _documented_regions() -> dict[str, tuple[tuple[tuple[float, ...], ...], float, str]]:
    """docs/data.md's Regions table: per atlas name, its centres, its size and its role."""
    text = DATA_GUIDE.read_text().replace("\u2212", "-")
    section = text.split("### Regions\n", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    out = {}
    for row in rows:
        name_cell, centres_cell, size_cell, role = (cell.strip() for cell in row.strip("|").split("|"))
        centres: list[tuple[float, ...]] = []
        for group in re.findall(r"\(([^)]*)\)", centres_cell):
            first, *rest = (value.strip() for value in group.split(","))
            tail = tuple(float(value) for value in rest)
            if first.startswith("\u00b1"):
                centres += [(-float(first[1:]), *tail), (float(first[1:]), *tail)]
            else:
                centres.append((float(first), *tail))
        name = re.match(r"`(\w+)`", name_cell)
        assert name is not None, row
        out[name.group(1)] = (tuple(centres), float(size_cell), role)
    return out


def test_the_data_guide_shows_the_atlas() -> None:
    documented = _documented_regions()
    assert set(documented) == set(REGIONS)
    references = {name for names in REFERENCE_REGIONS.values() for name in names}
    for name, (centres, size, role) in documented.items():
        assert centres == REGIONS[name].centres_mm and size == REGIONS[name].sigma_mm, name
        assert (role == "GM loss") == (name in ATROPHY_REGIONS), name
        assert (role == "hypometabolism") == (name in HYPOMETABOLISM_REGIONS), name
        assert role.startswith("PET reference") == (name in references), name
