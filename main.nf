#!/usr/bin/env nextflow
/*
 * linumpy-motor: stitch the mosaic grids of a serial-OCT acquisition with ONE motor model.
 *
 *   slices --+--> MEASURE_PAIRS (per slice) --+--> FIT_AFFINE (all pairs, once) --> motor model
 *            |                                +--> COMPARE (per slice, with the motor model)
 *            +--> STITCH (per slice, with the motor model)
 *   REPORT (once): motor model, pairs, comparisons, stitched slices
 *
 * --transform motor_transform.json: stitch with that motor model (no MEASURE_PAIRS, FIT_AFFINE, COMPARE).
 * Published to params.outdir: pairs/, motor_transform.json, stitched/, compare/, report/
 */

include { SYNTHESISE    } from './modules/local/synthesise/main'
include { MEASURE_PAIRS } from './modules/local/measure_pairs/main'
include { FIT_AFFINE    } from './modules/local/fit_affine/main'
include { STITCH        } from './modules/local/stitch/main'
include { COMPARE       } from './modules/local/compare/main'
include { REPORT        } from './modules/local/report/main'

workflow {

    // 1. Slices: [meta, zarr], meta = [id: 7, prefix: 'slice_z07']
    def ch_slices = channel.empty()
    if (params.synthetic.toString().toBoolean()) {
        SYNTHESISE([id: 'synthetic'])
        ch_slices = SYNTHESISE.out.zarrs
            .flatten()
            .map { zarr -> [sliceMeta(sliceIdFromName(zarr.name)), zarr] }
    }
    else if (params.input) {
        ch_slices = slicesFromInput(params.input)
    }
    else {
        error "Give --input (a folder of *.ome.zarr slices or a slice_id,path CSV), or --synthetic"
    }

    // 2. Motor model: measured on every slice and fitted once, or given with --transform
    def ch_transform = channel.empty()
    def ch_pairs     = []   // all slices' pairs, sorted by name (none with --transform)
    def ch_compare   = []
    if (params.transform) {
        ch_transform = channel.value(file(params.transform, checkIfExists: true))
    }
    else {
        MEASURE_PAIRS(ch_slices)
        ch_pairs = MEASURE_PAIRS.out.pairs
            .map { meta, json -> json }
            .collect(sort: { json -> json.name })   // sorted: the same command line on -resume

        FIT_AFFINE(ch_pairs.map { jsons -> [[id: 'motor'], jsons] })
        ch_transform = FIT_AFFINE.out.transform.map { meta, json -> json }   // a value: reused per slice

        COMPARE(MEASURE_PAIRS.out.pairs, ch_transform)
        ch_compare = COMPARE.out.compare
            .map { meta, json -> json }
            .collect(sort: { json -> json.name })
    }

    // 3. Stitch every slice with the one motor model
    def flatfield = params.flatfield in ['estimate', 'none'] ? [] : file(params.flatfield, checkIfExists: true)
    STITCH(ch_slices, ch_transform, flatfield)

    // 4. Report
    REPORT(
        ch_transform.map { json -> [[id: 'report'], json] },
        ch_pairs,
        ch_compare,
        STITCH.out.zarr.map { meta, zarr -> zarr }.collect(sort: { zarr -> zarr.name })
    )
}

// Slice id: the last number in the store name (mosaic_grid_3d_z07.ome.zarr -> 7)
def sliceIdFromName(name) {
    def numbers = name.toString().replace('.ome.zarr', '').findAll(/\d+/)
    if (!numbers) {
        error "No slice number in the name '${name}'"
    }
    return numbers[-1].toInteger()
}

def sliceMeta(id) {
    def n = id.toString().trim().toInteger()
    return [id: n, prefix: "slice_z${n.toString().padLeft(2, '0')}"]
}

// --input: a folder of *.ome.zarr stores, or a CSV samplesheet slice_id,path
// (relative paths are taken from the CSV's folder, as the embedded runner does)
def slicesFromInput(input) {
    if (input.toString().endsWith('.csv')) {
        def sheet = file(input, checkIfExists: true)
        return channel.fromPath(sheet)
            .splitCsv(header: true, strip: true)
            .map { row ->
                def zarr = row.path.contains('://') ? file(row.path) : sheet.parent.resolve(row.path)
                if (!zarr.exists()) {
                    error "${sheet.name}: slice ${row.slice_id}: no such store '${row.path}'"
                }
                [sliceMeta(row.slice_id), zarr]
            }
    }
    return channel.fromPath("${input}/*.ome.zarr", type: 'dir', checkIfExists: true)
        .map { zarr -> [sliceMeta(sliceIdFromName(zarr.name)), zarr] }
}
