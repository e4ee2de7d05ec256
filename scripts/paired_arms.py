"""Two variants of an experiment compared on any metric, paired by seed: the verdict, mean and 95% CI.

python scripts/paired_arms.py --experiment defaults_vs_tuned --a tuned --b defaults --metric val/best_mAP
"""

import argparse
from pathlib import Path

from mlflow import MlflowClient

from hashtune.report.stats import claim_verdict
from hashtune.tracking import TAG, default_tracking_uri, find_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--a", required=True, help="the variant expected higher")
    parser.add_argument("--b", required=True)
    parser.add_argument("--metric", default="val/best_mAP")
    parser.add_argument("--delta", type=float, default=0.02)
    parser.add_argument("--mlflow-uri", default=default_tracking_uri(Path("results")))
    args = parser.parse_args()
    client = MlflowClient(args.mlflow_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise SystemExit(f"paired_arms: no experiment {args.experiment!r} at {args.mlflow_uri}")
    values: dict[str, dict[str, float]] = {args.a: {}, args.b: {}}
    for run in find_runs(client, experiment.experiment_id, f"tags.`{TAG}status` = 'finished'"):
        variant = run.data.tags.get(f"{TAG}variant")
        if variant in values:  # paired by data and training seed, so crossed designs pair like with like
            values[variant][f"{run.data.params['data.seed']}/{run.data.params['train.seed']}"] = run.data.metrics[
                args.metric
            ]
    seeds = sorted(set(values[args.a]) & set(values[args.b]))
    verdict = claim_verdict([values[args.a][s] - values[args.b][s] for s in seeds], delta=args.delta)
    print(
        f"{args.a} - {args.b} on {args.metric}, paired over data/train seeds {seeds}: {verdict.verdict} "
        f"({verdict.difference.mean:+.4f}, 95% CI [{verdict.difference.low:+.4f}, {verdict.difference.high:+.4f}], "
        f"n={verdict.n})"
    )


if __name__ == "__main__":
    main()
