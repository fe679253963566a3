"""Triton kernels (installed as sdsat_vllm.kernels), each beside a pure-PyTorch reference."""
