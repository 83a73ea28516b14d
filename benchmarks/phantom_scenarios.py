"""What each phantom scenario lets a method gain, measured on the phantom's ground truth (issue 35).

A scenario is a design of the generative model, so its figures are properties of the model,
not benchmark results: they say in advance what a perfect generator (E[PET | MRI], the
cohort's ``pet_expected``) and real PET could add, and whether a learnt generator could get
there. For every scenario it prints, on AD and CN subjects or on every subject as stated:

- ``pet-specific share``: the part of the across-subject variance of the regional PET means
  (the six disease regions, :data:`DISEASE_REGIONS`) that E[PET | MRI] does not explain,
  sum of Var(PET - E) over sum of Var(PET): what no generator can recover;
- ``diagnostic share``: of the across-subject voxel variance of E[PET | MRI] in the brain
  (AD and CN), the part that AD versus CN explains (between-class over total, eta squared):
  small where a voxel-loss generator spends itself on what does not diagnose;
- ``ridge r``: held-out correlation between the PET disease score (mean SUVR over
  :data:`SCORE_REGIONS`) and a ``RidgeCV`` prediction of it from the nine regional MRI means,
  trained on 60 and on 500 paired subjects of every diagnosis; ``partial r`` the same with
  the structural severity partialled out of both (what PET shows beyond the severity MRI
  tracks), beside E[PET | MRI]'s own partial r, the ceiling of any generator;
- AUCs: AD versus CN on held-out subjects, a standardised L2 ``LogisticRegression`` (C = 1) on
  the regional means of MRI, MRI + E[PET | MRI] and MRI + real PET, trained on ``L``
  labelled subjects (half AD, half CN) drawn ``--draws`` times; the gains are the mean
  differences over the same draws.

Run (8 mm volumes; about a minute per scenario on one core)::

    python benchmarks/phantom_scenarios.py                        # the issue's scenarios
    python benchmarks/phantom_scenarios.py --scenario default --seed 7 --json
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
from rich.table import Table
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cdsf_bench.data.conventions import normalise_mri
from cdsf_bench.data.phantom import PhantomCohort, generate_phantom, phantom_settings
from cdsf_bench.data.regions import ATROPHY_REGIONS, HYPOMETABOLISM_REGIONS, REGIONS, region_masks
from cdsf_bench.progress import console

#: The scenarios of issue 35 and, for comparison, the default.
MEASURED = ("default", "synthesis_control", "joint_control", "adni_like")
#: Regions whose PET carries disease: the PET-specific share is read over them.
DISEASE_REGIONS = ATROPHY_REGIONS + HYPOMETABOLISM_REGIONS
#: The PET disease score's regions: the hypometabolism signature and the medial temporal lobe.
SCORE_REGIONS = HYPOMETABOLISM_REGIONS + ("hippocampus", "entorhinal")
#: Paired subjects the ridge is trained on; the rest of the cohort tests it.
RIDGE_SIZES = (60, 500)
RIDGE_ALPHAS = np.logspace(-3, 4, 15)
LABEL_COUNTS = (24, 48)


def regional_means(volumes: np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
    """[N, R] means of each volume over each mask, in the masks' order."""
    flat = volumes.reshape(len(volumes), -1)
    return np.stack([flat[:, mask.reshape(-1)].mean(1) for mask in masks.values()], axis=1)


def _residual(values: np.ndarray, covariate: np.ndarray) -> np.ndarray:
    design = np.column_stack([np.ones_like(covariate), covariate])
    coefficients, *_ = np.linalg.lstsq(design, values, rcond=None)
    return values - design @ coefficients


def partial_r(x: np.ndarray, y: np.ndarray, covariate: np.ndarray) -> float:
    """Correlation of ``x`` and ``y`` once a linear fit on ``covariate`` is removed from each."""
    return float(np.corrcoef(_residual(x, covariate), _residual(y, covariate))[0, 1])


def _auc_draws(
    features: dict[str, np.ndarray], is_ad: np.ndarray, labels: int, draws: int, seed: int
) -> dict[str, np.ndarray]:
    """Held-out AUC per feature set over ``draws`` balanced labelled sets of ``labels`` subjects."""
    rng = np.random.default_rng(seed)
    ad, cn = np.flatnonzero(is_ad), np.flatnonzero(~is_ad)
    out: dict[str, list[float]] = {name: [] for name in features}
    for _ in range(draws):
        train = np.concatenate(
            [rng.choice(ad, labels // 2, replace=False), rng.choice(cn, labels // 2, replace=False)]
        )
        test = np.setdiff1d(np.arange(len(is_ad)), train)
        for name, x in features.items():
            model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
            model.fit(x[train], is_ad[train])
            out[name].append(roc_auc_score(is_ad[test], model.decision_function(x[test])))
    return {name: np.asarray(values) for name, values in out.items()}


def measure(cohort: PhantomCohort, draws: int, seed: int) -> dict[str, Any]:
    """Every figure of the module docstring for one generated cohort."""
    table = cohort.participants
    masks = region_masks(cohort.affine, cohort.mri.shape[1:], cohort.brain_mask, REGIONS)
    mri = regional_means(np.stack([normalise_mri(v, cohort.brain_mask) for v in cohort.mri]), masks)
    pet = regional_means(cohort.pet, masks)
    expected = regional_means(cohort.pet_expected, masks)
    columns = {name: k for k, name in enumerate(masks)}
    disease = [columns[name] for name in DISEASE_REGIONS]
    share = float(np.var(pet[:, disease] - expected[:, disease], 0).sum() / np.var(pet[:, disease], 0).sum())

    score_columns = [columns[name] for name in SCORE_REGIONS]
    score, expected_score = pet[:, score_columns].mean(1), expected[:, score_columns].mean(1)
    severity = table.severity_structural.to_numpy()
    order = np.random.default_rng(seed).permutation(len(table))
    test = order[max(RIDGE_SIZES) :]
    ridge: dict[str, float] = {}
    for size in RIDGE_SIZES:
        model = RidgeCV(alphas=RIDGE_ALPHAS).fit(mri[order[:size]], score[order[:size]])
        predicted = model.predict(mri[test])
        ridge[f"r_{size}"] = float(np.corrcoef(predicted, score[test])[0, 1])
        ridge[f"partial_r_{size}"] = partial_r(predicted, score[test], severity[test])
    ridge["partial_r_oracle"] = partial_r(expected_score[test], score[test], severity[test])

    ad_cn = table.diagnosis.isin(["AD", "CN"]).to_numpy()
    is_ad = (table.diagnosis == "AD").to_numpy()[ad_cn]
    brain = cohort.brain_mask.reshape(-1)
    voxels = cohort.pet_expected.reshape(len(table), -1)[ad_cn][:, brain].astype(np.float64)
    class_means = np.where(is_ad[:, None], voxels[is_ad].mean(0), voxels[~is_ad].mean(0))
    diagnostic = float(((class_means - voxels.mean(0)) ** 2).sum() / ((voxels - voxels.mean(0)) ** 2).sum())

    features = {
        "mri": mri[ad_cn],
        "mri+expected": np.hstack([mri, expected])[ad_cn],
        "mri+pet": np.hstack([mri, pet])[ad_cn],
    }
    aucs = {}
    for labels in (*LABEL_COUNTS, int(ad_cn.sum()) // 2):
        result = _auc_draws(features, is_ad, labels, draws, seed + labels)
        aucs[str(labels)] = {
            "auc_mri": float(result["mri"].mean()),
            "auc_mri_expected": float(result["mri+expected"].mean()),
            "auc_mri_pet": float(result["mri+pet"].mean()),
            "oracle_gain": float((result["mri+expected"] - result["mri"]).mean()),
            "pet_gain": float((result["mri+pet"] - result["mri"]).mean()),
        }
    return {"pet_specific_share": share, "diagnostic_share": diagnostic, "ridge": ridge, "aucs": aucs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario", action="append", help="scenario to measure (repeatable; default: MEASURED)"
    )
    parser.add_argument("--subjects", type=int, default=800, help="cohort size (ridge tests on all past 500)")
    parser.add_argument("--seed", type=int, default=1, help="phantom seed (and the draws' seed)")
    parser.add_argument("--resolution", type=float, default=8.0, help="voxel size in mm")
    parser.add_argument("--draws", type=int, default=40, help="labelled sets drawn per label count")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.subjects <= max(RIDGE_SIZES) + 50:
        parser.error(f"--subjects must exceed {max(RIDGE_SIZES) + 50}, so the ridge has subjects to test on")
    results = {}
    for scenario in args.scenario or MEASURED:
        settings = phantom_settings(
            {"scenario": scenario}, subjects=args.subjects, resolution_mm=args.resolution, seed=args.seed
        )
        results[scenario] = measure(generate_phantom(settings), args.draws, args.seed)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    title = f"{args.subjects} subjects, {args.resolution:g} mm, phantom seed {args.seed}, {args.draws} draws"
    table = Table(title=title)
    for column in ("scenario", "PET-spec. share", "diag. share", "ridge r 60/500", "partial r 60/500 (E)"):
        table.add_column(column)
    for labels in results[next(iter(results))]["aucs"]:
        table.add_column(f"L={labels}: AUC MRI / +E / +PET")
    for scenario, r in results.items():
        ridge = r["ridge"]
        cells = [
            scenario,
            f"{r['pet_specific_share']:.3f}",
            f"{r['diagnostic_share']:.3f}",
            f"{ridge['r_60']:.2f} / {ridge['r_500']:.2f}",
            f"{ridge['partial_r_60']:.2f} / {ridge['partial_r_500']:.2f} ({ridge['partial_r_oracle']:.2f})",
        ]
        for a in r["aucs"].values():
            cells.append(f"{a['auc_mri']:.3f} / {a['oracle_gain']:+.3f} / {a['pet_gain']:+.3f}")
        table.add_row(*cells)
    console.print(table)


if __name__ == "__main__":
    main()
