include { shellQuote; taskEnvironment } from '../shell'

// After the report is published: list the slices that are not ok and fail the run (linum_motor_qc.py's
// exit code) when ext.args' --fail-on counts one as failing. A failed task publishes nothing, so this is its
// own last task rather than a REPORT option: the report is published either way.
process QC_CHECK {
    tag "${meta.id}"
    label 'process_single'
    container 'ghcr.io/linum-uqam/linumpy-motor:0.1.0'

    input:
    tuple val(meta), path(report)
    val(library)   // LIBRARY_VERSION: part of the task hash

    output:
    path('qc_status.txt'), emit: status
    tuple val("${task.process}"), val('linumpy-motor'), eval('linum_motor_version.py'), emit: versions, topic: versions

    script:
    def args = task.ext.args ?: ''
    """
    ${taskEnvironment(task.cpus)}
    linum_motor_qc.py \\
        ${shellQuote(report)} \\
        ${args} | tee qc_status.txt
    """

    stub:
    """
    touch qc_status.txt
    """
}
