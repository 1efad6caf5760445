// Pool the pairs of every slice and fit one robust affine motor model.
process FIT_AFFINE {
    tag "${meta.id}"
    label 'process_single'
    container 'ghcr.io/linum-uqam/linumpy-motor:0.1.0'
    publishDir "${params.outdir}", mode: params.publish_dir_mode, saveAs: { fn -> fn == 'versions.yml' ? null : fn }

    input:
    tuple val(meta), path(pairs)

    output:
    tuple val(meta), path('motor_transform.json'), emit: transform
    path('versions.yml'),                          emit: versions

    script:
    def args      = task.ext.args ?: ''
    def n_samples = params.n_samples != null ? "--n-samples ${params.n_samples}" : ''
    """
    linum_motor_fit_affine.py \\
        ${pairs} \\
        --out motor_transform.json \\
        --seed ${params.seed} \\
        --drift-tolerance ${params.drift_tolerance} \\
        ${n_samples} \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        linumpy-motor: \$(python3 -c 'import linumpy_motor; print(linumpy_motor.__version__)')
        python: \$(python3 --version | sed 's/.* //')
    END_VERSIONS
    """

    stub:
    """
    echo '{"transform": [[1.0, 0.0], [0.0, 1.0]], "diagnostics": {}}' > motor_transform.json

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        linumpy-motor: stub
    END_VERSIONS
    """
}
