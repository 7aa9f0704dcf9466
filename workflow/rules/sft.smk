# Chat-formatted training sets per arm, and supervised fine-tuning of the student per arm.


def sft_data_input(wildcards):
    source = stage("sft_data", wildcards).upstream[0]  # prepare (original) or merge (retro_search)
    return source.path("traces.jsonl" if source.kind == "prepare" else "revised.jsonl")


def sft_train(wildcards):
    return upstream_of("sft", "sft_data", wildcards).path("train.jsonl")


rule sft_data:
    input:
        config="results/sft_data/{sid}/config.yaml",
        traces=sft_data_input,
        model=model_inputs("sft_data"),
    output:
        train="results/sft_data/{sid}/train.jsonl",
        manifest="results/sft_data/{sid}/manifest.json",
    params:
        upstream=upstream_flags("sft_data"),
    log:
        "results/sft_data/{sid}/logs/sft_data.log",
    benchmark:
        "results/sft_data/{sid}/logs/sft_data.benchmark.tsv"
    conda:
        "../../envs/train.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "{RS} --manifest {output.manifest} {params.upstream} sft-data --input {input.traces}"
        " --output {output.train} --config {input.config} > {log} 2>&1"


rule sft:
    input:
        config="results/sft/{sid}/config.yaml",
        train=sft_train,
        model=model_inputs("sft"),
    output:
        model=directory("results/sft/{sid}/model"),
        metrics="results/sft/{sid}/train_metrics.json",
        manifest="results/sft/{sid}/manifest.json",
    params:
        upstream=upstream_flags("sft"),
    log:
        "results/sft/{sid}/logs/sft.log",
    benchmark:
        "results/sft/{sid}/logs/sft.benchmark.tsv"
    conda:
        "../../envs/train.yaml"
    resources:
        cpus_per_task=2,
        mem_mb=16000,
        runtime=2880,
    shell:
        "{RS} --manifest {output.manifest} {params.upstream} sft --train {input.train}"
        " --output-dir results/sft/{wildcards.sid} --config {input.config} > {log} 2>&1"
