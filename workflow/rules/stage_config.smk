# Every stage's resolved config, written beside its artifacts before the stage runs.


rule stage_config:
    output:
        "results/{kind}/{sid}/config.yaml",
    log:
        "results/{kind}/{sid}/logs/config.log",
    benchmark:
        "results/{kind}/{sid}/logs/config.benchmark.tsv"
    conda:
        "../../envs/core.yaml"
    resources:
        runtime=5,
    params:
        config=stage_config_json,
    shell:
        "python -m retro_search.cli write-config {output} --json {params.config:q} > {log} 2>&1"
