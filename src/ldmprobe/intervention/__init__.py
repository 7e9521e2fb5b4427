"""The intervention experiment: edit a layer's activation through its trained probe so that the
probe reads a translated scene, continue denoising, and measure whether the object moved.

``targets``: the translated target (offset, fill rules, target units); ``optimise``: the edit
of one activation through a probe; ``conditions``: the edit and its controls (random probe,
permuted U-Net's probe, identity target); ``scores``: how far the object moved and what the
edit cost the image; ``summary``: bootstrap intervals over images.
"""
