# The experiment's tables, plots and search statistics, and its index of stage directories.

from retro_search.report.experiment_index import experiment_config


rule summarize:
    input:
        config="results/summary/{sid}/config.yaml",
        revised=summary_inputs("revised"),
        rollouts=summary_inputs("rollouts"),
        stats=summary_inputs("stats"),
        metrics=summary_metrics_inputs,
    output:
        # what the report shows inline (HTML pages and figures), labelled by name
        html=report(
            "results/summary/{sid}/results.html",
            caption="../report/results_table.rst",
            category="Results",
            labels=summary_labels("results table"),
        ),
        csv=report(
            "results/summary/{sid}/results.csv",
            caption="../report/results_table.rst",
            category="Results",
            labels=summary_labels("results table, full precision (CSV)"),
        ),
        md="results/summary/{sid}/results.md",
        search_html=report(
            "results/summary/{sid}/search_stats.html",
            caption="../report/search_stats.rst",
            category="Retro-Search",
            labels=summary_labels("search statistics"),
        ),
        search="results/summary/{sid}/search_stats.md",
        accuracy=report(
            "results/summary/{sid}/accuracy_vs_length.png",
            caption="../report/accuracy_vs_length.rst",
            category="Results",
            labels=summary_labels("accuracy vs length"),
        ),
        lengths=report(
            "results/summary/{sid}/trace_lengths.png",
            caption="../report/trace_lengths.rst",
            category="Retro-Search",
            labels=summary_labels("trace lengths before and after"),
        ),
        acceptance=report(
            "results/summary/{sid}/boundary_acceptance.png",
            caption="../report/boundary_acceptance.rst",
            category="Retro-Search",
            labels=summary_labels("acceptance by boundary"),
        ),
        summary="results/summary/{sid}/summary.json",
        manifest="results/summary/{sid}/manifest.json",
    log:
        "results/summary/{sid}/logs/summarize.log",
    benchmark:
        "results/summary/{sid}/logs/summarize.benchmark.tsv"
    conda:
        "../../envs/core.yaml"
    resources:
        runtime=15,
    params:
        arms=summary_arms,
        metrics=summary_metrics,
        upstream=upstream_flags("summary"),
    shell:
        "python -m retro_search.cli --manifest {output.manifest} {params.upstream} summarize"
        " --metrics {params.metrics} --arms {params.arms} --search-stats {input.stats}"
        " --revised {input.revised} --rollouts {input.rollouts}"
        " --output-dir results/summary/{wildcards.sid} > {log} 2>&1"


rule experiment_index:
    input:
        summary=experiment_summary("manifest.json"),
        table=experiment_summary("results.md"),
    output:
        index="results/experiments/{name}/index.json",
        config="results/experiments/{name}/config.yaml",
        readme="results/experiments/{name}/README.md",
        table="results/experiments/{name}/results.md",
        manifest="results/experiments/{name}/manifest.json",
    log:
        "results/experiments/{name}/logs/index.log",
    params:
        index=lambda wildcards: json.dumps(experiment_by_name(wildcards.name).index()),
        # without runtime settings: changing one reruns nothing, this rule included
        config=lambda wildcards: json.dumps(
            experiment_config(experiment_by_name(wildcards.name).config)
        ),
    run:
        write_experiment_index(
            f"results/experiments/{wildcards.name}",
            params.index,
            input.table,
            config=params.config,
            log=log[0],
        )
