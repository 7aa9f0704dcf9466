# The tiny local model, questions -> sampled traces (when data.sample is set), raw or sampled
# traces -> prepared pool -> shards.


rule tiny_model:
    input:
        config="results/tiny_model/{sid}/config.yaml",
    output:
        model=directory("results/tiny_model/{sid}/model"),
        manifest="results/tiny_model/{sid}/manifest.json",
    log:
        "results/tiny_model/{sid}/logs/tiny_model.log",
    benchmark:
        "results/tiny_model/{sid}/logs/tiny_model.benchmark.tsv"
    conda:
        "../../envs/core.yaml"
    resources:
        cpus_per_task=1,
        mem_mb=2000,
        runtime=15,
    shell:
        "python -m retro_search.cli --manifest {output.manifest} tiny-model {output.model} --config {input.config}"
        " > {log} 2>&1"


rule task:
    input:
        config="results/task/{sid}/config.yaml",
    output:
        teacher="results/task/{sid}/teacher_records.jsonl",
        sample="results/task/{sid}/sample.jsonl",
        heldout="results/task/{sid}/heldout.jsonl",
        teacher_traces="results/task/{sid}/teacher_traces.jsonl",
        teacher_questions="results/task/{sid}/teacher.jsonl",
        task="results/task/{sid}/task.json",
        manifest="results/task/{sid}/manifest.json",
    log:
        "results/task/{sid}/logs/task.log",
    benchmark:
        "results/task/{sid}/logs/task.benchmark.tsv"
    conda:
        "../../envs/core.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m retro_search.cli --manifest {output.manifest} task results/task/{wildcards.sid}"
        " --teacher-records {output.teacher} --sample {output.sample} --heldout {output.heldout}"
        " --teacher-traces {output.teacher_traces} --teacher-questions {output.teacher_questions}"
        " --task-json {output.task} --config {input.config} > {log} 2>&1"


rule sample:
    input:
        config="results/sample/{sid}/config.yaml",
        runtime_yaml=ancient("results/sample/{sid}/runtime.yaml"),  # read with config.yaml, not a reason to rerun
        questions=sample_questions,
        model=model_inputs("sample"),
    output:
        samples="results/sample/{sid}/shard-{i}.jsonl",
        quarantine="results/sample/{sid}/shard-{i}.quarantine.jsonl",
        manifest="results/sample/{sid}/shard-{i}.manifest.json",
    log:
        "results/sample/{sid}/logs/shard-{i}.log",
    benchmark:
        "results/sample/{sid}/logs/shard-{i}.benchmark.tsv"
    conda:
        "../../envs/vllm.yaml"
    threads: job_resource("sample", "cpus")
    resources:
        cpus_per_task=job_resource("sample", "cpus"),
        mem_mb=job_resource("sample", "mem_mb"),
        runtime=job_resource("sample", "runtime"),
        gpu=engine_gpus("sample"),
        slurm_partition=engine_partition("sample"),
    params:
        upstream=upstream_flags("sample"),
    shell:
        "python -m retro_search.cli --manifest {output.manifest} {params.upstream} sample --output {output.samples}"
        " --quarantine {output.quarantine} --config {input.config} --shard {wildcards.i} > {log} 2>&1"


rule prepare:
    input:
        config="results/prepare/{sid}/config.yaml",
        runtime_yaml=ancient("results/prepare/{sid}/runtime.yaml"),  # read with config.yaml, not a reason to rerun
        source=prepare_source,
        samples=prepare_samples,
        heldout=task_files("prepare", "heldout.jsonl"),  # decontamination against it
        local=local_files("prepare"),  # benchmark copies, a local data.source
    output:
        traces="results/prepare/{sid}/traces.jsonl",
        stats="results/prepare/{sid}/stats.json",
        removed="results/prepare/{sid}/removed.jsonl",
        quarantine="results/prepare/{sid}/quarantine.jsonl",
        manifest="results/prepare/{sid}/manifest.json",
    log:
        "results/prepare/{sid}/logs/prepare.log",
    benchmark:
        "results/prepare/{sid}/logs/prepare.benchmark.tsv"
    conda:
        "../../envs/core.yaml"
    threads: job_resource("prepare", "cpus")
    resources:
        cpus_per_task=job_resource("prepare", "cpus"),
        mem_mb=job_resource("prepare", "mem_mb"),
        runtime=job_resource("prepare", "runtime"),
    params:
        upstream=upstream_flags("prepare"),
    shell:
        "python -m retro_search.cli --manifest {output.manifest} {params.upstream} prepare --config {input.config}"
        " --traces {output.traces} --stats {output.stats} --removed {output.removed}"
        " --quarantine {output.quarantine} --samples {input.samples} --no-progress > {log} 2>&1"


rule shard:
    input:
        config="results/shard/{sid}/config.yaml",
        traces=shard_input,
    output:
        shard="results/shard/{sid}/shard-{i}.jsonl",
        manifest="results/shard/{sid}/shard-{i}.manifest.json",
    log:
        "results/shard/{sid}/logs/shard-{i}.log",
    benchmark:
        "results/shard/{sid}/logs/shard-{i}.benchmark.tsv"
    conda:
        "../../envs/core.yaml"
    resources:
        runtime=10,
    params:
        upstream=upstream_flags("shard"),
    shell:
        "python -m retro_search.cli --manifest {output.manifest} {params.upstream} shard --input {input.traces}"
        " --output {output.shard} --index {wildcards.i} --config {input.config}"
        " > {log} 2>&1"
