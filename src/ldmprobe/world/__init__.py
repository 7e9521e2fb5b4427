"""The known-answer world experiment: training its diffusion model (``train``), the world's
prompt table (``prompts``) and the quality of the trained models and of the blob fit
(``quality``). The world itself (renderer, fit, networks) is ``ldmprobe.scenes``."""
