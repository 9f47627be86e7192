# One job per cell. A `shell:` job calling a stable script costs ~20 ms of Snakemake
# overhead against ~0.6 s for a `script:` job, which decides whether 400 cells fit in
# minutes on 2 cores. The script never changes when library code does, so finished cells
# stay finished; the cell's config slice is its params, so only affected cells rerun.


wildcard_constraints:
    **{k: "[^/]+" for k in KNOB_NAMES},


rule cell:
    input:
        image=image_manifest,
    output:
        requests=f"{CELL_DIR}/requests.parquet",
        workflows=f"{CELL_DIR}/workflows.parquet",
        telemetry=f"{CELL_DIR}/telemetry.parquet",
        manifest=f"{CELL_DIR}/cell.json",
    log:
        f"{CELL_DIR}/cell.log",
    priority: cell_priority
    conda:
        "../envs/wattflow.yaml"
    resources:
        gpu=cell_gpus,
    params:
        spec=cell_spec,
        knobs=lambda wc: json.dumps(cell_knobs(wc), sort_keys=True),
        python=PYTHON,
    shell:
        "{params.python} scripts/run_cell.py --knobs {params.knobs:q} --spec {params.spec:q}"
        " --out $(dirname {output.manifest:q}) 2> {log:q}"
