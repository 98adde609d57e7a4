"""Subquadratic students: token mixers on the shared kernels, their registry, and surgery from a teacher."""
from students.base import Features, Mixer, MixerConfig, RecurrentMixer
from students.registry import available, build_mixer, mixer_class

__all__ = ["Mixer", "MixerConfig", "RecurrentMixer", "Features", "available", "build_mixer", "mixer_class"]
