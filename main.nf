#!/usr/bin/env nextflow
/*
 * linumpy-motor: mosaic stitching of serial OCT slices with one pooled affine motor model.
 * The stage itself: workflows/linumpy_motor.nf. Its params: nextflow_schema.json (nextflow run . --help).
 */

include { PIPELINE_INITIALISATION; helpAsked } from './subworkflows/local/utils_linumpy_motor_pipeline'
include { LINUMPY_MOTOR           } from './workflows/linumpy_motor'

workflow {
    def synthetic = params.synthetic.toString().toBoolean()   // a command-line 'false' is a true string
    PIPELINE_INITIALISATION(params.input, synthetic, params.transform, params.placement)
    if (!helpAsked()) {   // with --help the params are printed, and nothing runs
        LINUMPY_MOTOR(
            PIPELINE_INITIALISATION.out.slices,
            synthetic,
            params.transform,
            params.flatfield,
            params.placement,
            params.use_gpu.toString().toBoolean(),
            params.fail_on,
            params.outdir
        )
    }
}
