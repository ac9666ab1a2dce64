"""GreenMIM: masked image modeling for hierarchical ViTs that computes on visible patches only."""
from .models.factory import build_encoder, list_encoders

__all__ = ["build_encoder", "list_encoders"]
__version__ = "0.1.0"
