# Chat-formatted training sets per arm, and supervised fine-tuning of the student per arm.


rule sft_data:
    input:
        config="results/sft_data/{sid}/config.yaml",
        traces=sft_data_input,
        model=model_inputs("sft_data"),
    output:
        train="results/sft_data/{sid}/train.jsonl",
        dropped="results/sft_data/{sid}/train.dropped.jsonl",
        manifest="results/sft_data/{sid}/manifest.json",
    log:
        "results/sft_data/{sid}/logs/sft_data.log",
    benchmark:
        "results/sft_data/{sid}/logs/sft_data.benchmark.tsv"
    conda:
        "../../envs/train.yaml"
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        upstream=upstream_flags("sft_data"),
    shell:
        "python -m retro_search.cli --manifest {output.manifest} {params.upstream} sft-data --input {input.traces}"
        " --output {output.train} --dropped {output.dropped} --config {input.config} > {log} 2>&1"


rule sft:
    input:
        config="results/sft/{sid}/config.yaml",
        runtime_yaml=ancient("results/sft/{sid}/runtime.yaml"),  # read with config.yaml, not a reason to rerun
        train=sft_train,
        model=model_inputs("sft"),
    output:
        model=directory("results/sft/{sid}/model"),
        metrics="results/sft/{sid}/train_metrics.json",
        manifest="results/sft/{sid}/manifest.json",
    log:
        "results/sft/{sid}/logs/sft.log",
    benchmark:
        "results/sft/{sid}/logs/sft.benchmark.tsv"
    conda:
        "../../envs/train.yaml"
    threads: job_resource("sft", "cpus")
    resources:
        cpus_per_task=job_resource("sft", "cpus"),
        mem_mb=job_resource("sft", "mem_mb"),
        runtime=job_resource("sft", "runtime"),
        gpu=sft_gpus,  # one training process each (retro-search sft reads sft.gpus)
        slurm_partition=sft_partition,
    params:
        upstream=upstream_flags("sft"),
    shell:
        "python -m retro_search.cli --manifest {output.manifest} {params.upstream} sft --train {input.train}"
        " --output-dir results/sft/{wildcards.sid} --config {input.config}"
        " --processes {resources.gpu} > {log} 2>&1"
