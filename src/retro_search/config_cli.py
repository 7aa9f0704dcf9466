"""`retro-search config show`: the resolved config of an experiment, or of one of its stages, as
the workflow plans it (`pipeline.build_plan` over the Hydra root, the call the Snakefile makes).

A bad override is refused here in the one line `snakemake -n` would print, so a value can be
tried without Snakemake.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Print the resolved config (YAML) of an experiment, composed by Hydra from the config folder as
`snakemake --config experiment=E overrides="..."` composes it: the experiment's groups over the
sections' schemas, then the overrides. With --stage, print instead the config.yaml the workflow
writes for that stage (what its hash covers), headed by the stage's folder; --runtime prints its
runtime.yaml (how the job runs, not hashed). A comma-separated override is a sweep: one document
per experiment of it. A bad key or value is refused in one line, as `snakemake -n` refuses it."""

EPILOG = """\
Examples:
  retro-search config show                                  # the demo experiment
  retro-search config show --stage search search.rollouts=2
  retro-search config show --experiment self_improve_r1_distill_7b --stage eval:base
  retro-search config show --stage sft --runtime            # every sft stage's runtime.yaml"""


def config_root(config_dir: str | None) -> Path:
    """The Hydra root: --config-dir, else the checkout's config/ (as the Snakefile reads it)."""
    from retro_search.config import CHECKOUT

    root = Path(config_dir) if config_dir else CHECKOUT / "config"
    if not root.is_dir():
        raise ValueError(f"--config-dir {root}: no such folder" if config_dir else
                         f"no config folder at {root} (this installation is not a checkout): "
                         "give --config-dir DIR, the config/ folder of a checkout")
    return root


def check_experiment(root: Path, experiment: str) -> None:
    known = sorted(p.stem for p in (root / "experiment").glob("*.yaml"))
    if experiment not in known:
        from retro_search.config import close_match_hint

        raise ValueError(f"--experiment {experiment}: no {root / 'experiment' / experiment}.yaml"
                         f"{close_match_hint(experiment, known)}")


def cmd_config_show(args: argparse.Namespace) -> int:
    import yaml

    from retro_search.pipeline import build_plan

    root = config_root(args.config_dir)
    check_experiment(root, args.experiment)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ValueError(f"override {bad[0]!r} is not KEY=VALUE (e.g. search.rollouts=2)")
    if args.runtime and not args.stage:
        raise ValueError("--runtime needs --stage (runtime.yaml is a stage's)")
    try:
        plan = build_plan(root, [args.experiment], args.overrides)
    except ValueError as err:  # the plan's refusals are one line; Hydra's may run on
        raise ValueError(str(err).splitlines()[0]) from err
    documents = []
    for experiment in plan.experiments:
        if not args.stage:
            documents.append(f"# experiment {experiment.name}\n"
                             + yaml.safe_dump(experiment.config, sort_keys=False,
                                              allow_unicode=True))
            continue
        chosen = [(role, stage) for role, stage in experiment.stages.items()
                  if args.stage in (role, stage.kind)]
        if not chosen:
            raise ValueError(f"--stage {args.stage}: experiment {experiment.name} has no such "
                             f"stage; its stages: {', '.join(experiment.stages)}")
        for role, stage in chosen:
            name, values = ("runtime.yaml", stage.runtime) if args.runtime else \
                ("config.yaml", stage.config)
            # As the workflow writes it (runtime.write_stage_file): keys sorted.
            documents.append(f"# {role}: {stage.dir}/{name}\n"
                             + yaml.safe_dump(values, sort_keys=True, allow_unicode=True))
    sys.stdout.write("---\n".join(documents))
    return 0


def register(sub) -> None:
    p = sub.add_parser("config", help="show the resolved config of an experiment or a stage",
                       description="Inspect the pipeline's configuration. See `retro-search "
                       "config show -h`.")
    actions = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="print the resolved config of an experiment or stage",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    show.add_argument("--experiment", default="demo",
                      help="an experiment of the config folder's experiment/ group (default: "
                           "demo)")
    show.add_argument("--stage", default=None, metavar="KIND",
                      help="a stage kind (tiny_model, task, sample, prepare, shard, search, "
                           "merge, sft_data, sft, eval, summary: every stage of it) or role "
                           "(sft:original, eval:base, ...: that one)")
    show.add_argument("--runtime", action="store_true",
                      help="with --stage: the stage's runtime.yaml instead of its config.yaml")
    show.add_argument("--config-dir", default=None, metavar="DIR",
                      help="the Hydra root (default: the checkout's config/)")
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                      help="Hydra overrides, as in snakemake --config overrides=\"...\"")
    show.set_defaults(func=cmd_config_show)
