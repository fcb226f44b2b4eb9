"""Native (in-repo) classes for the released masked-diffusion LMs: LLaDA and Dream.

They load the official checkpoints by their weight names, with no `trust_remote_code`;
`dllm.load_policy` uses them by default (`implementation="native"`).
"""

from dllm.models import dream, llada
from dllm.models.dream import DreamConfig, DreamModel
from dllm.models.llada import LLaDAConfig, LLaDAModelLM

# kind (dllm.policy.KINDS) -> native model class, and the config fields it cannot do without
NATIVE_CLASSES = {"llada": LLaDAModelLM, "dream": DreamModel}
NATIVE_CONFIG_KEYS = {"llada": llada.CONFIG_KEYS, "dream": dream.CONFIG_KEYS}

__all__ = [
    "NATIVE_CLASSES",
    "NATIVE_CONFIG_KEYS",
    "DreamConfig",
    "DreamModel",
    "LLaDAConfig",
    "LLaDAModelLM",
]
