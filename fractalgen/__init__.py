"""fractalgen: FractalGen (Li, Sun, Fan, He, 2025) trained with PyTorch Lightning + versionkit."""

__version__ = "0.1.0"
