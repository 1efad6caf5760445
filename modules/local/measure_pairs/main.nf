include { shellQuote; taskEnvironment } from '../shell'

// Phase-correlate every pair of horizontal and vertical neighbour tiles of one slice (flat field divided out first);
// the flat field it used is written too (PREFIX_flatfield/flatfield.npy), for STITCH to use rather than estimate again.
process MEASURE_PAIRS {
    tag "${meta.prefix}"
    label 'process_medium'
    label 'process_gpu'
    accelerator { use_gpu ? 1 : null }
    container "${ use_gpu ? 'ghcr.io/linum-uqam/linumpy-motor:0.1.0-cuda' : 'ghcr.io/linum-uqam/linumpy-motor:0.1.0' }"

    input:
    tuple val(meta), path(zarr)
    path(flatfield)   // a .npy flat field, or [] for a mode (conf/modules.config's ext.args passes it)
    val(use_gpu)      // an input, not only a directive: turning the GPU on changes the task hash
    val(library)      // LIBRARY_VERSION: part of the task hash

    output:
    tuple val(meta), path('*_pairs.json'), emit: pairs
    tuple val(meta), path('*_flatfield'), emit: flatfield
    tuple val("${task.process}"), val('linumpy-motor'), eval('linum_motor_version.py'), emit: versions, topic: versions

    script:
    def args          = task.ext.args ?: ''
    def prefix        = task.ext.prefix ?: meta.prefix
    def gpu           = use_gpu ? '--use-gpu' : ''
    def flatfield_arg = flatfield ? "--flatfield ${shellQuote(flatfield)}" : ''
    """
    ${taskEnvironment(task.cpus)}
    linum_motor_measure_pairs.py \\
        ${shellQuote(zarr)} \\
        ${shellQuote("${prefix}_pairs.json")} \\
        --slice-id ${meta.id} \\
        --flatfield-out ${shellQuote("${prefix}_flatfield")} \\
        --threads ${task.cpus} \\
        ${gpu} ${args} ${flatfield_arg}
    """

    stub:
    def prefix = task.ext.prefix ?: meta.prefix
    """
    echo '{}' > ${shellQuote("${prefix}_pairs.json")}
    mkdir -p ${shellQuote("${prefix}_flatfield")}
    touch ${shellQuote("${prefix}_flatfield/flatfield.npy")}
    echo '{"flatfield": "estimate"}' > ${shellQuote("${prefix}_flatfield/flatfield.json")}
    """
}
