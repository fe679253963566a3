"""SAT training: the appended SAT-block layout, the trainer and the export of trained models."""
