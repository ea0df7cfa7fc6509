"""The Triton kernels compiled ahead of time for a GPU architecture, without a GPU.

A check of the code the compiler makes (docs/kernels.md): whether the alignment hints reach
the loads. Kept apart from the backend (`triton.py` beside it), which it only reads.
"""

from __future__ import annotations

import re
import time

import triton

from .triton import (
    CONFIG,
    TABLE_SLOTS,
    _dots_partial_kernel,
    _dots_reduce_kernel,
    _fill_table_kernel,
    _require_triton,
    _wsum_kernel,
    interpreting,
)

__all__ = ["ptx_report"]


def ptx_report(arch: int = 90, block: int | None = None) -> dict[str, dict]:
    """Compile every aligned kernel variant for CUDA `arch` without a GPU and count its loads.

    Returns {variant: {"seconds", "vector_loads", "scalar_loads"}}: the PTX's vector
    `ld.global.v*` loads and its scalar loads narrower than 64 bits (the 64-bit loads are the
    table entries; the wsum kernel's scalar loads are its weights, one per input). It
    checks that the alignment hint on table pointers reaches the compiler: without it every table input is read with scalar loads. Uses
    Triton's `triton.compile(ASTSource(...), target=GPUTarget(...))`; needs Triton's bundled
    ptxas and must run without TRITON_INTERPRET (the kernels are then compiled functions).
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    _require_triton()
    if interpreting():
        raise RuntimeError("ptx_report needs TRITON_INTERPRET unset")
    target = GPUTarget("cuda", arch, 32)
    aligned16 = [["tt.divisibility", 16]]
    report = {}

    def compile_one(name, fn, signature, constexprs, aligned_args, warps):
        start = time.perf_counter()
        source = ASTSource(
            fn=fn,
            signature=signature,
            constexprs=constexprs,
            attrs={(list(signature).index(a),): aligned16 for a in aligned_args},
        )
        ptx = triton.compile(source, target=target, options={"num_warps": warps}).asm[
            "ptx"
        ]
        loads = re.findall(r"\bld\.global[\w.:]*", ptx)
        report[name] = {
            "seconds": round(time.perf_counter() - start, 3),
            "vector_loads": sum(".v" in op for op in loads),
            "scalar_loads": sum(
                ".v" not in op and not op.endswith("64") for op in loads
            ),
        }

    for dtype in ("fp32", "bf16"):
        compile_one(
            f"wsum[{dtype}]",
            _wsum_kernel,
            {
                "table": "*i64",
                "w": "*fp32",
                "w_stride": "i32",
                "out": f"*{dtype}",
                "n": "i32",
                "k": "i32",
                "RELU": "constexpr",
                "ALIGNED": "constexpr",
                "ROUND_BY_HAND": "constexpr",
                "BLOCK": "constexpr",
            },
            {
                "RELU": True,
                "ALIGNED": True,
                "ROUND_BY_HAND": False,
                "BLOCK": block or CONFIG["wsum_block"],
            },
            ["table", "out", "n"],
            CONFIG["wsum_warps"],
        )
        compile_one(
            f"relu_mask_dots[{dtype}]",
            _dots_partial_kernel,
            {
                "table": "*i64",
                "h": f"*{dtype}",
                "p": f"*{dtype}",
                "h_out": f"*{dtype}",
                "partials": "*fp32",
                "n": "i32",
                "k": "i32",
                "n_blocks": "i32",
                "MASK": "constexpr",
                "ALIGNED": "constexpr",
                "BLOCK": "constexpr",
            },
            {"MASK": True, "ALIGNED": True, "BLOCK": block or CONFIG["dots_block"]},
            ["table", "h", "p", "h_out", "partials", "n"],
            CONFIG["dots_warps"],
        )
    compile_one(
        "fill_table",
        _fill_table_kernel,
        {
            "table": "*i64",
            "start": "i32",
            **{f"a{i}": "i64" for i in range(TABLE_SLOTS)},
        },
        {},
        ["table"],
        1,
    )
    compile_one(
        "dots_reduce",
        _dots_reduce_kernel,
        {"partials": "*fp32", "out": "*fp32", "n_blocks": "i32", "BLOCK": "constexpr"},
        {"BLOCK": CONFIG["reduce_block"]},
        ["partials", "out"],
        CONFIG["reduce_warps"],
    )
    return report
