// One HTML report: motor model diagnostics, per-slice comparisons, stitched previews.
process REPORT {
    tag "${meta.id}"
    label 'process_low'
    container 'ghcr.io/linum-uqam/linumpy-motor:0.1.0'
    publishDir "${params.outdir}", mode: params.publish_dir_mode, saveAs: { fn -> fn == 'versions.yml' ? null : fn }

    input:
    tuple val(meta), path(transform)
    path(pairs)      // all slices' pairs JSONs, or [] when the motor model was given (--transform)
    path(compare)    // all slices' comparisons, or []
    path(stitched)   // all stitched slices

    output:
    path('report'),       emit: report
    path('versions.yml'), emit: versions

    script:
    def args        = task.ext.args ?: ''
    def pairs_arg   = pairs ? "--pairs ${pairs}" : ''
    def compare_arg = compare ? "--compare ${compare}" : ''
    """
    linum_motor_report.py \\
        --transform ${transform} \\
        ${pairs_arg} \\
        ${compare_arg} \\
        --stitched ${stitched} \\
        --out report \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        linumpy-motor: \$(python3 -c 'import linumpy_motor; print(linumpy_motor.__version__)')
        python: \$(python3 --version | sed 's/.* //')
    END_VERSIONS
    """

    stub:
    """
    mkdir -p report
    touch report/report.html

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        linumpy-motor: stub
    END_VERSIONS
    """
}
