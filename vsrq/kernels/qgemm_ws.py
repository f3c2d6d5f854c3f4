"""Hand-scheduled, warp-specialized Hopper int8 GEMM (Triton's Gluon dialect) with our epilogue.

Why this exists: the Triton-language GEMMs of :mod:`vsrq.kernels.qgemm` leave the schedule to the
compiler. The best of them (``persistent``, 128x256x128, 4 stages) runs ~1170 int8 TOPS on an H100,
59 % of the int8 peak, while cuBLAS fp8 with scalar scales shows the chip doing ~1.2x more on the
same shape; Triton's automatic warp specialization changed nothing (docs/PERF.md, GPU run 7). Here
the schedule is written out by hand, CUTLASS-style:

* one **producer warp** issues the TMA loads of A (M, K) and B (N, K) K-tiles into a ring of
  ``STAGES`` shared-memory stages, each stage with a *ready* mbarrier (TMA bytes landed) and an
  *empty* mbarrier (consumers done with it); it runs ahead across tile boundaries, so the next
  tile's first stages load during the current tile's epilogue;
* two **consumer warpgroups** issue wgmma (int8 x int8 -> int32, exact) with one MMA group in
  flight, releasing each stage once the MMA that read it retired. Two schedules:
  ``pingpong``: each warpgroup owns whole tiles (even / odd tiles of the CTA), so one warpgroup's
  epilogue overlaps the other's main loop (the shared ring hands the tensor cores over in tile
  order); ``coop``: both warpgroups split one BLOCK_M x BLOCK_N tile by rows (64 each), the
  epilogue not overlapped but the loads still prefetched;
* a **persistent** grid (one CTA per SM) walking the tiles in grouped (L2-friendly) order.

The epilogue is the one of ``qgemm``'s per-channel mode, computed in the wgmma register layout:
y = acc * sa[m] * sw[n] (+ bias[n]) (-> GELU tanh) (* gate[m, n]) (+ residual[m, n]), stored as
the output dtype. Not handled here (the Triton kernels stay for them): K-groups, zero points,
low-rank branches, fp8 operands, non-Hopper devices, the interpreter.

Status (docs/PERF.md, GPU run 9, H100, triton 3.6): bit-identical to ``persistent`` on every check;
``coop`` 128x256x128 runs at 0.89-0.93x ``persistent``'s speed where K <= 3072 and 1.04x at K=10240
(the register-layout epilogue is not overlapped and costs ~2x Triton's), ``pingpong`` slower still; so
it is *not* registered in ``qgemm``'s dispatcher: an experiment kept as the base for the next steps (a
TMA-store epilogue of its own (``qgemm``'s Triton kernels got one in GPU run 11: -1 to +3 %), staggered
epilogues, cluster multicast); nothing in vsrq calls it but scripts/bench_gemm_ws.py.

Gluon's API moves between Triton versions: this was written against triton 3.6 (the GPU machine)
and only has to *import* on newer ones (3.9 here); when the dialect is missing, :func:`ws_available`
is False.
"""

from __future__ import annotations

import torch

from vsrq.kernels._triton import capability, device_index, interpreting, max_shared_memory, num_sms
from vsrq.kernels.qgemm import gemm_args

__all__ = ["ws_available", "ws_supports", "launch_ws", "ws_configs", "qgemm_ws", "GLUON_ERROR"]

try:  # the dialect is experimental: any import problem means "not available", never an error
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    _jit = gluon.jit
    GLUON_ERROR: str | None = None
    if not hasattr(gl, "warp_specialize") or not hasattr(tma, "async_copy_global_to_shared"):
        GLUON_ERROR = "this triton's gluon lacks warp_specialize / tma.async_copy_global_to_shared"
except Exception as e:  # noqa: BLE001 - absent, renamed or broken: report, do not raise
    gluon = gl = mbarrier = tma = warpgroup_mma = warpgroup_mma_wait = TensorDescriptor = None

    def _jit(fn):  # keeps the module importable; the functions are never launched
        return fn

    GLUON_ERROR = f"{type(e).__name__}: {e}"


# ----------------------------------------------------------------------------- device code


@_jit
def _tile_mn(tile_id, num_pid_m, num_pid_n, GROUP_M: gl.constexpr):
    """Grouped tile order (as qgemm's ``_tile_coords``): GROUP_M row blocks share B tiles in L2."""
    num_in_group = GROUP_M * num_pid_n
    first_m = (tile_id // num_in_group) * GROUP_M
    group_rows = gl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (tile_id % num_in_group) % group_rows
    pid_n = (tile_id % num_in_group) // group_rows
    return pid_m, pid_n


@_jit
def _producer(a_desc, b_desc, a_bufs, b_bufs, ready, empty, M, N, K,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
              GROUP_M: gl.constexpr, STAGES: gl.constexpr):
    """One warp: TMA loads of every K-tile of every tile this CTA owns, STAGES ahead of the MMAs."""
    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    num_pid_m = gl.cdiv(M, BLOCK_M)
    num_pid_n = gl.cdiv(N, BLOCK_N)
    my_tiles = gl.cdiv(num_pid_m * num_pid_n - pid, nprog)
    k_tiles = gl.cdiv(K, BLOCK_K)
    nbytes: gl.constexpr = (BLOCK_M + BLOCK_N) * BLOCK_K  # int8; TMA counts zero-filled bytes too
    cnt = 0
    for t in range(my_tiles):
        pid_m, pid_n = _tile_mn(pid + t * nprog, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        for kk in range(k_tiles):
            s = cnt % STAGES
            # a fresh mbarrier counts as having completed the phase before phase 0: the first
            # STAGES waits pass at once
            mbarrier.wait(empty.index(s), ((cnt // STAGES) & 1) ^ 1)
            bar = ready.index(s)
            mbarrier.expect(bar, nbytes)
            tma.async_copy_global_to_shared(a_desc, [off_m, kk * BLOCK_K], bar, a_bufs.index(s))
            tma.async_copy_global_to_shared(b_desc, [off_n, kk * BLOCK_K], bar, b_bufs.index(s))
            cnt += 1


@_jit
def _gelu_tanh(y):
    """GELU tanh approximation with the hardware tanh (as qgemm's ``_gelu_tanh`` on the GPU)."""
    u = 0.7978845608028654 * (y + 0.044715 * y * y * y)
    t = gl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [u], dtype=gl.float32, is_pure=True, pack=1)
    return 0.5 * y * (1.0 + t)


@_jit
def _consumer(a_bufs, b_bufs, ready, empty, order, c_ptr, sa_ptr, sw_ptr, bias_ptr, gate_ptr, res_ptr,
              M, N, K, stride_cm, stride_sam, stride_swn, stride_gm, stride_resm,
              HAS_BIAS: gl.constexpr, ACT_GELU: gl.constexpr, HAS_GATE: gl.constexpr, HAS_RES: gl.constexpr,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, GROUP_M: gl.constexpr,
              STAGES: gl.constexpr, COOP: gl.constexpr, INSTR_N: gl.constexpr, CID: gl.constexpr):
    """One warpgroup: wgmma main loop over the stages its tiles use, then the epilogue.

    pingpong (COOP=0): tiles CID, CID+2, ... of this CTA, whole BLOCK_M rows; the main loops take
    turns (``order``): warpgroup CID starts its j-th main loop once the other one has issued the MMAs
    of the tile before. Without the turns the warpgroup a whole tile ahead would wait on *ready*
    barriers more than one phase ahead, where an mbarrier's parity wait cannot tell phases apart
    (seen on the GPU: hangs and wrong sums once K-tiles per tile exceed STAGES).
    coop (COOP=1): every tile, rows [CID*BLOCK_M/2, (CID+1)*BLOCK_M/2) of it.
    """
    WG_M: gl.constexpr = BLOCK_M // (1 + COOP)
    ROW0: gl.constexpr = CID * WG_M * COOP
    FIRST: gl.constexpr = CID * (1 - COOP)
    STEP: gl.constexpr = 2 - COOP
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, INSTR_N, 32])
    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    num_pid_m = gl.cdiv(M, BLOCK_M)
    num_pid_n = gl.cdiv(N, BLOCK_N)
    my_tiles = gl.cdiv(num_pid_m * num_pid_n - pid, nprog)
    k_tiles = gl.cdiv(K, BLOCK_K)
    acc = gl.zeros([WG_M, BLOCK_N], gl.int32, layout=mma)
    for t in range(FIRST, my_tiles, STEP):
        pid_m, pid_n = _tile_mn(pid + t * nprog, num_pid_m, num_pid_n, GROUP_M)
        off_m = pid_m * BLOCK_M + ROW0
        off_n = pid_n * BLOCK_N
        base = t * k_tiles  # the ring position of this tile's first K-tile (producer order)
        if COOP == 0:
            # j-th own tile (j = t // 2): warpgroup 0 needs the other's j-th turn-over (none for j = 0:
            # parity 1 of a fresh barrier passes), warpgroup 1 the (j+1)-th
            mbarrier.wait(order.index(CID), ((t // 2) & 1) ^ (1 - CID))
        for kk in range(k_tiles):
            cnt = base + kk
            s = cnt % STAGES
            mbarrier.wait(ready.index(s), (cnt // STAGES) & 1)
            a = a_bufs.index(s).slice(ROW0, WG_M)
            b = b_bufs.index(s).permute((1, 0))  # (BLOCK_K, BLOCK_N) view, K-major: int8 wgmma's form
            acc = warpgroup_mma(a, b, acc, use_acc=kk > 0, is_async=True)
            # one MMA group in flight: the one before it retired, so its stage can be refilled
            acc = warpgroup_mma_wait(1, deps=(acc,))
            mbarrier.arrive(empty.index((cnt + STAGES - 1) % STAGES), pred=kk > 0)
        if COOP == 0:
            mbarrier.arrive(order.index(1 - CID))  # the other warpgroup's turn
        acc = warpgroup_mma_wait(0, deps=(acc,))
        mbarrier.arrive(empty.index((base + k_tiles - 1) % STAGES))
        _epilogue(acc, off_m, off_n, M, N, c_ptr, sa_ptr, sw_ptr, bias_ptr, gate_ptr, res_ptr,
                  stride_cm, stride_sam, stride_swn, stride_gm, stride_resm,
                  HAS_BIAS, ACT_GELU, HAS_GATE, HAS_RES, WG_M, BLOCK_N, mma)


@_jit
def _epilogue(acc, off_m, off_n, M, N, c_ptr, sa_ptr, sw_ptr, bias_ptr, gate_ptr, res_ptr,
              stride_cm, stride_sam, stride_swn, stride_gm, stride_resm,
              HAS_BIAS: gl.constexpr, ACT_GELU: gl.constexpr, HAS_GATE: gl.constexpr, HAS_RES: gl.constexpr,
              WG_M: gl.constexpr, BLOCK_N: gl.constexpr, mma: gl.constexpr):
    """y = acc sa sw (+ bias) (-> GELU) (* gate) (+ residual), stored, all in the wgmma register layout
    (no shared-memory round trip; the stores are 4-byte pairs of columns)."""
    rm = off_m + gl.arange(0, WG_M, layout=gl.SliceLayout(1, mma))
    rn = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma))
    m_mask = rm < M
    n_mask = rn < N
    rm_l = gl.where(m_mask, rm, 0)
    rn_l = gl.where(n_mask, rn, 0)
    s_a = gl.load(sa_ptr + rm_l * stride_sam)
    s_w = gl.load(sw_ptr + rn_l * stride_swn).to(gl.float32)
    y = acc.to(gl.float32) * gl.expand_dims(s_a, 1) * gl.expand_dims(s_w, 0)
    if HAS_BIAS:
        bv = gl.load(bias_ptr + rn_l)
        y = y + gl.expand_dims(bv, 0)
    if ACT_GELU:
        y = _gelu_tanh(y)
    mask = gl.expand_dims(m_mask, 1) & gl.expand_dims(n_mask, 0)
    rm2 = gl.expand_dims(rm, 1)
    rn2 = gl.expand_dims(rn, 0)
    if HAS_GATE:
        g = gl.load(gate_ptr + rm2 * stride_gm + rn2, mask=mask, other=0.0)
        y = y * g.to(gl.float32)
    if HAS_RES:
        r = gl.load(res_ptr + rm2 * stride_resm + rn2, mask=mask, other=0.0)
        y = y + r.to(gl.float32)
    gl.store(c_ptr + rm2 * stride_cm + rn2, y.to(c_ptr.dtype.element_ty), mask=mask)


@_jit
def _qgemm_ws_kernel(a_desc, b_desc, c_ptr, sa_ptr, sw_ptr, bias_ptr, gate_ptr, res_ptr,
                     M, N, K, stride_cm, stride_sam, stride_swn, stride_gm, stride_resm,
                     HAS_BIAS: gl.constexpr, ACT_GELU: gl.constexpr, HAS_GATE: gl.constexpr, HAS_RES: gl.constexpr,
                     BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, GROUP_M: gl.constexpr,
                     STAGES: gl.constexpr, COOP: gl.constexpr, INSTR_N: gl.constexpr,
                     CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr):
    a_bufs = gl.allocate_shared_memory(gl.int8, [STAGES, BLOCK_M, BLOCK_K], a_desc.layout)
    b_bufs = gl.allocate_shared_memory(gl.int8, [STAGES, BLOCK_N, BLOCK_K], b_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    order = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(order.index(0), count=1)
    mbarrier.init(order.index(1), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        # one arrival per consuming warpgroup: both in coop mode, the tile's owner in pingpong
        mbarrier.init(empty.index(i), count=1 + COOP)
    # the two consumer warpgroups run the same function (CID 0: the default partition, 4 warps;
    # CID 1: a 4-warp worker), the producer is a 1-warp worker
    gl.warp_specialize([
        (_consumer, (a_bufs, b_bufs, ready, empty, order, c_ptr, sa_ptr, sw_ptr, bias_ptr, gate_ptr, res_ptr,
                     M, N, K, stride_cm, stride_sam, stride_swn, stride_gm, stride_resm,
                     HAS_BIAS, ACT_GELU, HAS_GATE, HAS_RES, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, STAGES, COOP,
                     INSTR_N, 0)),
        (_consumer, (a_bufs, b_bufs, ready, empty, order, c_ptr, sa_ptr, sw_ptr, bias_ptr, gate_ptr, res_ptr,
                     M, N, K, stride_cm, stride_sam, stride_swn, stride_gm, stride_resm,
                     HAS_BIAS, ACT_GELU, HAS_GATE, HAS_RES, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, STAGES, COOP,
                     INSTR_N, 1)),
        (_producer, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, M, N, K,
                     BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, STAGES)),
    ], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])


# ----------------------------------------------------------------------------- host side

# Candidate configs. pingpong: each consumer warpgroup owns a BLOCK_M x BLOCK_N tile (int32
# accumulator: BLOCK_M*BLOCK_N/128 registers per thread, so 128x128 or 64x256); coop: the two
# split a 128 x BLOCK_N tile. Shared memory: STAGES * (BLOCK_M + BLOCK_N) * BLOCK_K bytes <= 227 KB.
# 12 warps in all (4 + 4 + the producer's warpgroup): maxnreg 168 = 64K registers / 384 threads,
# then setmaxnreg moves registers from the producer to the consumers.
_BASE = {"GROUP_M": 8, "INSTR_N": 128, "maxnreg": 168, "consumer_regs": 232, "producer_regs": 40}
WS_CONFIGS: list[dict] = [  # best measured first (GPU run 9: TOPS at M=16384, K=N=3072 / M=34560, K=10240, N=2560)
    dict(_BASE, name="coop128x256x128s4", mode="coop", BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, STAGES=4),  # 1078 / 1256
    dict(_BASE, name="coop128x256x64s8", mode="coop", BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, STAGES=8),  # 945 / 1160
    dict(_BASE, name="pp128x128x128s6", mode="pingpong", BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, STAGES=6),  # 1010 / 987
    dict(_BASE, name="pp64x256x128s5", mode="pingpong", BLOCK_M=64, BLOCK_N=256, BLOCK_K=128, STAGES=5),  # 861 / 1025
    dict(_BASE, name="pp128x128x64s12", mode="pingpong", BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, STAGES=12),  # 815 / 817
]


def _smem_bytes(cfg: dict) -> int:
    ring = cfg["STAGES"] * (cfg["BLOCK_M"] + cfg["BLOCK_N"]) * cfg["BLOCK_K"]
    return ring


def ws_configs(device: int = 0) -> list[dict]:
    """The candidate configs whose ring fits the device's shared memory."""
    limit = max_shared_memory(device)
    return [c for c in WS_CONFIGS if _smem_bytes(c) + 1024 <= limit]


def ws_available(device: torch.device | int | None = None) -> bool:
    """True only where the kernel can run: a Hopper (sm_90) GPU, Gluon importable, no interpreter."""
    if GLUON_ERROR is not None or interpreting() or not torch.cuda.is_available():
        return False
    if isinstance(device, torch.device):
        if device.type != "cuda":
            return False
        device = device.index if device.index is not None else torch.cuda.current_device()
    idx = torch.cuda.current_device() if device is None else int(device)
    return capability(idx)[0] == 9


def ws_supports(args: dict) -> bool:
    """Whether ``launch_ws`` handles a ``qgemm`` argument dict (else the Triton kernels run)."""
    a, b = args["a"], args["b"]
    if not (a.is_cuda and ws_available(a.device)):
        return False
    if args["group"] or args["asym"] or args["fp8"] or args["has_lora"]:
        return False
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        return False
    return (  # TMA: 16-byte aligned rows and base addresses
        a.shape[1] % 16 == 0 and a.stride(0) % 16 == 0 and b.stride(0) % 16 == 0
        and a.data_ptr() % 16 == 0 and b.data_ptr() % 16 == 0
        and a.stride(1) == 1 and b.stride(1) == 1
    )


def launch_ws(args: dict, cfg: dict) -> None:
    """Run the warp-specialized kernel on a ``qgemm`` argument dict (see ``qgemm()``): c = epilogue(a b^T)."""
    if GLUON_ERROR is not None:
        raise RuntimeError(f"gluon unavailable: {GLUON_ERROR}")
    a, b, c = args["a"], args["b"], args["c"]
    m, k = a.shape
    n = b.shape[0]
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    coop = 1 if cfg["mode"] == "coop" else 0
    swz = min(128, bk)  # bytes of one int8 K row of a tile
    a_layout = gl.NVMMASharedLayout(swizzle_byte_width=swz, element_bitwidth=8, rank=2)
    b_layout = gl.NVMMASharedLayout(swizzle_byte_width=swz, element_bitwidth=8, rank=2)
    a_desc = TensorDescriptor(a, [m, k], [a.stride(0), 1], [bm, bk], a_layout)
    b_desc = TensorDescriptor(b, [n, k], [b.stride(0), 1], [bn, bk], b_layout)
    st = args["strides"]  # (sam, sag, swn, swg, zwn, zwg, rsm, hm, lur, gm, resm)
    tiles = -(-m // bm) * -(-n // bn)
    grid = (min(tiles, cfg.get("max_progs") or num_sms(device_index(a))),)
    _qgemm_ws_kernel[grid](
        a_desc, b_desc, c, args["sa"], args["sw"], args["bias"], args["gate"], args["res"],
        m, n, k, c.stride(0), st[0], st[2], st[9], st[10],
        HAS_BIAS=args["has_bias"], ACT_GELU=args["gelu"], HAS_GATE=bool(args["has_gate"]), HAS_RES=args["has_res"],
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg["GROUP_M"], STAGES=cfg["STAGES"], COOP=coop,
        INSTR_N=cfg["INSTR_N"], CONSUMER_REGS=cfg["consumer_regs"], PRODUCER_REGS=cfg["producer_regs"],
        num_warps=4, maxnreg=cfg["maxnreg"],
    )


def qgemm_ws(
    qa: torch.Tensor,
    sa: torch.Tensor,
    qw: torch.Tensor,
    sw: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    gate: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    out: torch.Tensor | None = None,
    config: dict | None = None,
) -> torch.Tensor:
    """Direct entry (benchmarks, checks): ``qgemm``'s per-channel mode on this kernel only; the
    operands are checked by ``qgemm``'s own `gemm_args` (ValueError where they are not)."""
    args = gemm_args(qa, sa, qw, sw, bias=bias, activation=activation, gate=gate, residual=residual,
                     out_dtype=out_dtype, out=out)
    c = args["c"]
    if args["group"] or sa.shape[1] != 1 or sw.shape[1] != 1:
        raise ValueError("qgemm_ws takes per-token (M, 1) and per-channel (N, 1) scales only")
    if not ws_supports(args):
        raise ValueError("qgemm_ws: operands or device not supported (needs sm_90, int8, 16-byte rows)")
    launch_ws(args, config or ws_configs(device_index(qa))[0])
    return c
