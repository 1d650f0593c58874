"""textvae: sentence-level variational autoencoders."""

__version__ = "0.1.0"

__all__ = ["TextVAE", "__version__"]


def __getattr__(name: str):
    # Lazy: `import textvae` (and so the CLI's start-up) does not import torch.
    if name == "TextVAE":
        from textvae.api import TextVAE

        return TextVAE
    raise AttributeError(f"module 'textvae' has no attribute {name!r}")
