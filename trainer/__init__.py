"""lstm-edge trainer: fit Keras LSTMs/GRUs on sensor CSVs and export them to streaming ONNX."""
