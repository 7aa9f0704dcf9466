# Every stage's resolved config, written beside its artifacts before the stage runs: config.yaml
# (what makes the output; the stage's hash covers it) and runtime.yaml (how the job runs:
# runtime.RUNTIME_KEYS). Rules read runtime.yaml as an `ancient` input: a new runtime value
# rewrites it without making the stage rerun. Both are local rules run inside Snakemake; their
# one-line message stands in for Snakemake's block of inputs, outputs and resources: half of a
# run's jobs are these, and the block would bury the stages' own.


rule stage_config:
    output:
        "results/{kind}/{sid}/config.yaml",
    log:
        "results/{kind}/{sid}/logs/config.log",
    params:
        config=stage_config_json,
    message:
        "stage config: {output}"
    run:
        write_stage_file(output[0], params.config, log[0])


rule stage_runtime:
    output:
        "results/{kind}/{sid}/runtime.yaml",
    log:
        "results/{kind}/{sid}/logs/runtime.log",
    params:
        runtime=stage_runtime_json,
    message:
        "runtime settings: {output}"
    run:
        write_stage_file(output[0], params.runtime, log[0])
