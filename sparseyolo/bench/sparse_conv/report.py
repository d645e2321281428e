"""The sparse-conv benchmark's report: derived numbers (speed-ups, GFLOP/s, target check), CSV rows, and the
text and markdown tables. What a variant is comes from its `Kind` (cases.py)."""

from __future__ import annotations

import math
import shlex

from sparseyolo.bench import common as C
from sparseyolo.bench.sparse_conv.cases import (
    DENSE_FB,
    DENSE_FWD,
    OURS_BUILT,
    OURS_CACHED,
    OURS_FB,
    REL_TOL,
    TARGET_CASE,
    TARGETS,
    Case,
    Config,
    Kind,
    Result,
    spconv_kind,
)

# --- derived numbers --------------------------------------------------------------------------------


def dense_times(result: Result, case: Case) -> tuple[float | None, float | None]:
    """(dense forward, dense forward+backward) medians for `case` (2D: pooled over its group)."""
    if case.section == "3d":
        v = case.variants.get(DENSE_FWD.name)
        return (v["median"] if v else None), None
    state = result.dense.get(case.group, {})
    return C.median(state.get("fwd", [])), C.median(state.get("fb", []))


def med(case: Case, kind: Kind) -> float | None:
    v = case.variants.get(kind.name)
    return v["median"] if v and not v.get("error") else None


def gflops(macs: float, seconds: float | None, factor: float = 1.0) -> float | None:
    return None if not seconds else 2.0 * macs * factor / seconds / 1e9


def best_ratio(result: Result, case: Case, kind: Kind) -> float | None:
    """Speed-up of the fastest call of `kind` over the fastest dense forward of the group (noise floor)."""
    state = result.dense.get(case.group, {})
    v = case.variants.get(kind.name)
    if not state.get("fwd") or not v or not v.get("samples"):
        return None
    return C.ratio(min(state["fwd"]), min(v["samples"]))


def target_rows(result: Result) -> list[tuple]:
    """(density, rule, target, measured speed-up or None, "PASS"/"FAIL"/"not measured", best-call speed-up)."""
    rows = []
    for density, target, rule in TARGETS:
        match = [
            c
            for c in result.cases
            if c.section == "2d"
            and math.isclose(c.density, density)
            and (c.op, c.cin, c.cout, c.distribution) == TARGET_CASE
        ]
        measured = best = None
        if match:
            measured = C.ratio(dense_times(result, match[0])[0], med(match[0], OURS_BUILT))
            best = best_ratio(result, match[0], OURS_BUILT)
        if measured is None:
            status = "not measured"
        else:
            status = "PASS" if (measured >= target if rule == ">=" else measured > target) else "FAIL"
        rows.append((density, rule, target, measured, status, best))
    return rows


def csv_rows(result: Result) -> list[dict]:
    rows = []
    cfg = result.config
    for case in result.cases:
        dense_fwd, dense_fb = dense_times(result, case)
        base = {
            "section": case.section,
            "op": case.op,
            "c_in": case.cin,
            "c_out": case.cout,
            "distribution": case.distribution,
            "density": f"{case.density:.6g}",
            "spatial_shape": "x".join(map(str, case.spatial_shape)),
            "sites": case.sites,
            "out_sites": case.out_sites,
            "pairs": case.pairs,
            "useful_gmac": f"{case.useful_macs / 1e9:.6g}",
            "dense_gmac": f"{case.dense_macs / 1e9:.6g}" if case.dense_macs else None,
        }
        entries = [(v["kind"], v, dense_fb if v["kind"].backward else dense_fwd) for v in case.variants.values()]
        if case.section == "2d":  # dense: pooled over the group
            state = result.dense.get(case.group, {})
            for kind, key, t in ((DENSE_FWD, "fwd", dense_fwd), (DENSE_FB, "fb", dense_fb)):
                n, mb = len(state.get(key, [])), state.get(f"{key}_mb")
                v = {"median": t, "min": min(state.get(key) or [0]) or None, "n": n, "peak_mb": mb}
                entries.append((kind, {**v, "threads": cfg.threads, "pooled": True}, t))
        for kind, v, ref in entries:
            t = v.get("median")
            is_dense = kind.engine == "dense"
            factor = 3.0 if kind.backward else 1.0  # backward = two more products of the forward's size
            macs = (case.dense_macs or 0) * factor if is_dense else case.useful_macs * factor
            rows.append(
                {
                    **base,
                    "variant": kind.name,
                    "engine": kind.engine,
                    "map": {"built": "built in call", "cached": "cached"}.get(kind.map, ""),
                    "pass": kind.pass_,
                    "threads": v.get("threads"),
                    "verified": "no (spconv CPU scatter race with >1 thread)"
                    if kind.engine == "spconv" and v.get("threads", 1) > 1
                    else "",
                    "median_ms": None if t is None else f"{t * 1e3:.4g}",
                    "min_ms": None if v.get("min") is None else f"{v['min'] * 1e3:.4g}",
                    "samples": v.get("n"),
                    "dense_pooled_over_group": "yes" if v.get("pooled") else "",
                    "speedup_vs_dense": None if is_dense else _fmt_opt(C.ratio(ref, t), "{:.4g}"),
                    "effective_gflops": _fmt_opt(gflops(macs, t), "{:.4g}"),
                    "peak_rss_growth_mib": _fmt_opt(v.get("peak_mb"), "{:.1f}"),
                    "max_rel_err": _fmt_opt(case.check_ours if kind == OURS_CACHED else v.get("check"), "{:.2e}"),
                    "error": v.get("error"),
                }
            )
    return rows


def _fmt_opt(value, spec: str):
    return None if value is None else spec.format(value)


# --- text output ------------------------------------------------------------------------------------


def _pair(a: float | None, b: float | None) -> str:
    if a is None and b is None:
        return "-"
    return f"{C.fmt_ms(a)}/{C.fmt_ms(b)}" if b is not None else C.fmt_ms(a)


def _spconv_cell(case: Case, t: int, cfg: Config) -> str:
    built, cached = case.variants.get(spconv_kind("built", t).name), case.variants.get(spconv_kind("cached", t).name)
    if built is None:
        return "-"
    if built.get("error"):
        return "error"
    cell = _pair(built["median"], cached["median"] if cached and not cached.get("error") else None)
    wrong = any(v and v.get("check") is not None and v["check"] > REL_TOL for v in (built, cached))
    if t > 1:
        cell += "!" if wrong else "?"
    elif wrong:
        cell += "!"
    return cell


def _check_cell(case: Case) -> str:
    if case.check_ours is None:  # no dense reference: single-thread spconv is the oracle
        err = case.variants.get(spconv_kind("built", 1).name, {}).get("check")
        if err is None:
            return "n/a"
        return "ok (spconv 1t)" if err <= REL_TOL else f"DIFF {err:.0e} (spconv 1t)"
    return "ok" if case.check_ours <= REL_TOL else f"BAD {case.check_ours:.0e}"


def table_2d(result: Result) -> tuple[list, list, str]:
    cfg = result.config
    t1 = cfg.spconv_1thread and cfg.threads != 1
    headers = ["conv", "ch", "dist", "dens", "active", "GMAC", "built", "cached", "f+b", "dense", "dense f+b"]
    headers += ["x built", "x cached", "x f+b", "GF/s", f"spconv {cfg.threads}t b/c"]
    if t1:
        headers += ["spconv 1t b/c", "x spc1 b"]
    headers += ["MiB ours/dense", "check"]
    rows = []
    for case in (c for c in result.cases if c.section == "2d"):
        dfwd, dfb = dense_times(result, case)
        built, cached, fb = med(case, OURS_BUILT), med(case, OURS_CACHED), med(case, OURS_FB)
        row = [case.op, f"{case.cin}->{case.cout}", case.distribution[:5], f"{case.density:.0%}", case.sites]
        row += [f"{case.useful_macs / 1e9:.3f}", *map(C.fmt_ms, (built, cached, fb, dfwd, dfb))]
        row += [C.fmt_x(C.ratio(dfwd, built)), C.fmt_x(C.ratio(dfwd, cached)), C.fmt_x(C.ratio(dfb, fb))]
        row += [C.fmt_num(gflops(case.useful_macs, cached), 1), _spconv_cell(case, cfg.threads, cfg)]
        if t1:
            row += [_spconv_cell(case, 1, cfg), C.fmt_x(C.ratio(dfwd, med(case, spconv_kind("built", 1))))]
        mem_ours = case.variants.get(OURS_BUILT.name, {}).get("peak_mb")
        mem_dense = result.dense.get(case.group, {}).get("fwd_mb")
        row += [f"{C.fmt_num(mem_ours, 0)}/{C.fmt_num(mem_dense, 0)}", _check_cell(case)]
        rows.append(row)
    return headers, rows, "lllrrr" + "r" * (len(headers) - 6)


def table_3d(result: Result) -> tuple[list, list, str]:
    cfg = result.config
    t1 = cfg.spconv_1thread and cfg.threads != 1
    headers = ["voxels", "grid (Z,Y,X)", "active", "density", "GMAC", "built", "cached", "f+b", "dense", "x built"]
    headers += ["x cached", "GF/s", f"spconv {cfg.threads}t b/c"]
    if t1:
        headers += ["spconv 1t b/c"]
    headers += ["MiB ours/dense", "check"]
    rows = []
    for case in (c for c in result.cases if c.section == "3d"):
        dfwd, _ = dense_times(result, case)
        built, cached, fb = med(case, OURS_BUILT), med(case, OURS_CACHED), med(case, OURS_FB)
        row = [case.distribution.replace("LiDAR ", ""), "x".join(map(str, case.spatial_shape)), case.sites]
        row += [f"{case.density:.2e}", f"{case.useful_macs / 1e9:.3f}", *map(C.fmt_ms, (built, cached, fb))]
        row += [C.fmt_ms(dfwd), C.fmt_x(C.ratio(dfwd, built)), C.fmt_x(C.ratio(dfwd, cached))] if dfwd else ["n/a"] * 3
        row += [C.fmt_num(gflops(case.useful_macs, cached), 1), _spconv_cell(case, cfg.threads, cfg)]
        if t1:
            row += [_spconv_cell(case, 1, cfg)]
        mem_ours = case.variants.get(OURS_BUILT.name, {}).get("peak_mb")
        mem_dense = case.variants.get(DENSE_FWD.name, {}).get("peak_mb")
        row += [f"{C.fmt_num(mem_ours, 0)}/{C.fmt_num(mem_dense, 0) if dfwd else 'n/a'}", _check_cell(case)]
        rows.append(row)
    return headers, rows, "ll" + "r" * (len(headers) - 2)


def gemm_lines(result: Result) -> list[str]:
    return [
        f"  {label}: {C.median(v):.1f} GFLOP/s (median of {len(v)}, range {min(v):.1f}-{max(v):.1f})"
        for label, v in result.gemm.items()
    ]


def target_table(result: Result) -> tuple[list, list, str]:
    """(headers, rows, align) of the target check, for the text and the markdown report."""
    rows = [(f"{d:.0%}", f"{rule} {t:g}x", C.fmt_x(m), s, C.fmt_x(b)) for d, rule, t, m, s, b in target_rows(result)]
    return ["density", "target", "measured (median)", "result", "best call vs best dense (info)"], rows, "lrrlr"


def target_lines(result: Result) -> list[str]:
    head = (
        "Target check: SubM 3x3 16->32, uniform sites, map built in the call, speed-up vs dense F.conv2d "
        f"forward ({result.config.size}x{result.config.size})"
    )
    return [head, C.format_table(*target_table(result))]


def legend(result: Result) -> list[str]:
    cfg = result.config
    return [
        "Columns: times in ms, median of interleaved calls (min 3 per variant unless --repeat is smaller); "
        "built = map built in the call (fresh SparseConvTensor each call), cached = map re-used, "
        "f+b = forward + backward (input and weight gradients, map cached); forward timings under no_grad.",
        f"dense/dense f+b = F.conv2d on the densified {cfg.size}x{cfg.size} input, median over all samples "
        "of the same conv/channels group (dense time does not depend on the sites; samples are taken in "
        "between the sparse cases). x built / x cached / x f+b = dense time / ours (f+b vs dense f+b).",
        "GMAC = useful multiply-adds (kernel-map pairs x C_in x C_out, pairs counted independently of the "
        "engine); GF/s = 2 x useful MACs / 'cached' time.",
        "spconv b/c = spconv map built each call / cached (SubM layers sharing an indice_key; spconv has no "
        f"map re-use for strided convs: '-'). '?' = {cfg.threads}-thread spconv result unverified (its CPU "
        "scatter-add races with >1 thread); '!' = a wrong output (vs ours) was seen in this run (last call "
        "checked).",
        "MiB ours/dense = peak resident-set growth during one call (Linux VmHWM reset via "
        "/proc/self/clear_refs after malloc_trim; inputs excluded; outputs, temporaries and the kernel map "
        "included; the allocator is left at its defaults, freed heap pages are trimmed before the probe): "
        "ours map built in the call vs dense forward.",
        f"check = ours (cached) vs dense at the output sites, max |diff| / max |dense| <= {REL_TOL:g} "
        "(3D without a dense reference: vs single-thread spconv).",
    ]


def report_text(result: Result) -> str:
    cfg = result.config
    lines = [
        f"sparseyolo bench sparse-conv: {cfg.threads} thread(s), engine: {result.engine}, "
        f"{'quick, ' if cfg.quick else ''}{result.seconds:.0f} s",
        "GEMM fp32 (same run):",
    ]
    lines += gemm_lines(result)
    if any(c.section == "2d" for c in result.cases):
        headers, rows, align = table_2d(result)
        lines += [
            "",
            f"2D {cfg.size}x{cfg.size}, batch 1 (subm3 = 3x3 submanifold, s2p1 = 3x3 stride 2 padding 1)",
            C.format_table(headers, rows, align),
        ]
    if any(c.section == "3d" for c in result.cases):
        headers, rows, align = table_3d(result)
        lines += [
            "",
            f"3D LiDAR, 3x3x3 SubM {cfg.channels3d[0]}->{cfg.channels3d[1]}",
            C.format_table(headers, rows, align),
        ]
    if any(c.section == "2d" for c in result.cases):
        lines += [""] + target_lines(result)
    lines += ["", "Notes:"] + [f"  - {n}" for n in result.notes + _case_notes(result)]
    return "\n".join(lines)


def _case_notes(result: Result) -> list[str]:
    seen, out = set(), []
    for case in result.cases:
        for n in case.notes:
            text = (
                n
                if n.startswith(("3D source", "dense conv3d"))
                else f"{case.section} {case.op} {case.cin}->{case.cout} {case.distribution} {case.density:.3g}: {n}"
            )
            if text not in seen and not n.startswith("3D source"):
                seen.add(text)
                out.append(text)
    wrong = [
        (c, name)
        for c in result.cases
        for name, v in c.variants.items()
        if v["kind"].engine == "spconv" and v.get("check") is not None and v["check"] > REL_TOL
    ]
    if wrong:
        out.append(
            "spconv wrong outputs seen: "
            + "; ".join(
                f"{c.section} {c.op} {c.cin}->{c.cout} {c.distribution} {c.density:.3g} {name} "
                f"(rel err {c.variants[name]['check']:.1e})"
                for c, name in wrong
            )
        )
    bad = [c for c in result.cases if c.check_ours is not None and c.check_ours > REL_TOL]
    if bad:
        out.append(
            "OURS DIFFERS FROM DENSE: "
            + "; ".join(
                f"{c.section} {c.op} {c.cin}->{c.cout} {c.distribution} {c.density:.3g} ({c.check_ours:.1e})"
                for c in bad
            )
        )
    return out


def report_markdown(result: Result, argv: list[str], plot_name: str | None) -> str:
    cfg = result.config
    out = [
        "# Sparse convolution benchmark (`sparseyolo bench sparse-conv`)",
        "",
        f"Command: `sparseyolo bench sparse-conv {shlex.join(argv)}`".replace("conv `", "conv`"),
        f"Run time: {result.seconds:.0f} s. Engine kernels: {result.engine}. Threads: {cfg.threads}.",
        "",
    ]
    out += [C.markdown_table(["", ""], list(result.info.items()), "ll"), "", "## GEMM reference (fp32, same run)", ""]
    out += [
        C.markdown_table(
            ["product", "GFLOP/s (median)", "range", "samples"],
            [(k, f"{C.median(v):.1f}", f"{min(v):.1f}-{max(v):.1f}", len(v)) for k, v in result.gemm.items()],
            "lrrr",
        ),
        "",
    ]
    if any(c.section == "2d" for c in result.cases):
        headers, rows, align = table_2d(result)
        out += [
            f"## 2D: {cfg.size}x{cfg.size}, batch 1",
            "",
            "subm3 = 3x3 submanifold conv, s2p1 = 3x3 conv stride 2 padding 1; sites uniform or "
            "clustered (gaussian blobs). Times in ms.",
            "",
            C.markdown_table(headers, rows, align),
            "",
        ]
        out += ["## Target check", ""]
        out += [
            C.markdown_table(*target_table(result)),
            "",
            "SubM 3x3 16->32, uniform sites, map built in the call, vs dense `F.conv2d` forward.",
            "",
        ]
        if plot_name:
            out += [f"![speed-up vs density]({plot_name})", ""]
    if any(c.section == "3d" for c in result.cases):
        headers, rows, align = table_3d(result)
        out += [
            f"## 3D: LiDAR, 3x3x3 SubM {cfg.channels3d[0]}->{cfg.channels3d[1]}",
            "",
            C.markdown_table(headers, rows, align),
            "",
        ]
    out += ["## How to read this", ""] + [f"- {line}" for line in legend(result)] + [""]
    out += ["## Notes", ""] + [f"- {n}" for n in result.notes + _case_notes(result)] + [""]
    return "\n".join(out)
