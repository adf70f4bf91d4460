"""Small test helpers shared by several test modules (import as ``from helpers import ...``)."""


class Counted:
    """Wrap an eps model and count its calls and the timesteps asked for (forwards the contract)."""

    def __init__(self, model):
        self.model, self.calls, self.timesteps = model, 0, []
        self.schedule, self.sample_size, self.in_channels = model.schedule, model.sample_size, model.in_channels

    def __call__(self, x, t):
        self.calls += 1
        self.timesteps.append(t)
        return self.model(x, t)
