from .discriminator import Discriminator, DiscriminatorConfig
from .generator import Generator, GeneratorConfig, SynthesisLayerInfo, truncate

__all__ = ["Discriminator", "DiscriminatorConfig", "Generator", "GeneratorConfig", "SynthesisLayerInfo", "truncate"]
