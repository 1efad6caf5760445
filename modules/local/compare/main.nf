// Per slice: tile positions from the motor model vs the pairwise registrations.
process COMPARE {
    tag "${meta.prefix}"
    label 'process_single'
    container 'ghcr.io/linum-uqam/linumpy-motor:0.1.0'
    publishDir "${params.outdir}/compare", mode: params.publish_dir_mode, saveAs: { fn -> fn == 'versions.yml' ? null : fn }

    input:
    tuple val(meta), path(pairs)
    path(transform)

    output:
    tuple val(meta), path('*_compare.json'), emit: compare
    path('versions.yml'),                    emit: versions

    script:
    def args   = task.ext.args ?: ''
    def prefix = task.ext.prefix ?: meta.prefix
    """
    linum_motor_compare.py \\
        ${pairs} \\
        ${transform} \\
        --out ${prefix}_compare.json \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        linumpy-motor: \$(python3 -c 'import linumpy_motor; print(linumpy_motor.__version__)')
        python: \$(python3 --version | sed 's/.* //')
    END_VERSIONS
    """

    stub:
    def prefix = task.ext.prefix ?: meta.prefix
    """
    echo '{}' > ${prefix}_compare.json

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        linumpy-motor: stub
    END_VERSIONS
    """
}
