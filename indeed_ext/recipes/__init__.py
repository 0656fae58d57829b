"""The training recipes: the indeed-train driver, its data sets, backbones, loop, studies and plots.

They use the library (indeed_ext: ops, loss, model, metrics) and are never imported by it.
"""
