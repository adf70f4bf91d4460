"""Training an eps-prediction DDPM face prior (the ODEdit paper's setting): ``odedit train``.

A diffusers ``UNet2DModel`` (:data:`odedit.unets.UNET_CONFIGS`) learns the "simple" eps loss
of Ho et al. 2020 on the linear beta schedule; the run resumes bit-exactly from its
checkpoints and ends with the EMA weights exported as a ``save_pretrained`` folder that
:func:`odedit.models.load_model` reads. The modules:

    config       TrainConfig (every setting), TrainResult, TrainError
    losses       the objective as pure tensor functions (lr_at, min_snr_weights, denoising_loss, ...)
    checkpoints  the run folder's files: checkpoints, model export, JSON, the loss log
    loop         train(): set-up, resume, the step loop, checkpoints, samples, export
"""

from odedit.training.checkpoints import export_model, latest_checkpoint, list_checkpoints
from odedit.training.config import LR_SCHEDULES, MIXED_PRECISION, TrainConfig, TrainError, TrainResult
from odedit.training.losses import denoising_loss, lr_at, min_snr_weights, weighted_eps_loss
from odedit.training.loop import train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainError",
    "train",
    "lr_at",
    "denoising_loss",
    "latest_checkpoint",
    "list_checkpoints",
    "MIXED_PRECISION",
    "LR_SCHEDULES",
    "min_snr_weights",
    "weighted_eps_loss",
    "export_model",
]
