"""FractalGen model (plain PyTorch, no Lightning): levels, pixel head, factories."""

from __future__ import annotations

from fractalgen.model.fractalgen import (
    FractalGen,
    ModelError,
    build_model,
    fractalar_in64,
    fractalmar_base_in256,
    fractalmar_huge_in256,
    fractalmar_in64,
    fractalmar_large_in256,
)

__all__ = [
    "FACTORIES",
    "FractalGen",
    "ModelError",
    "build_model",
    "fractalar_in64",
    "fractalmar_base_in256",
    "fractalmar_huge_in256",
    "fractalmar_in64",
    "fractalmar_large_in256",
]

FACTORIES = {
    "fractalar_in64": fractalar_in64,
    "fractalmar_in64": fractalmar_in64,
    "fractalmar_base_in256": fractalmar_base_in256,
    "fractalmar_large_in256": fractalmar_large_in256,
    "fractalmar_huge_in256": fractalmar_huge_in256,
}
