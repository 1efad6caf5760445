// The installed library's version and source hash (linum_motor_version.py), read once per run.
// `cache false`: never reused, so that a changed library changes every task's inputs (and hash).
process LIBRARY_VERSION {
    tag 'linumpy-motor'
    label 'process_single'
    container 'ghcr.io/linum-uqam/linumpy-motor:0.1.0'
    cache false

    output:
    stdout emit: version

    script:
    """
    linum_motor_version.py
    """

    stub:
    """
    linum_motor_version.py
    """
}
