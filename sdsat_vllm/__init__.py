"""SDSAT: speculative decoding with semantic adaptive tokens, on transformers and inside vLLM.

Importing this package imports nothing heavy; `sdsat_vllm.vllm_plugin` is the only part that
needs vLLM.
"""

from .config import SDSATConfig, SDSATConfigError

__all__ = ["SDSATConfig", "SDSATConfigError"]
__version__ = "0.1.0"
