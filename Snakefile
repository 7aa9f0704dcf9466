# Retro-Search pipeline: raw traces (or questions -> sample) -> prepare -> shard -> retro_search
# -> merge -> sft_data -> sft -> eval -> summary. Experiments are composed with Hydra from
# config/ (see config/config.yaml); every stage writes to results/<stage>/<name>-<hash>/ with its
# config and manifest.
#
#   snakemake --cores all                                       # the demo experiment
#   snakemake --cores all --config experiment=weak_to_strong_r1_distill_32b
#   snakemake --cores all --config overrides="search.rollouts=1,2,4"
#   snakemake --profile profiles/slurm --config experiment=self_improve_r1_distill_7b


include: "workflow/rules/common.smk"
include: "workflow/rules/stage_config.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/sft.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/report.smk"


# The front page of `snakemake --report`: the experiment's headline results.
report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        all_targets(),
