"""odedit: blind face restoration with diffusion priors (ODEdit and SDEdit).

Public API (imports are lazy so that ``import odedit`` is cheap)::

    from odedit import ODEdit, SDEdit
    restorer = ODEdit.from_pretrained("path/to/model")
    restored = restorer.restore(images, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["ODEdit", "SDEdit", "ODEditConfig", "SDEditConfig", "__version__"]


def __getattr__(name: str):
    if name in ("ODEdit", "SDEdit", "ODEditConfig", "SDEditConfig"):
        from odedit import restorers

        return getattr(restorers, name)
    raise AttributeError(f"module 'odedit' has no attribute {name!r}")
