"""Internal: answers that may say "unknown" or name enrolled characters.

answering (the typed answer and its one decision rule), calibration (fitted numbers),
fitting (fits them for a run), gallery (enrolled characters), grouping (clusters of unknown
pictures), split_report (open-set numbers of a split for evaluate).
"""
