include { shellQuote; taskEnvironment } from '../shell'

// Pool the pairs of every slice and fit one robust affine motor model.
process FIT_AFFINE {
    tag "${meta.id}"
    label 'process_low'
    container 'ghcr.io/linum-uqam/linumpy-motor:0.1.0'

    input:
    tuple val(meta), path(pairs)
    val(library)   // LIBRARY_VERSION: part of the task hash

    output:
    tuple val(meta), path('motor_transform.json'), emit: transform
    tuple val("${task.process}"), val('linumpy-motor'), eval('linum_motor_version.py'), emit: versions, topic: versions

    script:
    def args = task.ext.args ?: ''
    """
    ${taskEnvironment(task.cpus)}
    linum_motor_fit_affine.py \\
        ${shellQuote(pairs)} \\
        --out motor_transform.json \\
        ${args}
    """

    stub:
    """
    echo '{"transform": [[1.0, 0.0], [0.0, 1.0]], "diagnostics": {}}' > motor_transform.json
    """
}
