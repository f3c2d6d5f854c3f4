"""Fused low-bit inference kernels (Triton) and their pure-torch reference.

``reference`` is always importable; the Triton modules (``act_quant``, ``qgemm``,
``unpack``, ``linear``) import triton and are loaded on demand, so CPU-only installs
without triton still work. See docs/PERF.md ("Kernels") for measurements.
"""

from vsrq.kernels._triton import can_run_triton, interpreting, triton_available

__all__ = ["can_run_triton", "interpreting", "triton_available"]
