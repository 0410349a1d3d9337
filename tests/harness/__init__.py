"""The crash-and-replay harness: generated app shapes, run undisturbed and with drivers killed.

`shapes` is the interpreter app and the Hypothesis strategy of programs; `drive` runs one
program undisturbed and disturbed (SIGKILLs, store faults, flipped bytes) and checks the
promises; `soak` loops over random programs for a time budget (`scripts/soak`).
"""
