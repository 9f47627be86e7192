# Aggregation, figures and the report: run once per grid, so `script:` jobs are fine here.


rule summary:
    input:
        cells=expand("{d}/cell.json", d=cell_dirs()),
    output:
        summary=f"{RESULTS}/summary.parquet",
        stages=f"{RESULTS}/stages.parquet",
    log:
        f"{RESULTS}/logs/summary.log",
    conda:
        "../envs/wattflow.yaml"
    params:
        slo=config.get("slo"),
    script:
        "../scripts/aggregate.py"


rule figures:
    input:
        summary=f"{RESULTS}/summary.parquet",
        stages=f"{RESULTS}/stages.parquet",
    output:
        report(
            directory(f"{RESULTS}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        f"{RESULTS}/logs/figures.log",
    conda:
        "../envs/wattflow.yaml"
    params:
        **analysis_params(),
    script:
        "../scripts/plot.py"


rule report:
    input:
        summary=f"{RESULTS}/summary.parquet",
        figures=f"{RESULTS}/figures",
        accuracy=accuracy_table,
    output:
        report(
            f"{RESULTS}/report.html", caption="../report/report.rst", category="Report"
        ),
    log:
        f"{RESULTS}/logs/report.log",
    conda:
        "../envs/wattflow.yaml"
    params:
        **analysis_params(),
    script:
        "../scripts/report.py"
