include { shellQuote; taskEnvironment } from '../shell'

// Stitch one slice: flat-field correction, tiles placed at A @ [i, j] (plus each tile's registered
// residual with --placement registered and the slice's pairs), blended overlaps.
process STITCH {
    tag "${meta.prefix}"
    label 'process_high'
    label 'process_gpu'
    accelerator { use_gpu ? 1 : null }
    container "${ use_gpu ? 'ghcr.io/linum-uqam/linumpy-motor:0.1.0-cuda' : 'ghcr.io/linum-uqam/linumpy-motor:0.1.0' }"

    input:
    // pairs: the slice's pairs JSON for --placement registered, else []; flatfield: a .npy flat field (the one
    // MEASURE_PAIRS wrote for the slice, or a given one), or [] for a mode (conf/modules.config's ext.args passes it)
    tuple val(meta), path(zarr), path(pairs), path(flatfield)
    path(transform)
    val(use_gpu)      // an input, not only a directive: turning the GPU on changes the task hash
    val(library)      // LIBRARY_VERSION: part of the task hash

    output:
    tuple val(meta), path('*_stitch_3d.ome.zarr'), emit: zarr
    tuple val("${task.process}"), val('linumpy-motor'), eval('linum_motor_version.py'), emit: versions, topic: versions

    script:
    def args          = task.ext.args ?: ''
    def prefix        = task.ext.prefix ?: meta.prefix
    def gpu           = use_gpu ? '--use-gpu' : ''
    def flatfield_arg = flatfield ? "--flatfield ${shellQuote(flatfield)}" : ''
    def pairs_arg     = pairs ? "--pairs ${shellQuote(pairs)}" : ''
    """
    ${taskEnvironment(task.cpus)}
    linum_motor_stitch.py \\
        ${shellQuote(zarr)} \\
        ${shellQuote(transform)} \\
        ${shellQuote("${prefix}_stitch_3d.ome.zarr")} \\
        --threads ${task.cpus} \\
        ${args} ${flatfield_arg} ${pairs_arg} ${gpu}
    """

    stub:
    def prefix = task.ext.prefix ?: meta.prefix
    """
    mkdir -p ${shellQuote("${prefix}_stitch_3d.ome.zarr")}
    """
}
