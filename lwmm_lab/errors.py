"""The one exception lwmm_lab raises for bad input, and the warning for an unknown depth order."""


class LwmmError(Exception):
    """Bad input: a message of one line that names the file, key or value and what is wrong.

    The CLI prints it as ``lwmm: error: <message>`` and exits with status 1, without a traceback.
    """


class DepthOrderWarning(UserWarning):
    """A checkpoint does not say in which order its tensors sit in the model.

    The layer-wise schedule needs the model's ``state_dict`` order; a foreign safetensors file
    without a model spec only gives its keys sorted (``decoder.*`` before ``encoder.*``).
    """
