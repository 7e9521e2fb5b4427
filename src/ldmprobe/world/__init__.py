"""The known-answer world experiment: training its diffusion model (``train``) and its labeler
and classifier networks (``nets``), the world's prompt table (``prompts``) and the quality of the
trained models and of the blob fit (``quality``). The world itself (renderer, fit, networks'
definitions) is ``ldmprobe.scenes``."""
