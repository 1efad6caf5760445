#!/usr/bin/env nextflow
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

include { validateParameters; samplesheetToList } from 'plugin/nf-schema'

include { LIBRARY_VERSION } from './modules/local/library/main'
include { SYNTHESISE      } from './modules/local/synthesise/main'
include { MEASURE_PAIRS   } from './modules/local/measure_pairs/main'
include { FIT_AFFINE      } from './modules/local/fit_affine/main'
include { STITCH          } from './modules/local/stitch/main'
include { COMPARE         } from './modules/local/compare/main'
include { REPORT          } from './modules/local/report/main'
include { QC_CHECK        } from './modules/local/qc_check/main'

workflow {

    // 0. Every param against nextflow_schema.json: a misspelt or out-of-range param stops the run here
    validateParameters()
    def use_gpu = flag(params.use_gpu)
    def refused = placementProblem(params.transform, params.placement)
    if (refused) {
        error refused
    }

    // 1. Slices: [meta, zarr], meta = [id: 7, prefix: 'slice_z07']. An input is checked before any task starts
    def synthetic = flag(params.synthetic)
    if (!synthetic && !params.input) {
        error "Give --input (a folder of *.ome.zarr slices or a slice_id,path CSV), or --synthetic"
    }
    def input_slices = synthetic ? [] : slicesFromInput(params.input)

    // The installed library's version and source hash: an input of every task, so that -resume
    // reruns them after the library changed (without containers no image tag changes with it)
    def ch_library = LIBRARY_VERSION().version.map { text -> text.trim() }

    def ch_slices = channel.fromList(input_slices)
    if (synthetic) {
        SYNTHESISE([id: 'synthetic'], ch_library)
        ch_slices = SYNTHESISE.out.zarrs
            .flatten()
            .map { zarr -> [sliceMeta(checkedSliceId(zarr)), zarr] }
    }

    // A .npy flat field is staged for MEASURE_PAIRS and STITCH; a mode (flatfieldModes()) goes by ext.args
    def flatfield = params.flatfield in flatfieldModes() ? [] : file(params.flatfield, checkIfExists: true)
    def registered = params.placement == 'registered'

    // 2. Motor model: measured on every slice and fitted once, or given with --transform
    def ch_transform = channel.empty()
    def ch_pairs     = channel.empty()   // all slices' pairs, sorted by name (none with --transform)
    def ch_compare   = channel.empty()
    if (params.transform) {
        def given = file(params.transform, checkIfExists: true)
        def published = givenTransformName(given)
        ch_transform = channel.value(given)
        if (given != file("${params.outdir}/${published}")) {
            // published like FIT_AFFINE's: the results folder says which model stitched it
            ch_transform.collectFile(name: published, storeDir: params.outdir)
        }
    }
    else {
        MEASURE_PAIRS(ch_slices, flatfield, use_gpu, ch_library)
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

    // 3. Stitch every slice with the one motor model; registered placement: with the slice's own pairs,
    //    joined by meta (the slice id)
    def ch_stitch_in = registered
        ? ch_slices.join(MEASURE_PAIRS.out.pairs, failOnMismatch: true, failOnDuplicate: true)
        : ch_slices.map { meta, zarr -> [meta, zarr, []] }
    STITCH(ch_stitch_in, ch_transform, flatfield, use_gpu, ch_library)

    // 4. Report, when the motor model was measured (as the embedded runner: the report and the QC status
    //    need the pairs and the comparisons)
    if (!params.transform) {
        REPORT(
            ch_transform.map { json -> [[id: 'report'], json] },
            ch_pairs,
            ch_compare,
            STITCH.out.zarr.map { _meta, zarr -> zarr }.collect(sort: { zarr -> zarr.name }),
            ch_library
        )

        // 5. When --fail_on can fail the run: after the report is published, the QC_CHECK task lists the slices
        //    that are not ok and fails (linum_motor_qc.py's exit code) when one counts as failing
        if (qcCheckNeeded(params.fail_on)) {
            QC_CHECK(REPORT.out.report.map { report -> [[id: 'report'], report] }, ch_library)
        }
    }

    // 6. The version of the library every process ran with
    channel.topic('versions')
        .map { proc, tool, version -> "${proc.tokenize(':')[-1]}:\n  ${tool}: '${version}'" }
        .unique()
        .collectFile(name: 'software_versions.yml', storeDir: "${params.outdir}/pipeline_info", newLine: true, sort: true)
}

// A param given on the command line arrives as a string with the strict syntax ('false' is true in Groovy)
def flag(value) {
    return value.toString().toBoolean()
}

// The slice id in a store name: the number after 'z', else the last number (the library's rule,
// linumpy_motor.io.dataset.slice_id_from_name; both are checked against tests/data/slice_ids.json).
// null when the name holds no number.
def sliceIdFromName(name) {
    def stem = name.toString().replaceFirst(/\.ome\.zarr$/, '')
    def numbers = stem.findAll(/(?<=z)\d+/) ?: stem.findAll(/\d+/)
    return numbers ? numbers[-1].toInteger() : null
}

// A store whose name holds no slice id, refused in linumpy_motor.io.dataset's words; null when it has one
def sliceIdProblem(zarr) {
    return sliceIdFromName(zarr.name) == null ? "${zarr}: no slice number in the name" : null
}

def checkedSliceId(zarr) {
    def problem = sliceIdProblem(zarr)
    if (problem) {
        error problem
    }
    return sliceIdFromName(zarr.name)
}

// A folder without slices, refused in linumpy_motor.io.dataset's words; null when it has some
def noSlicesProblem(folder, stores) {
    return stores ? null : "${folder}: no *.ome.zarr slices in this folder"
}

// meta of a slice; prefix: the embedded runner's output name prefix (linumpy_motor.pipeline.runner.prefix)
def sliceMeta(id) {
    return [id: id, prefix: "slice_z${id.toString().padLeft(2, '0')}"]
}

// The flatfield param's modes (linumpy_motor.register.flatfield.FLATFIELD_MODES); any other value is a .npy file
def flatfieldModes() {
    return ['estimate', 'none']
}

// The name a given --transform is published under in outdir: the runner's motor_transform.json
// (linumpy_motor.pipeline.runner.output_paths); upstream's .npy matrix keeps its format (the suffix in any
// case, as linumpy_motor.io.schemas.load_transform reads it)
def givenTransformName(transform) {
    return transform.toString().toLowerCase().endsWith('.npy') ? 'motor_transform.npy' : 'motor_transform.json'
}

// Whether a --fail_on choice can fail the run (as linumpy_motor.qc.summary.exit_code counts statuses):
// QC_CHECK runs only then
def qcCheckNeeded(failOn) {
    return failOn != 'never'
}

// --placement registered with --transform, refused in the embedded runner's words
// (linumpy_motor.pipeline.runner.run); null when the two go together
def placementProblem(transform, placement) {
    return transform && placement == 'registered' ? "${transform}: placement 'registered' needs measured pairs; it cannot be used with a given transform" : null
}

// The first slice id two stores of a folder share, naming both, in linumpy_motor.io.dataset's words; null
// when none. names: [[slice id, store name], ...] in the folder's sorted order
def repeatedIdsProblem(names) {
    def again = names.find { entry -> names.find { other -> other[0] == entry[0] } != entry }
    def first = again ? names.find { other -> other[0] == again[0] } : null
    return again ? "slice id ${again[0]} is in the names of both ${first[1]} and ${again[1]}" : null
}

// The first samplesheet entry whose slice id an earlier entry has, in linumpy_motor.io.dataset's words; null
// when none. entries: [[line, slice id, store, its real path], ...] in the samplesheet's order
def repeatedSheetIdProblem(entries) {
    def again = entries.find { entry -> entries.find { other -> other[1] == entry[1] } != entry }
    def first = again ? entries.find { other -> other[1] == again[1] } : null
    return again ? "line ${again[0]}: slice id ${again[1]} is already given to ${first[2]} (line ${first[0]})" : null
}

// The first samplesheet entry whose store an earlier entry lists, in linumpy_motor.io.dataset's words;
// null when none. entries: [[line, slice id, store, its real path], ...] in the samplesheet's order: stores
// are compared by real path, so a link to a store or another spelling of its path is the same store.
def repeatedStoreProblem(entries) {
    def again = entries.find { entry -> entries.find { other -> other[3] == entry[3] } != entry }
    def first = again ? entries.find { other -> other[3] == again[3] } : null
    return again ? "line ${again[0]}: ${again[2]} is already listed as slice ${first[1]}" : null
}

// Whether --input names a samplesheet rather than a folder (linumpy_motor.io.dataset.is_samplesheet)
def isSamplesheet(input) {
    return input.toString().toLowerCase().endsWith('.csv')
}

// --input: a folder of *.ome.zarr stores, or a CSV samplesheet slice_id,path (checked by
// assets/schema_input.json; relative paths are taken from the CSV's folder, as the embedded runner does).
// Returns [[meta, zarr], ...] sorted by slice id; stops the run on a missing store, a store listed twice
// or a repeated id.
def slicesFromInput(input) {
    def slices = []
    if (isSamplesheet(input)) {
        def sheet = file(input, checkIfExists: true)
        def rows = samplesheetToList(sheet, "${projectDir}/assets/schema_input.json")
        def entries = (0..<rows.size()).collect { index ->
            def row = rows[index]
            def zarr = row[1].toString().contains('://') ? file(row[1]) : sheet.parent.resolve(row[1].toString()).normalize()
            if (!zarr.exists()) {
                error "${sheet}: line ${index + 2}: ${zarr}: no such file or directory"
            }
            [index + 2, row[0] as Integer, zarr, zarr.toRealPath()]   // line: after the header line
        }
        def listedTwice = repeatedStoreProblem(entries) ?: repeatedSheetIdProblem(entries)
        if (listedTwice) {
            error "${sheet}: ${listedTwice}"
        }
        slices = entries.collect { entry -> [entry[1], entry[2]] }
    }
    else {
        def stores = files("${input}/*.ome.zarr", type: 'dir').sort { zarr -> zarr.name }
        def empty = noSlicesProblem(input, stores)
        if (empty) {
            error empty
        }
        slices = stores.collect { zarr -> [checkedSliceId(zarr), zarr] }
        def repeated = repeatedIdsProblem(slices.collect { slice -> [slice[0], slice[1].name] })
        if (repeated) {
            error "${input}: ${repeated}"
        }
    }
    return slices.sort { slice -> slice[0] }.collect { slice -> [sliceMeta(slice[0]), slice[1]] }
}
