"""Subquadratic students: token mixers on the shared kernels, their registry, and surgery from a teacher."""
from students.base import Features, IntOption, Mixer, MixerConfig, RecurrentMixer
from students.modeling import StudentCache, StudentConfig, StudentForCausalLM, check_keep_attention
from students.registry import available, build_mixer, check_options, mixer_class
from students.surgery import build_student, kept_layers, load_teacher

__all__ = ["Mixer", "MixerConfig", "RecurrentMixer", "Features", "IntOption", "available", "build_mixer", "check_options",
           "mixer_class", "StudentConfig", "StudentForCausalLM", "StudentCache", "check_keep_attention", "build_student",
           "kept_layers", "load_teacher"]
