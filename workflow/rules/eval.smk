# One evaluation job per model x benchmark x shard, then one merge per model x benchmark.


rule eval:
    input:
        config="results/eval/{sid}/config.yaml",
        model=eval_model_input,
    output:
        generations="results/eval/{sid}/shard-{i}/generations.parquet",
        metrics="results/eval/{sid}/shard-{i}/metrics.json",
        manifest="results/eval/{sid}/shard-{i}/manifest.json",
    log:
        "results/eval/{sid}/logs/eval-{i}.log",
    benchmark:
        "results/eval/{sid}/logs/eval-{i}.benchmark.tsv"
    conda:
        "../../envs/vllm.yaml"
    resources:
        cpus_per_task=2,
        mem_mb=16000,
        runtime=720,
        gpu=engine_gpus("eval"),
    params:
        model=lambda wildcards: stage("eval", wildcards).config["model_dir"],
        benchmark=lambda wildcards: stage("eval", wildcards).config["benchmark"],
        upstream=upstream_flags("eval"),
    shell:
        "python -m retro_search.cli --manifest {output.manifest} {params.upstream} eval --model {params.model}"
        " --benchmark {params.benchmark} --output-dir results/eval/{wildcards.sid}/shard-{wildcards.i}"
        " --config {input.config} eval.shard={wildcards.i} > {log} 2>&1"


rule eval_merge:
    input:
        config="results/eval/{sid}/config.yaml",
        generations=eval_shards("generations.parquet"),
        metrics=eval_shards("metrics.json"),
    output:
        generations="results/eval/{sid}/generations.parquet",
        metrics="results/eval/{sid}/metrics.json",
        manifest="results/eval/{sid}/manifest.json",
    log:
        "results/eval/{sid}/logs/eval_merge.log",
    benchmark:
        "results/eval/{sid}/logs/eval_merge.benchmark.tsv"
    conda:
        "../../envs/core.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        upstream=upstream_flags("eval"),
    shell:
        "python -m retro_search.cli --manifest {output.manifest} {params.upstream} eval-merge"
        " --inputs {input.generations} --metrics {input.metrics}"
        " --generations {output.generations} --output {output.metrics}"
        " --config {input.config} > {log} 2>&1"
