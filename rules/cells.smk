# One job per cell. A `shell:` job calling a stable script costs ~20 ms of Snakemake
# overhead against ~0.6 s for a `script:` job, and the script forks the cell from the
# run's warm Python (wattflow.forkserver) rather than importing the package (~0.4 s):
# that decides whether 400 cells fit in minutes on 2 cores. The command never changes
# when library code does, so finished cells stay finished; the cell's config slice is its
# params and its knobs are its path (wattflow.knobs: knobs at their default are left out),
# so only affected cells rerun. On a cluster the cells of a group are one job
# (wattflow.snakemake_groups): `group:` below, and the `cell_group` rule.


wildcard_constraints:
    cell=r"engine=[^/]+/workload=[^/]+/[^/]+",
    gid=r"[^/]+",


rule cell:
    input:
        image=image_manifest,
    output:
        requests=f"{RESULTS}/cells/{{cell}}/requests.parquet",
        workflows=f"{RESULTS}/cells/{{cell}}/workflows.parquet",
        telemetry=f"{RESULTS}/cells/{{cell}}/telemetry.parquet",
        manifest=f"{RESULTS}/cells/{{cell}}/cell.json",
    log:
        f"{RESULTS}/logs/cells/{{cell}}.log",
    priority: cell_priority
    group:
        cell_group
    conda:
        "../envs/wattflow.yaml"
    resources:
        gpu=cell_gpus,
        realtime_cpu=cell_realtime_cpu,
        cpus_per_task=cell_cpus,
        mem_mb=cell_mem_mb,
        runtime=cell_runtime,
    params:
        spec=cell_spec,
    shell:
        '"$WATTFLOW_PYTHON" scripts/run_cell.py --cell {wildcards.cell:q} --spec {params.spec:q}'
        " --out $(dirname {output.manifest:q}) 2> {log:q}"


# On a cluster: the job that makes a group's cells one connected part of the DAG, and so
# one group job (wattflow.snakemake_groups). It runs last in the job, after the cells.
rule cell_group:
    input:
        group_cells,
    output:
        f"{RESULTS}/.groups/{{gid}}.done",
    log:
        f"{RESULTS}/logs/groups/{{gid}}.log",
    group:
        "{gid}"
    conda:
        "../envs/wattflow.yaml"
    resources:
        cpus_per_task=1,
        mem_mb=100,
        runtime=1,
    shell:
        "touch {output:q} 2> {log:q}"
