# One evaluation job per model x benchmark.


rule eval:
    input:
        config="results/eval/{sid}/config.yaml",
        model=eval_model_input,
    output:
        generations="results/eval/{sid}/generations.parquet",
        metrics="results/eval/{sid}/metrics.json",
        manifest="results/eval/{sid}/manifest.json",
    log:
        "results/eval/{sid}/logs/eval.log",
    benchmark:
        "results/eval/{sid}/logs/eval.benchmark.tsv"
    conda:
        "../../envs/vllm.yaml"
    resources:
        cpus_per_task=2,
        mem_mb=16000,
        runtime=720,
    params:
        model=lambda wildcards: stage("eval", wildcards).config["model_dir"],
        benchmark=lambda wildcards: stage("eval", wildcards).config["benchmark"],
        upstream=upstream_flags("eval"),
    shell:
        "python -m retro_search.cli --manifest {output.manifest} {params.upstream} eval --model {params.model}"
        " --benchmark {params.benchmark} --output-dir results/eval/{wildcards.sid}"
        " --config {input.config} > {log} 2>&1"
