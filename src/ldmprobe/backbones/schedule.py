"""The noise schedule's arithmetic behind the default x0 preview (``Backbone.predict_x0``):
the signal fraction of the denoiser's input at a call, and x0 from a noise, v or sample
prediction. Moved here from generation, which the seam must not import."""


def alpha_bar(scheduler, timestep) -> float:
    """Signal fraction of the U-Net input at this call, whatever space the scheduler steps in."""
    if float(scheduler.init_noise_sigma) > 1.0:
        # Sigma-space schedulers (LMS, Euler): the U-Net sees x / sqrt(sigma^2 + 1).
        sigma = float(scheduler.sigmas[scheduler.step_index])
        return 1.0 / (1.0 + sigma**2)
    return float(scheduler.alphas_cumprod[int(round(float(timestep)))])


def predict_x0(sample, model_output, abar: float, prediction_type: str):
    if prediction_type == "epsilon":
        return (sample - (1 - abar) ** 0.5 * model_output) / abar**0.5
    if prediction_type == "v_prediction":
        return abar**0.5 * sample - (1 - abar) ** 0.5 * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")
