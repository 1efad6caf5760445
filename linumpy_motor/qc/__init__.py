"""Quality control: can each slice's stitch be trusted, and the report that shows why.

Modules
-------
verdict
    Each slice's verdict from the data: the tiles it names, the evidence, and the rules that judge it ok,
    check or failed.
compare
    Motor-model positions against registration positions.
report
    The QC report folder (:func:`report.write_report`), built from :mod:`.inputs`, :mod:`.thumbnail`,
    :mod:`.html` and :mod:`.figures` (each PNG planned as a value, drawn by :mod:`.plots` wherever a core
    is free; :mod:`.outlines` places the tiles drawn over them).
summary
    The end of a run in a few lines, and the exit code it implies.
"""

__all__ = ["compare", "figures", "html", "inputs", "outlines", "plots", "report", "summary", "thumbnail", "verdict"]
