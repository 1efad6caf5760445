// Synthetic mosaic grids with a known motor matrix (test profile, demos).
process SYNTHESISE {
    tag "${meta.id}"
    label 'process_low'
    container 'ghcr.io/linum-uqam/linumpy-motor:0.1.0'
    publishDir "${params.outdir}", mode: params.publish_dir_mode, saveAs: { fn -> fn == 'versions.yml' ? null : fn }

    input:
    val(meta)

    output:
    path('synthetic/*.ome.zarr'), emit: zarrs
    path('synthetic/truth.json'), emit: truth
    path('versions.yml'),         emit: versions

    script:
    def args = task.ext.args ?: ''
    """
    linum_motor_synth.py \\
        synthetic \\
        --overlap ${params.overlap} \\
        --seed ${params.seed} \\
        --ngff-version ${params.ngff_version} \\
        ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        linumpy-motor: \$(python3 -c 'import linumpy_motor; print(linumpy_motor.__version__)')
        python: \$(python3 --version | sed 's/.* //')
    END_VERSIONS
    """

    stub:
    """
    mkdir -p synthetic/mosaic_grid_3d_z00.ome.zarr synthetic/mosaic_grid_3d_z01.ome.zarr
    echo '{}' > synthetic/truth.json

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        linumpy-motor: stub
    END_VERSIONS
    """
}
