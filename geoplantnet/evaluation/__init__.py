"""Evaluation: each product's outputs compared with the virtual region's truth, one module per product, registered by
product name. With the inputs provider (:mod:`geoplantnet.runs.inputs`) the only code that sees the simulator."""
