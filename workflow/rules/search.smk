# Retro-Search, one job per shard, then one merged dataset with its statistics.


rule retro_search:
    input:
        config="results/search/{sid}/config.yaml",
        runtime_yaml=ancient("results/search/{sid}/runtime.yaml"),  # read with config.yaml, not a reason to rerun
        shard=search_shard,
        model=model_inputs("search"),
    output:
        revised="results/search/{sid}/shard-{i}.jsonl",
        rollouts="results/search/{sid}/shard-{i}.rollouts.jsonl",
        manifest="results/search/{sid}/shard-{i}.manifest.json",
    log:
        "results/search/{sid}/logs/shard-{i}.log",
    benchmark:
        "results/search/{sid}/logs/shard-{i}.benchmark.tsv"
    conda:
        "../../envs/vllm.yaml"
    threads: job_resource("search", "cpus")
    resources:
        cpus_per_task=job_resource("search", "cpus"),
        mem_mb=job_resource("search", "mem_mb"),
        runtime=job_resource("search", "runtime"),
        gpu=engine_gpus("search"),
        slurm_partition=engine_partition("search"),
    params:
        upstream=upstream_flags("search"),
    shell:
        "python -m retro_search.cli --manifest {output.manifest} {params.upstream} search --input {input.shard}"
        " --output {output.revised} --log {output.rollouts} --config {input.config}"
        " > {log} 2>&1"


rule merge:
    input:
        config="results/merge/{sid}/config.yaml",
        shards=merge_inputs(".jsonl"),
        rollouts=merge_inputs(".rollouts.jsonl"),
    output:
        revised="results/merge/{sid}/revised.jsonl",
        rollouts="results/merge/{sid}/rollouts.jsonl",
        stats="results/merge/{sid}/stats.json",
        manifest="results/merge/{sid}/manifest.json",
    log:
        "results/merge/{sid}/logs/merge.log",
    benchmark:
        "results/merge/{sid}/logs/merge.benchmark.tsv"
    conda:
        "../../envs/core.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        upstream=upstream_flags("merge"),
    shell:
        "python -m retro_search.cli --manifest {output.manifest} {params.upstream} merge --inputs {input.shards}"
        " --rollouts {input.rollouts} --output {output.revised} --rollout-log {output.rollouts}"
        " --stats {output.stats} > {log} 2>&1"
