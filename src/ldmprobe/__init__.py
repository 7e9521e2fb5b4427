"""ldmprobe: linear probes of a latent diffusion model's self-attention, step by step."""

__version__ = "0.1.0"
