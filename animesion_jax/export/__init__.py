"""Public command, internal modules: exports of a trained model for runtimes without this package (`python -m animesion_jax.export`).

An export is a folder: the model (ONNX `model.onnx`, or serialized StableHLO `model.stablehlo`
with `variables.msgpack`) and `model.json`, the contract a consumer follows: the input's size,
resize, scale, mean and std, the class names, the run's calibration when it has one, and where
the model came from. `tools/onnx_predict.py` is such a consumer, with numpy, Pillow and
onnxruntime only. ONNX needs the `export` extra and jax2onnx (docs/export.md).
"""
