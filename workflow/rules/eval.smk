# One evaluation job per model x shard index: it loads the engine once and covers that shard of
# every benchmark with enough shards (all benchmarks in shard 0). A benchmark in one shard is read
# from that job's folder; one in several is merged by eval_merge (pipeline.eval_benchmark_dir).


rule eval:
    input:
        config="results/eval/{sid}/config.yaml",
        runtime_yaml=ancient("results/eval/{sid}/runtime.yaml"),  # read with config.yaml, not a reason to rerun
        model=eval_model_input,
        heldout=task_files("eval", "heldout.jsonl"),  # the benchmark arith, when evaluated
        benchmarks=local_files("eval"),  # local benchmark copies
    output:
        # one subfolder per benchmark: generations.parquet, metrics.json
        shard=directory("results/eval/{sid}/shard-{i}"),
        manifest="results/eval/{sid}/shard-{i}.manifest.json",
    log:
        "results/eval/{sid}/logs/eval-{i}.log",
    benchmark:
        "results/eval/{sid}/logs/eval-{i}.benchmark.tsv"
    conda:
        "../../envs/vllm.yaml"
    threads: job_resource("eval", "cpus")
    resources:
        cpus_per_task=job_resource("eval", "cpus"),
        mem_mb=job_resource("eval", "mem_mb"),
        # every benchmark's shard in one job; a killed job resumes at its first unsaved benchmark
        runtime=job_resource("eval", "runtime"),
        gpu=engine_gpus("eval"),
        slurm_partition=engine_partition("eval"),
    params:
        upstream=upstream_flags("eval"),
    shell:
        "python -m retro_search.cli --manifest {output.manifest} {params.upstream} eval"
        " --output-dir {output.shard} --config {input.config} eval.shard={wildcards.i} > {log} 2>&1"


rule eval_merge:
    input:
        config="results/eval/{sid}/config.yaml",
        shards=eval_shard_dirs,
    output:
        generations="results/eval/{sid}/{bench}/generations.parquet",
        metrics="results/eval/{sid}/{bench}/metrics.json",
        manifest="results/eval/{sid}/{bench}.manifest.json",
    log:
        "results/eval/{sid}/logs/eval_merge-{bench}.log",
    benchmark:
        "results/eval/{sid}/logs/eval_merge-{bench}.benchmark.tsv"
    conda:
        "../../envs/core.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        # the benchmark's files inside the shard folders (a rule cannot name them as inputs)
        generations=eval_shard_files("generations.parquet"),
        metrics=eval_shard_files("metrics.json"),
        upstream=upstream_flags("eval"),
    shell:
        "python -m retro_search.cli --manifest {output.manifest} {params.upstream} eval-merge"
        " --inputs {params.generations} --metrics {params.metrics}"
        " --generations {output.generations} --output {output.metrics}"
        " --config {input.config} > {log} 2>&1"
