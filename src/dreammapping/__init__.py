"""dreammapping: text → 3D Gaussian Splatting with Variational Distribution Mapping (DreamMapping, CGF 2024)."""

__version__ = "0.1.0"


def generate(prompt: str, **options):
    """Run text-to-3D generation; see `dreammapping.train.generate` for the options and the result object."""
    from dreammapping.train import generate as _generate

    return _generate(prompt, **options)


__all__ = ["__version__", "generate"]
