"""Running a package: the engine (pre-ops -> onnxruntime session -> post-ops, padded and tiled; engine.py), the
session, tiling and stitching, the kinds of outputs a description has (outputs.py: box lists), and the package's
test tensors as the reference runs are compared with."""
