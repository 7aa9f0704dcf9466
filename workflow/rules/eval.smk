# One evaluation job per model x benchmark.


def eval_model_input(wildcards):
    """The evaluated model's folder when it is a file (fine-tuned or tiny), else nothing."""
    model_dir = stage("eval", wildcards).config["model_dir"]
    return [model_dir] if model_dir.startswith("results/") else []


rule eval:
    input:
        config="results/eval/{sid}/config.yaml",
        model=eval_model_input,
    output:
        generations="results/eval/{sid}/generations.parquet",
        metrics="results/eval/{sid}/metrics.json",
        manifest="results/eval/{sid}/manifest.json",
    params:
        model=lambda wildcards: stage("eval", wildcards).config["model_dir"],
        benchmark=lambda wildcards: stage("eval", wildcards).config["benchmark"],
        upstream=upstream_flags("eval"),
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
    shell:
        "{RS} --manifest {output.manifest} {params.upstream} eval --model {params.model}"
        " --benchmark {params.benchmark} --output-dir results/eval/{wildcards.sid}"
        " --config {input.config} > {log} 2>&1"
