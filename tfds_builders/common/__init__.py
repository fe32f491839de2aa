"""Helpers shared by the moeImouto and DAF:re builders.

`image_check` sniffs encoded images without decoding them, `label_csv` reads
the Animesion split and class files, `build_report` counts and lists what a
build skipped, `manual_data` finds the user's download and explains what is
missing, `parallel` reads files on a thread pool in a fixed order, and
`class_counts` stores each split's examples per class at build time and reads
them back (`split_class_counts`) for evaluation and statistics.
"""
