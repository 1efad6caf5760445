include { shellQuote; taskEnvironment } from '../shell'

// One HTML report: motor model diagnostics, per-slice comparisons, stitched previews.
process REPORT {
    tag "${meta.id}"
    label 'process_low'
    container 'ghcr.io/linum-uqam/linumpy-motor:0.1.0'

    input:
    tuple val(meta), path(transform)
    path(pairs)      // all slices' pairs JSONs, or [] when the motor model was given (--transform)
    path(compare)    // all slices' comparisons, or []
    path(stitched)   // all stitched slices
    val(library)     // LIBRARY_VERSION: part of the task hash

    output:
    path('report'), emit: report
    tuple val("${task.process}"), val('linumpy-motor'), eval('linum_motor_version.py'), emit: versions, topic: versions

    script:
    def args        = task.ext.args ?: ''
    def pairs_arg   = pairs ? "--pairs ${shellQuote(pairs)}" : ''
    def compare_arg = compare ? "--compare ${shellQuote(compare)}" : ''
    """
    ${taskEnvironment(task.cpus)}
    linum_motor_report.py \\
        --transform ${shellQuote(transform)} \\
        ${pairs_arg} \\
        ${compare_arg} \\
        --stitched ${shellQuote(stitched)} \\
        --out report \\
        ${args}
    """

    stub:
    """
    mkdir -p report
    touch report/report.html
    """
}
