"""Generator of the shipped CV-QKD reconciliation codes: writes native/src/ldpc_cv_codes.c.

    python native/tools/ldpc_cv_codes.py      # from the project root; deterministic (fixed seeds)

Ensemble: multi-edge-type (MET) LDPC codes with degree-1 variable nodes, the family Jouguet, Kunz-Jacques &
Leverrier, "Long-distance continuous-variable quantum key distribution with a Gaussian modulation", PRA 84,
062317 (2011) use for GG02 at SNR 0.03-0.2 (their rate-1/10 code: beta 0.93 at SNR 0.161), after
Richardson & Urbanke, "Multi-edge type LDPC codes" (2004). Three edge types:
  type 1: the "core" variables (a fraction c of n, column degree 3 here) among a few checks (c - R of n): a
          high-rate precode;
  type 2: each core variable to many (D ~ 37) of the other checks;
  type 3: each of those checks also holds exactly one degree-1 variable of its own (1 - c of n).
The type-2 degree j of a degree-1 variable's check follows a Raptor-style output distribution with a few j = 1
(they start the decoding from the channel alone) and about half j = 2 (Etesami & Shokrollahi, "Raptor codes on
binary memoryless symmetric channels", IEEE Trans. IT 52(5), 2006, Sec. VI). c and the j distribution were chosen
here by Monte-Carlo density evolution of the ensemble on the BIAWGN channel (threshold about SNR 0.165 for rate
1/10) and then by simulation of the lifted codes with the library's decoder (qkd_ldpc_bp.h); the published
rate-1/10 code's exact distribution was not available to copy. In MET notation, per n variables:
    nu(r, x) = 0.105 r1 x1^3 x2^D + 0.895 r1 x3,   D = 36-37,
    mu(x)    = 0.005 x1^63 + 0.895 x3 (0.020 x2 + 0.450 x2^2 + 0.200 x2^3 + 0.101 x2^4 + 0.099 x2^6
               + 0.079 x2^10 + 0.050 x2^20).
The rate-1/20 ensemble has the same shape with c = 0.053 (53 core columns, 3 type-1 rows, D = 77) and the same j
distribution over its 947 type-3 rows. A degree-3 precode matters: with degree-2 core columns the short cycles of
the precode made low-weight codewords (a decoder then converged to a wrong word with the right syndrome).

PUBLISHED holds ensembles taken from the literature instead (the rate-0.02 one of Mani et al., PRA 103, 062419
(2021)), each node with exactly its term's degrees; built the same way on nb = 2000 columns.

Construction: a base graph of nb = 1000 columns (rate 1/10: 105 core, 895 degree-1, 900 rows), each core column's
edges on the least-used rows of their type (progressive-edge-growth style), each degree-1 column on its own row;
then a quasi-cyclic lifting (as Milicevic et al., "Quasi-cyclic multi-edge LDPC codes for long-distance quantum
cryptography", npj Quantum Information 4, 21 (2018) lift MET codes) whose shifts each close the fewest lifted
4-cycles with the entries placed before (Fossorier, IEEE Trans. IT 50(8), 2004, Thm 2).
"""
from __future__ import annotations

import pathlib

import numpy as np

OUT = pathlib.Path(__file__).resolve().parents[1] / "src" / "ldpc_cv_codes.c"


# name -> (core columns, type-1 degree of a core column, type-1 rows, {j: type-3 rows with j core edges}, lifts).
# Every type-3 row also holds one degree-1 column of its own; nb = core + type-3 rows, mb = type-1 + type-3 rows.
ENSEMBLES = {
    "met-r0.10": (105, 3, 5, {1: 18, 2: 403, 3: 179, 4: 90, 6: 89, 10: 71, 20: 45}, (64, 256)),
    "met-r0.05": (53, 3, 3, {1: 19, 2: 426, 3: 189, 4: 95, 6: 95, 10: 76, 20: 47}, (64,)),
}

# Published ensembles, node perspective per n variables (edge types 1-3 as above; r1 = the channel):
# name -> ({(type-1, type-2 degree) of a core column: columns}, {type-1 row degree: rows}, {j: type-3 rows}, lifts),
# scaled to nb = 2000 base columns. Codes are appended after ENSEMBLES' so the shipped indices stay.
# "met-r0.02": the rate-0.02 ensemble of Mani, Gehring, Grabenweger, Oemer, Pacher & Andersen, "Multiedge-type
# low-density parity-check codes for continuous-variable quantum key distribution", PRA 103, 062419 (2021):
#     nu(r, x) = 0.0225 r1 x1^2 x2^52 + 0.0175 r1 x1^3 x2^57 + 0.96 r1 x3,
#     mu(x)    = 0.0165 x1^4 + 0.0035 x1^9 + 0.7125 x2^2 x3 + 0.2475 x2^3 x3
# (both sides hold 0.0975 type-1 and 2.1675 type-2 edges per variable; rate 1 - 0.98 = 0.02).
# Source: the coefficients were read from a public repository's transcription, not from the paper. The citation
# (title, authors, PRA 103, 062419 (2021), codes for rates 0.1, 0.05, 0.02, 0.01) is confirmed by DTU's publication
# record; the preprint appears to be arXiv:1812.05867. The edge balances and the rate above hold exactly, which a
# mistyped coefficient would likely break, but the paper's table (and its number) could not be read to compare.
PUBLISHED = {
    "met-r0.02": ({(2, 52): 45, (3, 57): 35}, {4: 33, 9: 7}, {2: 1425, 3: 495}, (128, 512)),
}


def base_graph(core: int, d1: int, rows1: int, rows3: dict[int, int], rng: np.random.Generator):
    """(row, col) entries: rows 0..rows1-1 are type-1 checks on core columns 0..core-1, then the type-3 rows, each
    on j core columns and on its own degree-1 column (core + k). Core columns are spread evenly (the least-used
    first, random among equals), so core degrees differ by at most one within a type."""
    entries = []
    load1 = np.zeros(rows1, dtype=np.int64)
    for col in range(core):
        order = np.lexsort((rng.random(rows1), load1))[:d1]
        load1[order] += 1
        entries.extend((int(r), col) for r in order)
    load2 = np.zeros(core, dtype=np.int64)
    degrees = [j for j in sorted(rows3, reverse=True) for _ in range(rows3[j])]
    for k, j in enumerate(degrees):
        row = rows1 + k
        cols = np.lexsort((rng.random(core), load2))[:j]
        load2[cols] += 1
        entries.extend((row, int(c)) for c in cols)
        entries.append((row, core + k))
    return entries, core + len(degrees), rows1 + len(degrees)


def lift(entries: list[tuple[int, int]], z: int, rng: np.random.Generator) -> dict[tuple[int, int], int]:
    """A shift per entry, each the value that closes the fewest lifted 4-cycles with the entries placed before it
    ((r,c)-(r,c')-(r',c')-(r',c) closes iff the alternating sum of shifts is 0 mod z), random among equals."""
    shifts: dict[tuple[int, int], int] = {}
    row_cols: dict[int, list[int]] = {}
    col_rows: dict[int, list[int]] = {}
    for r, c in entries:
        closing = np.zeros(z, dtype=np.int64)
        for c2 in row_cols.get(r, ()):
            base = shifts[(r, c2)]
            for r2 in col_rows.get(c, ()):
                s22 = shifts.get((r2, c2))
                if s22 is not None:
                    closing[(base - s22 + shifts[(r2, c)]) % z] += 1
        best = np.flatnonzero(closing == closing.min())
        shifts[(r, c)] = int(best[rng.integers(best.size)])
        row_cols.setdefault(r, []).append(c)
        col_rows.setdefault(c, []).append(r)
    return shifts


def published_base_graph(core_cols: dict[tuple[int, int], int], rows1: dict[int, int], rows3: dict[int, int],
                         rng: np.random.Generator):
    """(row, col) entries of a PUBLISHED ensemble: core columns 0..core-1 with their (type-1, type-2) degrees as
    the ensemble lists them (most edges first), type-1 rows 0..R1-1 with their degrees, then the type-3 rows, each
    on j core columns and its own degree-1 column. Every edge goes to the distinct row (column) with the most free
    sockets of its type, random among equals, so the per-node degrees are exactly the ensemble's."""
    cols = [d for d in sorted(core_cols, key=lambda d: (-d[0], -d[1])) for _ in range(core_cols[d])]
    core = len(cols)
    free1 = np.array([deg for deg in sorted(rows1, reverse=True) for _ in range(rows1[deg])], dtype=np.int64)
    free2 = np.array([d2 for _, d2 in cols], dtype=np.int64)
    entries = []
    for col, (d1, _) in enumerate(cols):
        order = np.lexsort((rng.random(free1.size), -free1))[:d1]
        if np.any(free1[order] <= 0):
            raise ValueError("type-1 sockets do not match")
        free1[order] -= 1
        entries.extend((int(r), col) for r in order)
    degrees = [j for j in sorted(rows3, reverse=True) for _ in range(rows3[j])]
    for k, j in enumerate(degrees):
        row = free1.size + k
        order = np.lexsort((rng.random(core), -free2))[:j]
        if np.any(free2[order] <= 0):
            raise ValueError("type-2 sockets do not match")
        free2[order] -= 1
        entries.extend((row, int(c)) for c in order)
        entries.append((row, core + k))
    if free1.any() or free2.any():
        raise ValueError("sockets left over: the ensemble's edge counts differ between its two sides")
    return entries, core + len(degrees), free1.size + len(degrees)


def lifts_of(name: str) -> tuple[int, ...]:
    return (ENSEMBLES.get(name) or PUBLISHED[name])[-1]


def names() -> list[str]:
    """Every ensemble in table order: the code index on the wire is the position in this list's lifts."""
    return [*ENSEMBLES, *PUBLISHED]


def build(name: str, z: int) -> tuple[int, int, list[tuple[int, int, int]]]:
    seed = sum(map(ord, name))
    if name in PUBLISHED:
        core_cols, rows1, rows3, _ = PUBLISHED[name]
        entries, nb, mb = published_base_graph(core_cols, rows1, rows3, np.random.default_rng(seed))
        shifts = lift(entries, z, np.random.default_rng(seed * 1000 + z))
        return mb, nb, sorted((r, c, s) for (r, c), s in shifts.items())
    core, d1, rows1, rows3, _ = ENSEMBLES[name]
    entries, nb, mb = base_graph(core, d1, rows1, rows3, np.random.default_rng(seed))
    shifts = lift(entries, z, np.random.default_rng(seed * 1000 + z))
    return mb, nb, sorted((r, c, s) for (r, c), s in shifts.items())


def write_c(codes) -> str:
    lines = ["/* ldpc_cv_codes.c - GENERATED by native/tools/ldpc_cv_codes.py; do not edit. Multi-edge-type QC-LDPC",
             " * codes for CV-QKD reverse reconciliation (see the generator for the ensembles and their sources). */",
             '#include "ldpc_cv_internal.h"', ""]
    tables = []
    for i, (name, z, mb, nb, entries) in enumerate(codes):
        row_start = [0] * (mb + 1)
        for r, _, _ in entries:
            row_start[r + 1] += 1
        for r in range(mb):
            row_start[r + 1] += row_start[r]
        lines.append(f"/* code {i}: {name} z={z} mb={mb} nb={nb} n={nb * z} rate={1 - mb / nb:.4f} */")
        for key, values in (("row_start", row_start), ("cols", [c for _, c, _ in entries]),
                            ("shifts", [s for _, _, s in entries])):
            lines.append(f"static const uint16_t cv{i}_{key}[] = {{")
            for k in range(0, len(values), 16):
                lines.append("    " + ", ".join(str(v) for v in values[k:k + 16]) + ",")
            lines.append("};")
        tables.append(f"    {{{z}, {mb}, {nb}, {len(entries)}, cv{i}_row_start, cv{i}_cols, cv{i}_shifts, 0}},")
    lines += ["", "const qkd_ldpc_table qkd_ldpc_cv_tables[] = {", *tables, "};",
              "const size_t qkd_ldpc_cv_table_count = sizeof qkd_ldpc_cv_tables / sizeof qkd_ldpc_cv_tables[0];",
              ""]
    return "\n".join(lines)


def main() -> None:
    codes = []
    for name in names():
        for z in lifts_of(name):
            mb, nb, entries = build(name, z)
            codes.append((name, z, mb, nb, entries))
            print(f"{name} z={z}: n={nb * z} m={mb * z} rate={1 - mb / nb:.4f} edges={len(entries)}", flush=True)
    OUT.write_text(write_c(codes))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
