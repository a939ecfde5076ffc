"""StyleSDF's networks, state_dict-compatible with the official checkpoints: renderer mapping, FiLM-SIREN
SDF volume renderer, StyleGAN2 decoder, both discriminators, cameras, and the assembled Generator."""
from . import cameras
from .cameras import generate_camera_params
from .decoder import Decoder
from .discriminators import Discriminator, VolumeRenderDiscriminator
from .generator import Generator, generator_config_from_state_dict, load_generator
from .renderer import SirenGenerator, VolumeFeatureRenderer, make_renderer_mapping

__all__ = [
    "cameras",
    "generate_camera_params",
    "Decoder",
    "Discriminator",
    "VolumeRenderDiscriminator",
    "Generator",
    "generator_config_from_state_dict",
    "load_generator",
    "SirenGenerator",
    "VolumeFeatureRenderer",
    "make_renderer_mapping",
]
