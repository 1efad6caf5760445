// Stitch one slice: flat-field correction, tiles placed at A @ [i, j], blended overlaps.
process STITCH {
    tag "${meta.prefix}"
    label 'process_high'
    label 'process_gpu'
    container "${ task.accelerator ? 'ghcr.io/linum-uqam/linumpy-motor:0.1.0-cuda' : 'ghcr.io/linum-uqam/linumpy-motor:0.1.0' }"
    publishDir "${params.outdir}/stitched", mode: params.publish_dir_mode, saveAs: { fn -> fn == 'versions.yml' ? null : fn }

    input:
    tuple val(meta), path(zarr)
    path(transform)
    path(flatfield)   // a .npy flat field, or [] to use params.flatfield ('estimate' or 'none')

    output:
    tuple val(meta), path('*_stitch_3d.ome.zarr'), emit: zarr
    path('versions.yml'),                          emit: versions

    script:
    def args          = task.ext.args ?: ''
    def prefix        = task.ext.prefix ?: meta.prefix
    def gpu           = task.accelerator ? '--use-gpu' : ''
    def flatfield_arg = flatfield ? "--flatfield ${flatfield}" : "--flatfield ${params.flatfield}"
    """
    linum_motor_stitch.py \\
        ${zarr} \\
        ${transform} \\
        ${prefix}_stitch_3d.ome.zarr \\
        --blending ${params.blending} \\
        ${flatfield_arg} \\
        --ngff-version ${params.ngff_version} \\
        ${gpu} \\
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
    mkdir -p ${prefix}_stitch_3d.ome.zarr

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        linumpy-motor: stub
    END_VERSIONS
    """
}
