/*
 * Before any task: every param against nextflow_schema.json, then the slices of --input.
 *
 * What nf-schema can state lives in the schemas: the params' types, bounds and choices
 * (nextflow_schema.json; a misspelt param is an error, nextflow.config `validation`), and a samplesheet's
 * columns, an integer id >= 0 and ids that are unique (assets/schema_input.json). What is left here is
 * what a schema cannot say: a store's path is taken from the CSV's folder (as the embedded runner does:
 * nf-schema would take it from the launch folder), it must exist there, one store may not stand under
 * two ids (compared by real path, so a link counts as its target), and a folder's slices take their id
 * from their names.
 */

include { paramsHelp; validateParameters; samplesheetToList } from 'plugin/nf-schema'

workflow PIPELINE_INITIALISATION {

    take:
    input       // --input: a folder of *.ome.zarr stores or a slice_id,path CSV; null with synthetic
    synthetic   // --synthetic
    transform   // --transform
    placement   // --placement

    main:
    validateParameters()
    if (helpAsked()) {
        log.info(paramsHelp(fullHelp: params.help == 'full', showHidden: params.showHidden as boolean))
    }
    def given = helpAsked() ? [] : checkedSlices(input, synthetic, transform, placement)

    emit:
    slices = channel.fromList(given)   // [meta, zarr], meta = [id: 7, prefix: 'slice_z07'], sorted by id
}

// Whether --help (or --help full) was given: the params are printed, and nothing runs
def helpAsked() {
    return params.help as boolean
}

// The slices of the run ([] with synthetic), once the params that go together are known to
def checkedSlices(input, synthetic, transform, placement) {
    if (transform && placement == 'registered') {
        error "${transform}: placement 'registered' needs measured pairs; it cannot be used with a given transform"
    }
    if (!synthetic && !input) {
        error "Give --input (a folder of *.ome.zarr slices or a slice_id,path CSV), or --synthetic"
    }
    return synthetic ? [] : slicesFromInput(input)
}

// The slice id in a store name: the number after 'z', else the last number (the library's rule,
// linumpy_motor.io.dataset.slice_id_from_name; both are checked against tests/data/slice_ids.json).
// null when the name holds no number.
def sliceIdFromName(name) {
    def stem = name.toString().replaceFirst(/\.ome\.zarr$/, '')
    def numbers = stem.findAll(/(?<=z)\d+/) ?: stem.findAll(/\d+/)
    return numbers ? numbers[-1].toInteger() : null
}

// The id of a store, or a stop in linumpy_motor.io.dataset's words when its name holds none
def checkedSliceId(zarr) {
    def id = sliceIdFromName(zarr.name)
    if (id == null) {
        error "${zarr}: no slice number in the name"
    }
    return id
}

// meta of a slice; prefix: the embedded runner's output name prefix (linumpy_motor.pipeline.runner.prefix)
def sliceMeta(id) {
    return [id: id, prefix: "slice_z${id.toString().padLeft(2, '0')}"]
}

// The rows of a samplesheet as [id, store]: checked by assets/schema_input.json, paths taken from the
// CSV's folder, each store present and listed once (by real path)
def slicesFromSamplesheet(sheet) {
    def rows = samplesheetToList(sheet, "${projectDir}/assets/schema_input.json")
    def seen = [:]
    return rows.withIndex().collect { row, index ->
        def line = index + 2   // after the header line
        def zarr = row[1].toString().contains('://') ? file(row[1]) : sheet.parent.resolve(row[1].toString()).normalize()
        if (!zarr.exists()) {
            error "${sheet}: line ${line}: ${zarr}: no such file or directory"
        }
        def real = zarr.toRealPath()
        if (seen.containsKey(real)) {
            error "${sheet}: line ${line}: ${zarr} is already listed as slice ${seen[real]}"
        }
        seen[real] = row[0]
        [row[0] as Integer, zarr]
    }
}

// The *.ome.zarr stores of a folder as [id, store], ids from the names, each id once: the first id two
// stores share (in the stores' name order) is refused naming both, in linumpy_motor.io.dataset's words
def slicesFromFolder(folder) {
    def stores = files("${folder}/*.ome.zarr", type: 'dir').sort { zarr -> zarr.name }
    if (!stores) {
        error "${folder}: no *.ome.zarr slices in this folder"
    }
    def slices = stores.collect { zarr -> [checkedSliceId(zarr), zarr] }
    def again = slices.find { slice -> slices.find { other -> other[0] == slice[0] } != slice }
    if (again) {
        def id = again[0]
        def first = slices.find { other -> other[0] == id }[1]
        def second = again[1]
        error "${folder}: slice id ${id} is in the names of both ${first.name} and ${second.name}"
    }
    return slices
}

// --input: a CSV samplesheet (a .csv name in any case: linumpy_motor.io.dataset.is_samplesheet) or a folder.
// Returns [[meta, zarr], ...] sorted by slice id.
def slicesFromInput(input) {
    def given = file(input, checkIfExists: true)
    def slices = input.toString().toLowerCase().endsWith('.csv') ? slicesFromSamplesheet(given) : slicesFromFolder(given)
    return slices.sort { slice -> slice[0] }.collect { slice -> [sliceMeta(slice[0]), slice[1]] }
}
