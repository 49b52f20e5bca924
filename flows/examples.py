"""Example datasets for ``sagepipe data example``: one per kind of problem and of mess.

Each matches a settings file in ``deployments/settings/`` (same name), so

    sagepipe data example iris -o iris.csv
    sagepipe data push iris.csv --env iris
    sagepipe run --env iris

runs that example end to end. ``churn`` is deliberately messy: semicolon-separated, empty
cells, text categories, an ID column, a constant column, an empty column, "?" for missing,
and rows without a label; ``churn-parquet`` is the same table as Parquet.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["EXAMPLES", "write_example"]


def breast_cancer() -> pd.DataFrame:
    """scikit-learn's breast cancer data, snake_case columns, a 0/1 ``target`` (binary)."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    return frame


def iris() -> pd.DataFrame:
    """scikit-learn's iris with the species as text (multiclass, text labels)."""
    from sklearn.datasets import load_iris

    data = load_iris(as_frame=True)
    frame = data.frame.drop(columns="target")
    frame.columns = [c.removesuffix(" (cm)").replace(" ", "_") for c in frame.columns]
    frame["species"] = np.asarray(data.target_names)[data.target]
    return frame


def diabetes() -> pd.DataFrame:
    """scikit-learn's diabetes data: disease progression after a year (regression)."""
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame
    return frame.rename(columns={"target": "progression"})


def churn(rows: int = 2400, seed: int = 7) -> pd.DataFrame:
    """Made-up customer churn, messy the way exports are (binary, ``churned`` yes/no)."""
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "plus", "premium"], rows, p=[0.5, 0.3, 0.2])
    region = rng.choice(["north", "south", "east", "west"], rows)
    tenure = rng.integers(1, 72, rows).astype(float)
    charges = np.round(20 + 15 * (plan == "plus") + 40 * (plan == "premium")
                       + rng.normal(0, 5, rows), 2)
    calls = rng.poisson(1.5, rows)
    score = (-1.2 + 0.7 * calls - 0.04 * tenure + 0.02 * (charges - 40)
             + 0.8 * (region == "south") + rng.normal(0, 0.6, rows))
    churned = np.where(score > 0, "yes", "no").astype(object)
    frame = pd.DataFrame({
        "customer_id": [f"C{100000 + i}" for i in range(rows)],
        "plan": plan, "region": region.astype(object), "tenure_months": tenure,
        "monthly_charges": charges.astype(object), "support_calls": calls,
        "country": "NL", "notes": None, "churned": churned})
    frame.loc[rng.random(rows) < 0.08, "region"] = None
    frame.loc[rng.random(rows) < 0.05, "tenure_months"] = np.nan
    frame.loc[rng.random(rows) < 0.03, "monthly_charges"] = "?"
    frame.loc[rng.random(rows) < 0.01, "churned"] = None
    return frame


def _csv(frame: Callable[[], pd.DataFrame], sep: str = ",") -> Callable[[Path], None]:
    return lambda path: frame().to_csv(path, index=False, sep=sep)


def _parquet(path: Path) -> None:
    frame = churn()
    frame["monthly_charges"] = frame["monthly_charges"].astype(str)
    frame.to_parquet(path, index=False)


EXAMPLES: dict[str, tuple[str, str, Callable[[Path], None]]] = {
    # name: (file name, what it is, writer)
    "breast-cancer": ("breast_cancer.csv", "binary, 30 numeric features", _csv(breast_cancer)),
    "iris": ("iris.csv", "multiclass, text labels", _csv(iris)),
    "diabetes": ("diabetes.csv", "regression", _csv(diabetes)),
    "churn": ("churn.csv", "binary, text labels; semicolons, empty cells, categories, an ID",
              _csv(churn, sep=";")),
    "churn-parquet": ("churn.parquet", "the churn table as Parquet", _parquet),
}


def write_example(name: str, path: Path) -> Path:
    """Write example ``name`` to ``path`` (a folder gets the example's own file name)."""
    file_name, _, write = EXAMPLES[name]
    if path.is_dir():
        path = path / file_name
    write(path)
    return path
