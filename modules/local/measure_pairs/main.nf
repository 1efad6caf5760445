// Phase-correlate every pair of horizontal and vertical neighbour tiles of one slice.
process MEASURE_PAIRS {
    tag "${meta.prefix}"
    label 'process_medium'
    label 'process_gpu'
    container "${ task.accelerator ? 'ghcr.io/linum-uqam/linumpy-motor:0.1.0-cuda' : 'ghcr.io/linum-uqam/linumpy-motor:0.1.0' }"
    publishDir "${params.outdir}/pairs", mode: params.publish_dir_mode, saveAs: { fn -> fn == 'versions.yml' ? null : fn }

    input:
    tuple val(meta), path(zarr)

    output:
    tuple val(meta), path('*_pairs.json'), emit: pairs
    path('versions.yml'),                  emit: versions

    script:
    def args      = task.ext.args ?: ''
    def prefix    = task.ext.prefix ?: meta.prefix
    def gpu       = task.accelerator ? '--use-gpu' : ''
    def z         = params.z != null ? "--z ${params.z}" : ''
    def max_shift = params.max_shift != null ? "--max-shift ${params.max_shift}" : ''
    def histogram = params.histogram_match.toString().toBoolean() ? '--histogram-match' : ''
    def max_empty = params.max_empty_fraction != null ? "--max-empty-fraction ${params.max_empty_fraction}" : ''
    """
    linum_motor_measure_pairs.py \\
        ${zarr} \\
        ${prefix}_pairs.json \\
        --slice-id ${meta.id} \\
        --overlap ${params.overlap} \\
        ${z} ${max_shift} ${histogram} ${max_empty} ${gpu} \\
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
    echo '{}' > ${prefix}_pairs.json

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        linumpy-motor: stub
    END_VERSIONS
    """
}
