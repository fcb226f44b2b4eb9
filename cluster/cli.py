"""`bgpo`: the console script. Subcommands: train, eval, scale, status, serve-rewards."""

from __future__ import annotations

import argparse
import sys


def _control(args) -> int:
    import ray

    from cluster.groups import namespace_of

    ray.init(address=args.address or "auto", namespace=namespace_of(args.run), log_to_driver=False)
    controller = ray.get_actor("controller", namespace=namespace_of(args.run))
    if getattr(args, "stop", False):
        print(ray.get(controller.stop.remote()))
    elif args.rollout_workers is not None:
        print(ray.get(controller.scale.remote(args.rollout_workers)))
    print(ray.get(controller.status.remote()))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="bgpo", description="BGPO: RL for diffusion LLMs on Ray")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("train", help="run a training job (default: the embedded tiny run)", add_help=False)
    sub.add_parser("eval", help="evaluate a checkpoint on a task (paper settings; see bgpo eval --help)",
                   add_help=False)
    scale = sub.add_parser("scale", help="resize the rollout pool of a running run")
    scale.add_argument("--run", required=True, help="run_name of the running run")
    scale.add_argument("--rollout-workers", type=int, default=None)
    scale.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or auto)")
    status = sub.add_parser("status", help="step, version and rollout workers of a running run")
    status.add_argument("--run", required=True)
    status.add_argument("--address", default=None)
    stop = sub.add_parser("stop", help="end a running run after its current step (with a checkpoint)")
    stop.add_argument("--run", required=True)
    stop.add_argument("--address", default=None)
    sub.add_parser("serve-rewards", help="run the reward verification service (FastAPI)", add_help=False)
    if not argv:
        argv = ["train"]
    if argv[0] == "train":
        from cluster.launch import main as train_main

        return train_main(argv[1:])
    if argv[0] == "eval":
        from cluster.evaluate import main as eval_main

        return eval_main(argv[1:])
    if argv[0] == "serve-rewards":
        from rewards.service import main as serve_main

        return serve_main(argv[1:]) or 0
    args = parser.parse_args(argv)
    if args.command in ("scale", "status", "stop"):
        args.stop = args.command == "stop"
        if args.command != "scale":
            args.rollout_workers = None
        return _control(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
