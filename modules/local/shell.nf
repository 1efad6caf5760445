/*
 * Helpers for the task scripts of modules/local/*: one place for shell quoting and the task environment.
 */

// Shell words for a path or a list of paths: each one single-quoted, so a file name is always one
// argument and never code ('$(touch X) z02.ome.zarr', '${HOME}', spaces, quotes).
// Nextflow's own escaping of staged paths leaves '$' alone: this is used instead of it.
def shellQuote(paths) {
    def items = paths instanceof List ? paths : [paths]
    return items.collect { p -> "'" + p.toString().replace("'", "'\\''") + "'" }.join(' ')
}

// Exports for a task given `cpus` CPUs: the thread pools (BLAS, OpenMP, Numba, zarr) sized to the
// task, not to the host (Docker shows every core), and CuPy's kernel cache in the task folder
// (in containers HOME is '/' or not mounted, so ~/.cupy cannot be written).
def taskEnvironment(cpus) {
    def threads = ['OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS', 'NUMBA_NUM_THREADS', 'ZARR_THREADING__MAX_WORKERS']
    return 'export ' + threads.collect { name -> "${name}=${cpus}" }.join(' ') + ' CUPY_CACHE_DIR="$PWD/.cupy"'
}
