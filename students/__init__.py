"""Subquadratic students: token mixers on the shared kernels, their registry, and surgery from a teacher."""
from students.base import Features, Mixer, MixerConfig, RecurrentMixer
from students.modeling import StudentCache, StudentConfig, StudentForCausalLM
from students.registry import available, build_mixer, check_options, mixer_class
from students.surgery import build_student, load_teacher

__all__ = ["Mixer", "MixerConfig", "RecurrentMixer", "Features", "available", "build_mixer", "check_options", "mixer_class",
           "StudentConfig", "StudentForCausalLM", "StudentCache", "build_student", "load_teacher"]
