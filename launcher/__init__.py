"""launcher: recipe -> plan -> executor -> engine, for fine-tuning BERT-family encoders."""

__version__ = "0.1.0"
