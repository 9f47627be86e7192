# The serving image of each engine whose backend needs one (vLLM's), built once before its
# cells (wattflow/engines/container.py, containers/). Its manifest (image id, digest, server
# version) is every such cell's input (image_manifest), and the cell runs the image id the
# manifest names. The simulator and external endpoints need no image: a grid without such
# engines has no `image` job and needs no container runtime. The only input is the recipe (Dockerfile or .def): editing
# package code rebuilds nothing (the build cache makes a forced rebuild cheap).


rule image:
    input:
        recipe=lambda wc: wf_container.recipe_file(image_spec(wc.engine)),
    output:
        f"{IMAGES}/{{engine}}.json",
    log:
        f"{IMAGES}/{{engine}}.log",
    localrule: True
    conda:
        "../envs/wattflow.yaml"
    params:
        spec=lambda wc: json.dumps(image_spec(wc.engine), sort_keys=True),
    shell:
        '"$WATTFLOW_PYTHON" scripts/build_image.py --spec {params.spec:q} --out {output:q}'
        " --log {log:q}"
