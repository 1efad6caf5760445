include { shellQuote; taskEnvironment } from '../shell'

// Per slice: tile positions from the motor model vs the pairwise registrations.
process COMPARE {
    tag "${meta.prefix}"
    label 'process_single'
    container 'ghcr.io/linum-uqam/linumpy-motor:0.1.0'

    input:
    tuple val(meta), path(pairs)
    path(transform)
    val(library)   // LIBRARY_VERSION: part of the task hash

    output:
    tuple val(meta), path('*_compare.json'), emit: compare
    tuple val("${task.process}"), val('linumpy-motor'), eval('linum_motor_version.py'), emit: versions, topic: versions

    script:
    def args   = task.ext.args ?: ''
    def prefix = task.ext.prefix ?: meta.prefix
    """
    ${taskEnvironment(task.cpus)}
    linum_motor_compare.py \\
        ${shellQuote(pairs)} \\
        ${shellQuote(transform)} \\
        --out ${shellQuote("${prefix}_compare.json")} \\
        ${args}
    """

    stub:
    def prefix = task.ext.prefix ?: meta.prefix
    """
    echo '{}' > ${shellQuote("${prefix}_compare.json")}
    """
}
