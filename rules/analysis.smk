# Aggregation, figures and the report: run once per grid, so `script:` jobs are fine here.


rule summary:
    input:
        cells=expand("{d}/cell.json", d=cell_dirs()),
    output:
        f"{RESULTS}/summary.parquet",
    log:
        f"{RESULTS}/logs/summary.log",
    script:
        "../scripts/aggregate.py"


rule figures:
    input:
        f"{RESULTS}/summary.parquet",
    output:
        report(
            directory(f"{RESULTS}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    params:
        **analysis_params(),
    log:
        f"{RESULTS}/logs/figures.log",
    script:
        "../scripts/plot.py"


rule report:
    input:
        summary=f"{RESULTS}/summary.parquet",
        figures=f"{RESULTS}/figures",
    output:
        report(f"{RESULTS}/report.html", caption="../report/report.rst", category="Report"),
    params:
        **analysis_params(),
    log:
        f"{RESULTS}/logs/report.log",
    script:
        "../scripts/report.py"
