"""splatvlm: text to 3D Gaussian splats with multi-view SDS and a differentiable VLM reward."""

__version__ = "0.1.0"
