# The simulator's accuracy on measured cells (not part of `all`): `snakemake accuracy`.
# It reruns every measured cell below the folders `accuracy.cells` names (default: every
# committed H100 set, validation/h100) on the simulator with the bundled profile of the
# cells' GPU and writes the table and figure (wattflow.calibration.accuracy). The committed
# report for the H100 data is validation/h100/accuracy/.
ACCURACY_CELLS = (config.get("accuracy") or {}).get("cells", ["validation/h100"])


rule accuracy:
    input:
        cells=[
            p
            for d in ACCURACY_CELLS
            for p in glob.glob(f"{d}/**/cell.json", recursive=True)
        ],
        profiles=glob.glob("wattflow/engines/sim/profiles/*.yaml"),
    output:
        table=f"{RESULTS}/accuracy/accuracy.parquet",
        md=f"{RESULTS}/accuracy/accuracy.md",
        png=f"{RESULTS}/accuracy/accuracy.png",
    log:
        f"{RESULTS}/logs/accuracy.log",
    conda:
        "../envs/wattflow.yaml"
    params:
        cells=ACCURACY_CELLS,
    shell:
        '"$WATTFLOW_PYTHON" -m wattflow accuracy {params.cells:q} -o $(dirname {output.md:q})'
        " > {log:q} 2>&1"
