"""Entry point of a run: `python -m cluster.launch --config ...` (and `bgpo train`).

Connects to the Ray cluster named by RAY_ADDRESS (set by `ray job submit`, or by the user) or
starts a local one, then runs the loop inside the named `controller` actor in the run's namespace
and waits for it. Exit code 0 on success, 1 on failure (the error is printed, never swallowed).
"""

from __future__ import annotations

import argparse
import json
import sys

import ray

from cluster.config import RunConfig, dump_config, load_config
from cluster.connect import connect
from cluster.groups import namespace_of, placement_options


def train(config: RunConfig, resume: str | None = None) -> dict:
    """Run the whole job in the `controller` actor; returns its summary."""
    from cluster.controller import Controller

    connect(config)
    controller = (
        ray.remote(Controller)
        .options(name="controller", namespace=namespace_of(config.run_name), num_cpus=0,
                 max_concurrency=4, max_restarts=0, **placement_options(config.cluster.controller))
        .remote(config, resume)
    )
    try:
        return ray.get(controller.run.remote())
    finally:
        # The controller owns every other actor of the run: killing it releases them and their names.
        ray.kill(controller)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="bgpo train", description=__doc__)
    parser.add_argument("--config", default=None, help="YAML file or preset name in configs/ (default: the embedded tiny run)")
    parser.add_argument("--resume", default=None, help="'auto' (latest checkpoint of this run) or a checkpoint folder")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. learner.lr=1e-6 rollout.num_workers=4")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    try:
        summary = train(config, resume=args.resume)
    except Exception as err:  # report and exit non-zero; the traceback is in the actor's log
        print(f"error: run failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(json.dumps({k: summary[k] for k in ("before", "after", "steps", "checkpoint") if k in summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
