"""The machine a run is on, and the precision it computes fastest in.

bf16 is only fast where the hardware computes it: on a CPU with AMX or AVX512-BF16 (oneDNN's
bf16 kernels), on an NVIDIA GPU from Ampere on. Elsewhere autocast emulates it: on a 2-core AMD
EPYC with AVX2 only, the quickstart's step takes 19-21 s in bf16 against 1.5-1.9 s in fp32
(bench/README.md, CPU training step). `mixed_precision: auto` therefore picks from what torch
reports about the device, through `choose_precision`, a pure function of those facts.
"""

import os
import platform

import torch


# The environment variables that cap the instruction sets torch's CPU libraries use (oneDNN, ATen, MKL); set,
# they make a CPU with AMX behave as an AVX2-only one (the CPU step bench uses them so).
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo (or the platform) gives it."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_facts(device: str = "cpu") -> dict:
    """What decides the precision, as torch reports it: for a CPU its model, cores, instruction sets and whether
    oneDNN has bf16 kernels for it; for a CUDA GPU its name and whether it computes bf16."""
    if str(device).startswith("cuda"):
        return {
            "type": "cuda",
            "name": torch.cuda.get_device_name(torch.device(device)),
            "bf16": bool(torch.cuda.is_bf16_supported(including_emulation=False)),
        }
    facts = {
        "type": "cpu",
        "name": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "isa": torch.backends.cpu.get_cpu_capability(),  # the vector width ATen's kernels use: AVX2, AVX512, ...
        "avx512": bool(torch.cpu._is_avx512_supported()),
        "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
        "amx": bool(torch.cpu._is_amx_tile_supported()),
        "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    }
    caps = {name: os.environ[name] for name in ISA_CAPS if name in os.environ}
    if caps:
        facts["isa_capped_by"] = caps
    return facts


def native_bf16(facts: dict) -> bool:
    """The device computes bf16 in hardware: a GPU that says so, or a CPU with AMX or AVX512-BF16 that oneDNN uses
    (an instruction-set cap such as ONEDNN_MAX_CPU_ISA=AVX2 turns oneDNN's bf16 kernels off)."""
    if facts["type"] == "cuda":
        return facts["bf16"]
    return (facts["amx"] or facts["avx512_bf16"]) and facts["onednn_bf16"]


def describe_device(facts: dict) -> str:
    """'Intel(R) Xeon(R) Processor, 2 cores, AMX + AVX512-BF16' or 'NVIDIA H200'."""
    if facts["type"] == "cuda":
        return f"{facts['name']} ({'bf16' if facts['bf16'] else 'no bf16'})"
    if facts["amx"] or facts["avx512_bf16"]:
        features = " + ".join(name for name, key in (("AMX", "amx"), ("AVX512-BF16", "avx512_bf16")) if facts[key])
    else:
        features = "no bf16 instructions"
    cap = f", capped at {facts['isa']}" if facts.get("isa_capped_by") else ""
    return f"{facts['name']}, {facts['cores']} cores, {facts['isa']} kernels, {features}{cap}"


def choose_precision(requested: str, facts: dict) -> tuple[str, str]:
    """The mixed precision to run in ("no", "fp16" or "bf16") and why, from the requested one and the device."""
    if requested != "auto":
        if requested == "bf16" and not native_bf16(facts):
            return requested, (
                f"bf16 as asked, but {describe_device(facts)} has no native bf16: autocast emulates it, about 10x "
                "slower than fp32 on such CPUs; pass --mixed_precision no (or auto)"
            )
        return requested, "as asked"
    if native_bf16(facts):
        return "bf16", "auto: the device computes bf16 natively"
    if facts["type"] == "cuda":
        return "fp16", "auto: this GPU has no bf16, so fp16 with the grad scaler"
    return "no", "auto: no native bf16 on this CPU (autocast would emulate it, about 10x slower), so fp32"


def sampling_dtype(requested: str, device: str) -> str:
    """`--dtype auto` of sampling and evaluation: bf16 where the device computes it natively, else fp16 on a GPU,
    else fp32; an explicit dtype is kept."""
    if requested != "auto":
        return requested
    precision, _ = choose_precision("auto", device_facts(device))
    return {"no": "fp32"}.get(precision, precision)
