"""Run an experiment from Python, then read its results back from the MLflow store.

python examples/api_quickstart.py [--experiment NAME] [--tracking-uri URI] [--epochs N]
"""

from __future__ import annotations

import argparse

from mlflow import MlflowClient

import advbayes
from advbayes.tracking import default_tracking_uri


def main() -> None:
    """Run an experiment, print its table, then print what MLflow stored for it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="quickstart", help="registry experiment to run")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: ./mlflow.db)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    result = advbayes.run(args.experiment, tracking_uri=args.tracking_uri, epochs=args.epochs)
    print(result.format())

    client = MlflowClient(args.tracking_uri or default_tracking_uri())
    parent = client.get_run(result.run_id)
    print(f"\nparent run {parent.info.run_id}: {parent.info.status}")
    print("tags:", {k: v for k, v in parent.data.tags.items() if k.startswith("advbayes.")})
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    for child in children:
        print(f"child run {child.info.run_name}: {child.data.metrics}")
    print("artifacts:", [a.path for a in client.list_artifacts(parent.info.run_id)])


if __name__ == "__main__":
    main()
