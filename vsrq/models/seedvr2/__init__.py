"""SeedVR2 models re-implemented for vsrq.

dit: the NaDiT diffusion transformer (3B and 7B), dense windowed attention, and its key map.
vae: the causal 3D video VAE (video_vae_v3, s8 c16 t4) and its official-checkpoint key map.
"""

from .vae import SeedVR2VAE, SeedVR2VAEConfig
from .vae_keys import check_vae_state, load_official_vae, vae_state_from_official

from .dit import SeedVR2DiT, SeedVR2DiTConfig
from .dit_keys import check_dit_state, dit_state_from_official, infer_dit_preset, load_official_dit
