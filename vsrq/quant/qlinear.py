"""QuantLinear: a drop-in W4A4 / W8A8 replacement for ``nn.Linear``.

Holds everything a quantized DiT linear layer needs as ``state_dict`` buffers (so a
safetensors checkpoint round-trips): the packed int4 (or int8) weight, its scales and
optional zero points, the smoothing vector, the low-rank factors, the bias, and a small
``qmeta`` int tensor with the layer's configuration (``from_state_dict`` rebuilds the
layer from it), plus ``act_clip``, the float32 (1,) activation clip ratio of DRAQ
(LSGQuant's Dynamic Range Adaptive Quantizer; 1.0 = plain absmax scales).

``act_clip`` and ``qmeta``: the clip ratio is a *value* like the scales, not structure
(every layer has the buffer, whatever its config), so it is not in ``qmeta`` and the
qmeta version stays 1. A state dict without ``act_clip`` (written before it existed)
loads with act_clip = 1.0, which is exactly the numerics it was written with. The other
direction is refused: code from before act_clip rejects a checkpoint holding it as an
unexpected key, rather than silently computing unclipped activations.

``forward`` runs the fused Triton kernels on CUDA and the pure-torch reference
elsewhere (the CPU path: exact fp32 integer GEMMs where provable, see
``reference.exact_gemm_plan``); both compute the numerics defined in
``vsrq.quant.pack`` / ``vsrq.kernels.reference``, so model code never needs to know
which one ran.

Calibration (smoothing, low-rank, learned bias alignment) is another module's job: it
sets these buffers. ``from_linear`` here is plain round-to-nearest (RTN) with an
optional SVD low-rank branch.

Binary residual branch (MPQ-DMv2-style, ``vsrq.quant.binres``): ``binary_k`` > 0 entries
per output row, y += x_hat D^T with D[n, bin_idx[n, j]] = +-bin_scale[n] (sign bits packed
in ``bin_sign``). It is structure, so it is in ``qmeta`` (version 2, a 15th entry; layers
without a branch still write version 1, bit for bit as before). It runs as a plain torch
matmul of the transformed input with a cached dense D, after the main GEMM and before the
activation / gate / residual epilogue, on every device: it is not fused into the Triton
kernels (and such layers leave the opaque ``torch.compile`` op for the eager path).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn

from vsrq.kernels._triton import can_run_triton
from vsrq.kernels.reference import (
    _epilogue_ref,
    gemm_group_size,
    hadamard_matrix,
    hadamard_scale,
    quant_linear_ref,
    transform_input,
    unpack_int4_ref,
)
from vsrq.quant.pack import check_clip_ratio, dequantize_weight, pack_bits, pack_int4, quantize_weight, unpack_bits

__all__ = ["QuantLinear", "binary_index_dtype"]

_QMETA_VERSION = 1  # layers without a binary residual branch
_QMETA_VERSION_BINARY = 2  # + binary_k (entries per row of the binary residual branch)
_ACT_CODES = {None: 0, "gelu_tanh": 1}
_ACT_NAMES = {v: k for k, v in _ACT_CODES.items()}
_BACKENDS = ("auto", "triton", "reference")


def binary_index_dtype(k: int) -> torch.dtype:
    """Smallest integer container for column indices < k (what the file stores and bits/weight counts)."""
    return torch.uint8 if k <= 256 else torch.int16 if k <= 32768 else torch.int32


class QuantLinear(nn.Module):
    """y = act_fn(x W^T + b) with low-bit W and dynamically quantized x (see module doc).

    Construction fixes the structure (shapes, which buffers exist); values come from
    :meth:`from_linear`, a calibration method, or ``load_state_dict``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        w_bits: int = 4,
        a_bits: int = 4,
        group_size: int | None = None,
        act_group_size: int | None | str = "same",
        symmetric: bool = True,
        rank: int = 0,
        smooth: bool = False,
        hadamard_block: int = 0,
        activation: str | None = None,
        bias_align: bool = False,
        lowrank_dtype: torch.dtype = torch.bfloat16,
        scale_dtype: torch.dtype = torch.float16,
        cache_int8: bool = False,
        act_clip: float = 1.0,
        binary_k: int = 0,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        k, n = int(in_features), int(out_features)
        if not 2 <= w_bits <= 8 or not 2 <= a_bits <= 8:
            raise ValueError("w_bits and a_bits must be in 2..8")
        if not symmetric and w_bits == 8:
            raise ValueError("8-bit asymmetric weights do not fit the int8 container")
        agroup = group_size if act_group_size == "same" else act_group_size
        for name, g in (("group_size", group_size), ("act_group_size", agroup)):
            if g is not None and (g <= 0 or k % g):
                raise ValueError(f"{name} {g} must divide in_features={k}")
        if hadamard_block and (hadamard_block & (hadamard_block - 1) or k % hadamard_block):
            raise ValueError(f"hadamard_block {hadamard_block} must be a power of two dividing {k}")
        if activation not in _ACT_CODES:
            raise ValueError(f"activation must be one of {list(_ACT_CODES)}")
        if not 0 <= rank <= min(k, n, 128):
            raise ValueError(f"rank {rank} must be in 0..min(in, out, 128)")
        if lowrank_dtype not in (torch.bfloat16, torch.float16):
            raise ValueError("lowrank_dtype must be bfloat16 or float16")
        if not 0 <= binary_k <= k:
            raise ValueError(f"binary_k {binary_k} must be in 0..in_features={k}")
        self.in_features, self.out_features = k, n
        self.w_bits, self.a_bits = int(w_bits), int(a_bits)
        self.group_size = None if group_size in (None, k) else int(group_size)
        self.act_group_size = None if agroup in (None, k) else int(agroup)
        self.symmetric = bool(symmetric)
        self.rank = int(rank)
        self.binary_k = int(binary_k)
        self.hadamard_block = int(hadamard_block)
        self.activation = activation
        self.cache_int8 = bool(cache_int8)
        self.backend = "auto"
        self.packed = self.w_bits <= 4
        gw = 1 if self.group_size is None else k // self.group_size
        if self.packed:
            qweight = torch.zeros(n, (k + 1) // 2, dtype=torch.uint8, device=device)
        else:
            qweight = torch.zeros(n, k, dtype=torch.int8, device=device)
        self.register_buffer("qweight", qweight)
        self.register_buffer("wscale", torch.ones(n, gw, dtype=scale_dtype, device=device))
        self.register_buffer(
            "wzero", None if symmetric else torch.zeros(n, gw, dtype=torch.int8, device=device)
        )
        self.register_buffer("bias", torch.zeros(n, dtype=torch.float32, device=device) if bias else None)
        self.bias_align = (
            nn.Parameter(torch.zeros(n, dtype=torch.float32, device=device), requires_grad=False)
            if bias_align
            else None
        )
        self.register_buffer("smooth", torch.ones(k, dtype=torch.float32, device=device) if smooth else None)
        self.register_buffer(
            "lora_down", torch.zeros(k, rank, dtype=lowrank_dtype, device=device) if rank else None
        )
        self.register_buffer("lora_up", torch.zeros(rank, n, dtype=lowrank_dtype, device=device) if rank else None)
        bk = self.binary_k  # binary residual branch: column indices, packed signs, per-row scales
        idx0 = torch.arange(bk, device=device).expand(n, bk).to(binary_index_dtype(k))  # valid (ascending); scale 0
        self.register_buffer("bin_idx", idx0.contiguous() if bk else None)
        self.register_buffer("bin_sign", torch.zeros((n * bk + 7) // 8, dtype=torch.uint8, device=device) if bk else None)
        self.register_buffer("bin_scale", torch.zeros(n, dtype=torch.float16, device=device) if bk else None)
        self._bin_cache: tuple[tuple, torch.Tensor] | None = None
        self._mod_cache: tuple | None = None  # see _modulation
        self.register_buffer("qmeta", self._meta_tensor(bias, smooth, bias_align, device))
        # DRAQ activation clip ratio (a value, not config: see the module doc)
        self.register_buffer(
            "act_clip", torch.full((1,), check_clip_ratio(act_clip), dtype=torch.float32, device=device)
        )
        self._clip_cache: tuple[torch.Tensor, int, float] | None = None
        self.act_clip_float = 1.0  # set by _clip_changed (what a torch.compile'd forward reads: no .item())
        self._clip_changed()
        self._w8_cache: torch.Tensor | None = None
        self._w8_key: tuple | None = None
        self._scale_dtype = scale_dtype
        self._lowrank_dtype = lowrank_dtype

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        """Let ``.to(device)`` move everything, but keep the numerics-defining dtypes:
        ``model.half()`` must not round scales, smoothing or bias (the integer buffers
        are never touched by float casts anyway)."""
        super()._apply(fn, recurse)
        fixed = {"wscale": self._scale_dtype, "smooth": torch.float32, "bias": torch.float32,
                 "lora_down": self._lowrank_dtype, "lora_up": self._lowrank_dtype, "act_clip": torch.float32,
                 "bin_scale": torch.float16}
        for name, dt in fixed.items():
            t = self._buffers.get(name)
            if t is not None and t.dtype != dt:
                self._buffers[name] = t.to(dt)
        if self.bias_align is not None and self.bias_align.dtype != torch.float32:
            self.bias_align.data = self.bias_align.data.float()
        self._w8_cache = None
        self._bin_cache = None
        return self

    # ------------------------------------------------------------------ config <-> tensor

    def _meta_tensor(self, bias: bool, smooth: bool, bias_align: bool, device: Any) -> torch.Tensor:
        vals = [
            _QMETA_VERSION, self.in_features, self.out_features, self.w_bits, self.a_bits,
            self.group_size or 0, self.act_group_size or 0, int(self.symmetric), self.rank,
            self.hadamard_block, int(bias), int(smooth), int(bias_align), _ACT_CODES[self.activation],
        ]
        if self.binary_k:
            vals[0] = _QMETA_VERSION_BINARY
            vals.append(self.binary_k)
        return torch.tensor(vals, dtype=torch.int32, device=device)

    @staticmethod
    def config_from_meta(meta: torch.Tensor) -> dict:
        """Constructor kwargs encoded in a ``qmeta`` buffer (checkpoint -> module)."""
        v = [int(t) for t in meta.tolist()]
        lengths = {_QMETA_VERSION: 14, _QMETA_VERSION_BINARY: 15}
        if not v or v[0] not in lengths:
            raise ValueError(f"unsupported QuantLinear qmeta version {v[0] if v else None}")
        if len(v) != lengths[v[0]]:
            raise ValueError(f"QuantLinear qmeta version {v[0]} has {lengths[v[0]]} entries, got {len(v)}")
        return dict(
            in_features=v[1], out_features=v[2], w_bits=v[3], a_bits=v[4], group_size=v[5] or None,
            act_group_size=v[6] or None, symmetric=bool(v[7]), rank=v[8], hadamard_block=v[9], bias=bool(v[10]),
            smooth=bool(v[11]), bias_align=bool(v[12]), activation=_ACT_NAMES[v[13]],
            binary_k=v[14] if v[0] == _QMETA_VERSION_BINARY else 0,
        )

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, torch.Tensor], prefix: str = "", **kwargs: Any
    ) -> "QuantLinear":
        """Build a layer of the right structure from a (safetensors) state dict and load it."""
        cfg = cls.config_from_meta(state[prefix + "qmeta"])
        cfg["scale_dtype"] = state[prefix + "wscale"].dtype
        if cfg["rank"]:
            cfg["lowrank_dtype"] = state[prefix + "lora_down"].dtype
        cfg.update(kwargs)
        k, n = cfg.pop("in_features"), cfg.pop("out_features")
        mod = cls(k, n, **cfg)
        sub = {key[len(prefix):]: t for key, t in state.items() if key.startswith(prefix)}
        mod.load_state_dict(sub)
        return mod

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:  # noqa: D401 - torch hook
        key = prefix + "qmeta"
        if key in state_dict and not torch.equal(state_dict[key].cpu().to(torch.int32), self.qmeta.cpu()):
            error_msgs.append(
                f"{key}: checkpoint layer config {self.config_from_meta(state_dict[key])} does not match "
                f"this layer's; build it with QuantLinear.from_state_dict"
            )
            return
        clip_key = prefix + "act_clip"
        if clip_key in state_dict:
            try:
                check_clip_ratio(state_dict[clip_key])
            except (TypeError, ValueError) as exc:
                error_msgs.append(f"{clip_key}: {exc}")
                return
        if self.binary_k:
            bad = self._check_binary_state(state_dict, prefix)
            if bad:
                error_msgs.append(bad)
                return
        n_missing = len(missing_keys)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if clip_key not in state_dict:
            # written before DRAQ existed: unclipped activations, i.e. ratio 1
            if clip_key in missing_keys[n_missing:]:
                missing_keys.remove(clip_key)
            with torch.no_grad():
                self.act_clip.fill_(1.0)
        self._w8_cache = None
        self._bin_cache = None
        self._clip_changed()

    def _check_binary_state(self, state: Mapping[str, torch.Tensor], prefix: str) -> str | None:
        """Why the binary-branch tensors of a state dict cannot be this layer's, or None.
        Indices must be strictly increasing per row inside [0, K) (no duplicates: the dense
        branch is built by a scatter) and scales finite and >= 0."""
        idx, scale = state.get(prefix + "bin_idx"), state.get(prefix + "bin_scale")
        if idx is None or scale is None:
            return None  # reported as missing keys by torch
        if idx.shape != self.bin_idx.shape or scale.shape != self.bin_scale.shape:
            return f"{prefix}bin_idx / bin_scale: shapes {tuple(idx.shape)} / {tuple(scale.shape)} do not fit this layer"
        i = idx.long()
        if i.numel() and (int(i.min()) < 0 or int(i.max()) >= self.in_features or bool((i[:, 1:] <= i[:, :-1]).any())):
            return f"{prefix}bin_idx: indices must be strictly increasing per row and inside [0, {self.in_features})"
        if not bool(torch.isfinite(scale.float()).all()) or bool((scale.float() < 0).any()):
            return f"{prefix}bin_scale: scales must be finite and >= 0"
        return None

    # ------------------------------------------------------------------ construction

    @classmethod
    @torch.no_grad()
    def from_linear(
        cls,
        linear: nn.Linear,
        bits: int = 4,
        act_bits: int = 4,
        group_size: int | None = None,
        act_group_size: int | None | str = "same",
        symmetric: bool = True,
        rank: int = 0,
        smooth: torch.Tensor | None = None,
        hadamard_block: int = 0,
        activation: str | None = None,
        bias_align: bool = False,
        lowrank_dtype: torch.dtype = torch.bfloat16,
        scale_dtype: torch.dtype = torch.float16,
        cache_int8: bool = False,
        act_clip: float = 1.0,
        binary_k: int = 0,
    ) -> "QuantLinear":
        """RTN-quantize an ``nn.Linear``: W' = (W * smooth) H; low-rank = top-``rank`` SVD
        of W' (its 16-bit rounding is folded into the residual); the residual is quantized.
        ``act_clip``: the activation clip ratio (DRAQ; fit it with ``pack.fit_act_clip``).
        ``binary_k``: room for a binary residual branch, left empty (scales 0; fit it with
        ``vsrq.quant.binres.fit_binary_residual``)."""
        w = linear.weight.detach().float()
        n, k = w.shape
        dev = w.device
        mod = cls(
            k, n, linear.bias is not None, w_bits=bits, a_bits=act_bits, group_size=group_size,
            act_group_size=act_group_size, symmetric=symmetric, rank=rank, smooth=smooth is not None,
            hadamard_block=hadamard_block, activation=activation, bias_align=bias_align,
            lowrank_dtype=lowrank_dtype, scale_dtype=scale_dtype, cache_int8=cache_int8, act_clip=act_clip,
            binary_k=binary_k, device=dev,
        )
        if smooth is not None:
            sm = smooth.detach().float().to(dev)
            if sm.shape != (k,) or not bool((sm > 0).all()):
                raise ValueError("smooth must be a positive (in_features,) vector")
            mod.smooth.copy_(sm)
        w = cls.transform_weight(w, smooth, hadamard_block)
        if rank:
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            root = s[:rank].sqrt()
            mod.lora_down.copy_((vh[:rank].T * root[None, :]).to(lowrank_dtype))
            mod.lora_up.copy_((root[:, None] * u[:, :rank].T).to(lowrank_dtype))
            w = w - (mod.lora_down.float() @ mod.lora_up.float()).T
        q, scale, zero = quantize_weight(w, bits, mod.group_size, symmetric, scale_dtype)
        mod.set_quantized_weight(q, scale, zero)
        if linear.bias is not None:
            mod.bias.copy_(linear.bias.detach().float())
        return mod

    @staticmethod
    def transform_weight(w: torch.Tensor, smooth: torch.Tensor | None, hadamard_block: int) -> torch.Tensor:
        """W' = (W * smooth) H: the weight the quantized layer multiplies with x_hat = (x / smooth) H."""
        n, k = w.shape
        w = w.float()
        if smooth is not None:
            w = w * smooth.detach().float().to(w.device)[None, :]
        if hadamard_block:
            b = hadamard_block
            h = hadamard_matrix(b, torch.float32, w.device) * hadamard_scale(b)
            w = (w.reshape(n, k // b, b) @ h).reshape(n, k)
        return w

    @torch.no_grad()
    def set_quantized_weight(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None) -> None:
        """Store integer weights (N, K) (packed when w_bits <= 4), scales and zero points."""
        n, k = self.out_features, self.in_features
        if q.shape != (n, k) or scale.shape != self.wscale.shape:
            raise ValueError(f"expected q {(n, k)} and scale {tuple(self.wscale.shape)}")
        if (zero is None) != self.symmetric:
            raise ValueError("zero points must be given exactly for asymmetric layers")
        if self.packed:
            if k % 2:
                q = torch.cat((q, torch.zeros(n, 1, dtype=q.dtype, device=q.device)), 1)
            self.qweight.copy_(pack_int4(q))
        else:
            self.qweight.copy_(q.to(torch.int8))
        self.wscale.copy_(scale)
        if zero is not None:
            self.wzero.copy_(zero.to(torch.int8))
        self._w8_cache = None

    @torch.no_grad()
    def set_binary_residual(self, idx: torch.Tensor, positive: torch.Tensor, scale: torch.Tensor) -> None:
        """Store the binary residual branch: column indices (N, binary_k), strictly increasing per
        row; signs (N, binary_k) bool, True = +scale; per-row scales (N,) >= 0 (rounded to fp16)."""
        n, bk = self.out_features, self.binary_k
        if not bk:
            raise ValueError("this layer has no binary residual branch (binary_k = 0)")
        if idx.shape != (n, bk) or positive.shape != (n, bk) or scale.shape != (n,):
            raise ValueError(f"expected idx and signs {(n, bk)} and scale {(n,)}")
        state = {"bin_idx": idx.to(self.bin_idx.dtype), "bin_scale": scale.to(torch.float16)}
        bad = self._check_binary_state(state, "")
        if bad:
            raise ValueError(bad)
        self.bin_idx.copy_(state["bin_idx"])
        self.bin_sign.copy_(pack_bits(positive.bool()))
        self.bin_scale.copy_(state["bin_scale"])
        self._bin_cache = None

    def binary_weight(self) -> torch.Tensor:
        """Dense float32 (N, K) D of the binary residual branch (zeros off its entries), cached
        against the buffers' identity and version counters."""
        ts = (self.bin_idx, self.bin_sign, self.bin_scale)
        key = tuple((t.data_ptr(), t._version) for t in ts) + (self.bin_idx.device,)
        if self._bin_cache is not None and self._bin_cache[0] == key:
            return self._bin_cache[1]
        n, k, bk = self.out_features, self.in_features, self.binary_k
        pos = unpack_bits(self.bin_sign, n * bk).reshape(n, bk)
        a = self.bin_scale.float()[:, None]
        vals = torch.where(pos, a, -a)
        d = torch.zeros(n, k, dtype=torch.float32, device=vals.device).scatter_(1, self.bin_idx.long(), vals)
        self._bin_cache = (key, d)
        return d

    # ------------------------------------------------------------------ activation clip

    @torch.no_grad()
    def set_act_clip(self, ratio: float) -> None:
        """Set the DRAQ activation clip ratio (in (0, 1]; 1 = no clipping)."""
        self.act_clip.fill_(check_clip_ratio(ratio))
        self._clip_changed()

    def _clip_changed(self) -> None:
        """After the act_clip buffer was written: drop the cached float and read it once."""
        self._clip_cache = None
        self.act_clip_value()

    def act_clip_value(self) -> float:
        """The clip ratio as a Python float, cached against the buffer's identity and version
        counter, so a CUDA forward does not sync on ``.item()`` every call."""
        t = self.act_clip
        c = self._clip_cache
        if c is not None and c[0] is t and c[1] == t._version:
            return c[2]
        v = check_clip_ratio(t)
        self._clip_cache = (t, t._version, v)  # holding t keeps its identity unique
        self.act_clip_float = v
        return v

    # ------------------------------------------------------------------ weights

    def int_weight(self) -> torch.Tensor:
        """(N, K) int8 container of the weight values (pure torch; any device)."""
        if self.packed:
            return unpack_int4_ref(self.qweight, self.in_features, signed=self.symmetric)
        return self.qweight

    def dequantized_weight(self) -> torch.Tensor:
        """Float32 W' (smoothed/rotated, low-rank removed) as the quantized layer sees it."""
        return dequantize_weight(self.int_weight(), self.wscale, self.wzero, self.group_size)

    def _int8_weight_triton(self) -> torch.Tensor:
        """int8 weights for the GEMM: re-materialised per call, or cached (2x packed memory)."""
        if not self.packed:
            return self.qweight
        key = (self.qweight.data_ptr(), self.qweight._version, self.qweight.device)
        if self.cache_int8 and self._w8_cache is not None and self._w8_key == key:
            return self._w8_cache
        from vsrq.kernels.unpack import unpack_int4_to_int8

        w8 = unpack_int4_to_int8(self.qweight, self.in_features, signed=self.symmetric)
        if self.cache_int8:
            self._w8_cache, self._w8_key = w8, key
        return w8

    def effective_bias(self) -> torch.Tensor | None:
        """bias + bias_align (the alignment vector folds into the epilogue's bias add)."""
        if self.bias_align is None:
            return self.bias
        return self.bias_align if self.bias is None else self.bias + self.bias_align

    # ------------------------------------------------------------------ forward

    def _use_triton(self, x: torch.Tensor) -> bool:
        if self.backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}")
        if self.backend == "reference":
            return False
        ok = can_run_triton(x)
        if self.backend == "triton" and not ok:
            raise RuntimeError("backend='triton' needs a CUDA tensor (or TRITON_INTERPRET=1 on CPU) and triton")
        if self.backend == "auto":
            return ok and x.is_cuda
        return ok

    def forward(
        self, x: torch.Tensor, gate: torch.Tensor | None = None, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """y = [act](quant_linear(x)) [* gate] [+ residual]; leading dims are flattened. ``gate`` is
        shaped like the output or a per-channel (N,) vector (the kernels read it with stride 0)."""
        k, n = self.in_features, self.out_features
        if x.shape[-1] != k:
            raise ValueError(f"expected last dim {k}, got {x.shape[-1]}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, k)
        g2 = None if gate is None else gate if gate.shape == (n,) else gate.reshape(-1, n)
        r2 = None if residual is None else residual.reshape(-1, n)
        if torch.compiler.is_compiling() and x2.is_cuda and self.backend != "reference" and not self.binary_k:
            # one opaque op for torch.compile: the graph around it (norms, modulation, residuals)
            # is fused by inductor, the quantized linear runs our kernels as in eager mode
            y = self._compiled_op(x2.contiguous(), None if g2 is None else g2.contiguous(),
                                  None if r2 is None else r2.contiguous(), self.activation)
            return y.reshape(*lead, n)
        binary = self.binary_k > 0  # its output joins before the activation / gate / residual epilogue
        common = dict(
            wzero=self.wzero, a_bits=self.a_bits, act_group=self.act_group_size, smooth=self.smooth,
            hadamard_block=self.hadamard_block, lora_down=self.lora_down, lora_up=self.lora_up,
            bias=self.effective_bias(), activation=None if binary else self.activation,
            out_dtype=torch.float32 if binary else x.dtype, clip_ratio=self.act_clip_value(),
        )
        epilogue = (g2, r2)
        if binary:
            g2 = r2 = None
        if self._use_triton(x2):
            from vsrq.kernels.linear import quant_linear

            if x2.stride(-1) != 1:
                x2 = x2.contiguous()
            g2 = None if g2 is None else g2.contiguous()
            r2 = None if r2 is None else r2.contiguous()
            y = quant_linear(x2, self._int8_weight_triton(), self.wscale, gate=g2, residual=r2, **common)
        else:
            y = quant_linear_ref(x2, self.int_weight(), self.wscale, gate=g2, residual=r2, **common)
        if binary:
            y = self._add_binary(y, x2, *epilogue, x.dtype)
        return y.reshape(*lead, n)

    def _hooked(self) -> bool:
        """Forward hooks on this layer or on every module (`register_module_forward_hook`): then the
        fused entry points decline, so the hooks see the plain call with its own input and output."""
        from torch.nn.modules import module as _m

        return bool(self._forward_hooks or self._forward_pre_hooks
                    or _m._global_forward_hooks or _m._global_forward_pre_hooks)

    def forward_residual(self, x: torch.Tensor, gate: torch.Tensor, residual: torch.Tensor) -> torch.Tensor | None:
        """residual + gate * self(x) with gate (N,) one vector for every token, the gate and the
        residual applied in the GEMM epilogue on the fp32 tile before the one rounding: the layer's
        own output is never written and read back (`vsrq.models.dit.gated_residual`). Triton path
        only, like `forward_normed` (the CPU reference composes the same sum itself); None where the
        layer declines: hooks registered on it (per-layer instrumentation sees the plain call);
        gradients wanted through the residual or the gate (the kernels are not differentiable, the
        composed sum keeps those paths); tensors of different dtypes (the composed sum would promote,
        the kernel writes x's dtype)."""
        n = self.out_features
        if gate.shape != (n,) or residual.shape[-1] != n or residual.shape[:-1] != x.shape[:-1]:
            return None
        if not (x.dtype == gate.dtype == residual.dtype):
            return None
        if torch.is_grad_enabled() and (residual.requires_grad or gate.requires_grad or x.requires_grad):
            return None
        if self._hooked() or not self._use_triton(x):
            return None
        return self.forward(x, gate, residual)

    def forward_normed(self, x: torch.Tensor, eps: float, shift: torch.Tensor | None,
                       scale: torch.Tensor | None, activation: str | None = None) -> torch.Tensor | None:
        """self(LayerNorm(x) * (1 + scale) + shift) (LayerNorm without affine, one (K,) modulation)
        with the norm and modulation inside the activation kernel (`norm_act_quant`): x is read
        once and the normalized activation never exists in 16 bits. Only on the Triton path and
        for layers the whole-row kernel serves (no rotation, low-rank or binary branch, K <=
        its limit, row sums per row or per activation group); None elsewhere, and the caller
        composes norm, modulation and this layer itself (`vsrq.models.dit.norm_linear`). The
        fused path computes the norm in fp32 without rounding to 16 bits in between, as the CPU
        reference (an fp32 model) does. ``activation`` ("gelu_tanh") applies the activation that
        follows the layer in the GEMM epilogue (on the fp32 output, before the one rounding).
        Declines too while forward hooks are registered on the layer or globally (`_hooked`), so the
        engine's per-layer instrumentation (calibration, flicker statistics) sees the plain call
        (hooks on the LayerNorm itself are not looked at)."""
        k, n = self.in_features, self.out_features
        if self.binary_k or self.hadamard_block or self.rank or x.shape[-1] != k or not self._use_triton(x):
            return None
        if self._hooked() or (activation and self.activation):
            return None
        act = activation or self.activation
        from vsrq.kernels.act_quant import tile_serves

        rowsum_group = gemm_group_size(k, self.act_group_size, self.wscale.shape[1]) if self.wzero is not None else None
        if not tile_serves(k, self.act_group_size, rowsum_group):
            return None
        lead = x.shape[:-1]
        x2 = x.reshape(-1, k)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        mod = None if shift is None and scale is None else self._modulation(shift, scale, x.device)
        if torch.compiler.is_compiling():
            y = self._compiled_op(x2, None, None, act, (float(eps), mod))
        else:
            from vsrq.kernels.linear import quant_linear

            y = quant_linear(x2, self._int8_weight_triton(), self.wscale, wzero=self.wzero, a_bits=self.a_bits,
                             act_group=self.act_group_size, smooth=self.smooth, bias=self.effective_bias(),
                             activation=act, out_dtype=x.dtype, clip_ratio=self.act_clip_value(),
                             norm=(float(eps), mod))
        return y.reshape(*lead, n)

    def _compiled_op(self, x2: torch.Tensor, gate: torch.Tensor | None, residual: torch.Tensor | None,
                     activation: str | None,
                     norm: tuple[float, tuple[torch.Tensor, torch.Tensor] | None] | None = None) -> torch.Tensor:
        """This layer as the opaque `vsrq::quant_linear` op (inside a torch.compile graph); with
        ``norm`` = (eps, modulation vectors) x2 is the LayerNorm's input (`forward_normed`)."""
        from vsrq.kernels.linear import quant_linear_op

        k = self.in_features
        eps, mod = norm if norm is not None else (-1.0, None)
        return quant_linear_op(
            x2, self.qweight, self.wscale, self.wzero, self.smooth, self.lora_down, self.lora_up, self.effective_bias(),
            gate, residual, k, self.packed, self.symmetric, self.a_bits,
            self.act_group_size if self.act_group_size not in (None, k) else 0, self.hadamard_block,
            activation or "", self.act_clip_float, eps, None if mod is None else mod[0], None if mod is None else mod[1])

    def _modulation(self, shift: torch.Tensor | None, scale: torch.Tensor | None,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """`modulation_vectors` of the block's shift/scale, made once while they stay the same
        tensors with the same contents (the folded model's constant buffer): the cache holds the
        inputs, so their storage cannot be handed to another tensor, and the version counter, shared
        by every view of a storage, changes with any write. Not cached inside a compiled graph
        (inductor fuses the few ops) nor for inference tensors (they have no version counter)."""
        from vsrq.kernels.act_quant_tile import modulation_vectors

        k = self.in_features
        if torch.compiler.is_compiling():
            return modulation_vectors(shift, scale, k, device)
        try:
            key = tuple(None if t is None else (t.data_ptr(), t._version, tuple(t.shape), tuple(t.stride()), t.dtype,
                                                t.device) for t in (shift, scale))
        except RuntimeError:  # inference tensors track no version
            return modulation_vectors(shift, scale, k, device)
        cached = self._mod_cache
        if cached is not None and cached[0] == key and cached[2][0].device == device:
            return cached[2]
        vectors = modulation_vectors(shift, scale, k, device)
        self._mod_cache = (key, (shift, scale), vectors)
        return vectors

    def _add_binary(self, y: torch.Tensor, x2: torch.Tensor, gate: torch.Tensor | None,
                    residual: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
        """fp32 main output + x_hat D^T, then the activation / gate / residual epilogue (torch)."""
        xh = transform_input(x2, self.smooth, self.hadamard_block)
        low = xh @ self.binary_weight().T
        y = y + low if y.requires_grad or low.requires_grad else y.add_(low)
        return _epilogue_ref(y, None, None, None, self.activation, gate, residual, out_dtype)

    def weight_bytes(self) -> int:
        """Bytes of the resident quantized weight (packed ints + scales + zeros + low-rank)."""
        tensors = [self.qweight, self.wscale, self.wzero, self.lora_down, self.lora_up,
                   self.bin_idx, self.bin_sign, self.bin_scale]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def extra_repr(self) -> str:
        g = self.group_size or "channel"
        ag = self.act_group_size or "token"
        return (
            f"in={self.in_features}, out={self.out_features}, W{self.w_bits}A{self.a_bits}, "
            f"w_group={g}, a_group={ag}, symmetric={self.symmetric}, rank={self.rank}, "
            f"smooth={self.smooth is not None}, hadamard={self.hadamard_block}, act={self.activation}"
            + (f", binary_k={self.binary_k}" if self.binary_k else "")
            + ("" if float(self.act_clip[0]) == 1.0 else f", act_clip={float(self.act_clip[0]):.4g}")
        )

