/*
 * linumpy-motor: stitch the mosaic grids of a serial-OCT acquisition with ONE motor model.
 *
 *   slices --+--> MEASURE_PAIRS (per slice) --+--> FIT_AFFINE (all pairs, once) --> motor model
 *            |                                +--> COMPARE (per slice, with the motor model)
 *            +--> STITCH (per slice, with the motor model)
 *   REPORT (once): motor model, pairs, comparisons, stitched slices
 *   QC_CHECK (once, when --fail_on can fail the run): fails the run when a slice's QC status counts as failing
 *
 * --transform FILE (a transform JSON or upstream's 2x2 .npy): stitch with that motor model (no MEASURE_PAIRS,
 * FIT_AFFINE, COMPARE, REPORT, QC_CHECK: as the embedded runner, the report needs measured pairs).
 * --placement registered: STITCH also gets the slice's pairs (not with --transform).
 * Published to params.outdir (conf/modules.config): the embedded runner's layout
 * (linumpy_motor.pipeline.runner.output_paths): pairs/, motor_transform.json, stitched/, compare/, report/
 */

include { LIBRARY_VERSION } from '../modules/local/library/main'
include { SYNTHESISE      } from '../modules/local/synthesise/main'
include { MEASURE_PAIRS   } from '../modules/local/measure_pairs/main'
include { FIT_AFFINE      } from '../modules/local/fit_affine/main'
include { STITCH          } from '../modules/local/stitch/main'
include { COMPARE         } from '../modules/local/compare/main'
include { REPORT          } from '../modules/local/report/main'
include { QC_CHECK        } from '../modules/local/qc_check/main'
include { sliceIdFromName; sliceMeta } from '../subworkflows/local/utils_linumpy_motor_pipeline'

workflow LINUMPY_MOTOR {

    take:
    slices      // [meta, zarr] per slice (empty with synthetic)
    synthetic   // make a synthetic dataset (SYNTHESISE) and use its slices
    transform   // a given motor model (a path), or null: measure and fit
    flatfield   // 'estimate', 'none' or a .npy path
    placement   // 'model' or 'registered'
    use_gpu     // GPU for MEASURE_PAIRS and STITCH
    fail_on     // 'never', 'failed' or 'check'
    outdir      // where a given transform is published

    main:
    // The installed library's version and source hash: an input of every task, so that -resume
    // reruns them after the library changed (without containers no image tag changes with it)
    def ch_library = LIBRARY_VERSION().version.map { text -> text.trim() }

    def ch_slices = slices
    if (synthetic) {
        SYNTHESISE([id: 'synthetic'], ch_library)
        ch_slices = SYNTHESISE.out.zarrs
            .flatten()
            .map { zarr -> [sliceMeta(sliceIdFromName(zarr.name)), zarr] }
    }

    // A .npy flat field is staged for MEASURE_PAIRS (and STITCH with --transform); a mode goes by ext.args
    // (conf/modules.config)
    def ch_flatfield = flatfield.toString().toLowerCase().endsWith('.npy') ? file(flatfield, checkIfExists: true) : []

    // Motor model: measured on every slice and fitted once, or given with --transform
    def ch_transform = channel.empty()
    def ch_pairs     = channel.empty()   // all slices' pairs, sorted by name (none with --transform)
    def ch_compare   = channel.empty()
    if (transform) {
        def given = file(transform, checkIfExists: true)
        // published like FIT_AFFINE's, so that the results folder says which model stitched it; upstream's
        // .npy matrix keeps its format (the runner's names: linumpy_motor.pipeline.runner.output_paths)
        def published = given.name.toLowerCase().endsWith('.npy') ? 'motor_transform.npy' : 'motor_transform.json'
        ch_transform = channel.value(given)
        if (given != file("${outdir}/${published}")) {
            ch_transform.collectFile(name: published, storeDir: outdir)
        }
    }
    else {
        MEASURE_PAIRS(ch_slices, ch_flatfield, use_gpu, ch_library)
        ch_pairs = MEASURE_PAIRS.out.pairs
            .map { _meta, json -> json }
            .collect(sort: { json -> json.name })   // sorted: the same command line on -resume

        FIT_AFFINE(ch_pairs.map { jsons -> [[id: 'motor'], jsons] }, ch_library)
        ch_transform = FIT_AFFINE.out.transform.map { _meta, json -> json }   // a value: reused per slice

        COMPARE(MEASURE_PAIRS.out.pairs, ch_transform, ch_library)
        ch_compare = COMPARE.out.compare
            .map { _meta, json -> json }
            .collect(sort: { json -> json.name })
    }

    // Stitch every slice with the one motor model; registered placement: with the slice's own pairs,
    // joined by meta (the slice id)
    def ch_with_pairs = placement == 'registered'
        ? ch_slices.join(MEASURE_PAIRS.out.pairs, failOnMismatch: true, failOnDuplicate: true)
        : ch_slices.map { meta, zarr -> [meta, zarr, []] }
    // ... and with the flat field its measurement wrote (estimated once per slice), joined by meta; with a
    // given transform nothing is measured: the given flat field, or the mode (STITCH estimates then)
    def ch_stitch_in = transform
        ? ch_with_pairs.map { meta, zarr, pairs -> [meta, zarr, pairs, ch_flatfield] }
        : ch_with_pairs.join(MEASURE_PAIRS.out.flatfield.map { meta, folder -> [meta, folder.resolve('flatfield.npy')] },
                             failOnMismatch: true, failOnDuplicate: true)
    STITCH(ch_stitch_in, ch_transform, use_gpu, ch_library)

    // Report, when the motor model was measured (as the embedded runner: the report and the QC status
    // need the pairs and the comparisons)
    def ch_report = channel.empty()
    if (!transform) {
        REPORT(
            ch_transform.map { json -> [[id: 'report'], json] },
            ch_pairs,
            ch_compare,
            STITCH.out.zarr.map { _meta, zarr -> zarr }.collect(sort: { zarr -> zarr.name }),
            ch_library
        )
        ch_report = REPORT.out.report

        // When --fail_on can fail the run: after the report is published, the QC_CHECK task lists the slices
        // that are not ok and fails (linum_motor_qc.py's exit code) when one counts as failing
        if (fail_on != 'never') {
            QC_CHECK(REPORT.out.report.map { report -> [[id: 'report'], report] }, ch_library)
        }
    }

    // The version of the library every process ran with
    channel.topic('versions')
        .map { proc, tool, version -> "${proc.tokenize(':')[-1]}:\n  ${tool}: '${version}'" }
        .unique()
        .collectFile(name: 'software_versions.yml', storeDir: "${outdir}/pipeline_info", newLine: true, sort: true)

    emit:
    transform = ch_transform
    stitched  = STITCH.out.zarr
    report    = ch_report
}
