"""The model: loading it from hf://, torchvision:// or a folder, freezing, the artifact format that hands
a trained model to the exporter (and to a later fine-tune), and the preprocessing both sides share."""
