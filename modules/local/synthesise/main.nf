include { shellQuote; taskEnvironment } from '../shell'

// Synthetic mosaic grids with a known motor matrix (test profile, demos).
process SYNTHESISE {
    tag "${meta.id}"
    label 'process_low'
    container 'ghcr.io/linum-uqam/linumpy-motor:0.1.0'

    input:
    val(meta)
    val(library)   // LIBRARY_VERSION: part of the task hash

    output:
    path('synthetic/*.ome.zarr'), emit: zarrs
    path('synthetic/truth.json'), emit: truth
    tuple val("${task.process}"), val('linumpy-motor'), eval('linum_motor_version.py'), emit: versions, topic: versions

    script:
    def args = task.ext.args ?: ''
    """
    ${taskEnvironment(task.cpus)}
    linum_motor_synth.py synthetic ${args}
    """

    stub:
    """
    mkdir -p synthetic/mosaic_grid_3d_z00.ome.zarr synthetic/mosaic_grid_3d_z01.ome.zarr
    echo '{}' > synthetic/truth.json
    """
}
