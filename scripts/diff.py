"""Where did RL change the weights? Sparsity, rank, spectra and cross-seed overlap of the update.

    python scripts/diff.py --out runs/diff                      # shipped organism: base against
                                                                # rl-seed0, rl-seed1 and sft
    python scripts/diff.py --base B --rl R [--rl R2 ...] [--sft S] --out DIR [--json]
    python scripts/diff.py --base Qwen/Qwen2.5-Math-1.5B --rl path/to/rl --out runs/qwen \\
        --rank-method auto --device cuda

Models are organism checkpoint names (`base`, `rl-sparse-seed0`), folders of safetensors files or hub ids
(from the local cache when HF_HUB_OFFLINE=1).
Without --base, the shipped organism checkpoints are used (resolved when the script runs); with
--base, --rl is required and nothing defaults to the organism.

Writes DIR/results.json (updated_fraction per tolerance, per_module, per_layer, update_rank_mean,
spectral, and with several runs overlap / consensus, with --sft an sft table), DIR/summary.md,
DIR/updated_fraction_heatmap.png (layer x module kind), DIR/updated_fraction.png and, with
several runs or --sft, DIR/overlap.png (overlap against the random-subset baseline).
--save-masks also writes DIR/masks_<run>.safetensors (packed bits; analyses.subnetworks.load_masks).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.reporting import save_figure, write_results  # noqa: E402
from analyses.subnetworks import (  # noqa: E402
    ENGINES,
    MODULE_KINDS,
    TOLERANCE_KINDS,
    RunFamilyDiff,
    WeightDiff,
    diff_runs,
)
from hooks.errors import TwinlensError  # noqa: E402
from scripts import _cli as cli  # noqa: E402


def organism_defaults() -> tuple[str, list[str], str | None]:
    """(base, [rl runs], sft or None) of the shipped organism, resolved now."""
    try:
        import organism

        names = organism.list_checkpoints()
    except Exception as exc:  # the organism package is optional for this script
        raise TwinlensError(f"cannot find the shipped organism checkpoints ({exc}); pass --base and --rl.") from exc
    if "base" not in names or "rl-seed0" not in names:
        raise TwinlensError("the shipped organism checkpoints (base, rl-seed0) are missing "
                            f"(found: {names or 'none'}); train them with scripts/train_organism.py, "
                            "or pass --base and --rl.")
    rls = [str(organism.checkpoint_path(n)) for n in ("rl-seed0", "rl-seed1") if n in names]
    sft = str(organism.checkpoint_path("sft")) if "sft" in names else None
    return str(organism.checkpoint_path("base")), rls, sft


def parse_args(argv=None) -> argparse.Namespace:
    ap = cli.make_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="base checkpoint (organism checkpoint name, folder, .safetensors file or hub id)")
    ap.add_argument("--rl", action="append", default=None, help="RL checkpoint; repeat for several runs")
    ap.add_argument("--sft", help="SFT checkpoint from the same base, shown beside RL")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--overwrite", action="store_true", help=cli.OVERWRITE_HELP)
    ap.add_argument("--json", action="store_true", help=cli.JSON_HELP)
    ap.add_argument("--tolerance", type=cli.nonnegative_float, default=1e-5, help="atol: unchanged iff |delta| <= tolerance")
    ap.add_argument("--compare-dtype", choices=["native", "float32"], default="native",
                    help="delta in the stored dtype (paper's code on bf16) or in float32")
    ap.add_argument("--overlap-tolerance", choices=list(TOLERANCE_KINDS), default="atol",
                    help="which changed-mask the overlaps, consensus and saved masks use")
    ap.add_argument("--no-rank", action="store_true", help="skip update rank (SVD of every matrix)")
    ap.add_argument("--no-spectral", action="store_true", help="skip spectral shift / principal angles")
    ap.add_argument("--rank-method", choices=["exact", "gram", "auto"], default="exact",
                    help="exact: matrix_rank; gram: float64 Gram approximation; auto: gram for big matrices")
    ap.add_argument("--spectral-k", type=cli.positive_int, default=8, help="top-k singular subspaces for principal angles")
    ap.add_argument("--device", type=cli.device, default="cpu", help="device for rank and SVDs (e.g. cuda)")
    ap.add_argument("--engine", choices=list(ENGINES), default="auto",
                    help="change counting: fused numba kernels, the numpy reference, or auto (same numbers)")
    ap.add_argument("--save-masks", action="store_true", help="write DIR/masks_<run>.safetensors")
    ap.add_argument("--no-progress", action="store_true")
    cli.add_ray_arg(ap)
    return ap.parse_args(argv)


def _fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def plot_heatmap(fam: RunFamilyDiff, tolerance: str, path: Path) -> None:
    from matplotlib.figure import Figure

    models = list(fam.runs.values()) + ([fam.sft] if fam.sft else [])
    kinds = sorted({k for m in models for kinds in m.per_layer_module.values() for k in kinds},
                   key=MODULE_KINDS.index)
    layers = sorted({layer for m in models for layer in m.per_layer_module})
    fig = Figure(figsize=(1.2 + 0.7 * len(kinds) * len(models), 1.2 + 0.35 * max(len(layers), 2)))
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    im = None
    for ax, m in zip(axes, models, strict=True):
        grid = [[m.per_layer_module.get(layer, {}).get(k).updated_fraction[tolerance]
                 if k in m.per_layer_module.get(layer, {}) else float("nan") for k in kinds] for layer in layers]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(kinds)), kinds, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=8)
        ax.set_title(m.name, fontsize=9)
        ax.set_xlabel("module kind")
        if len(layers) * len(kinds) <= 120:
            for i, row in enumerate(grid):
                for j, v in enumerate(row):
                    if math.isfinite(v):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                                color="white" if v < 0.5 else "black")
    axes[0].set_ylabel("layer")
    if im is not None:
        fig.colorbar(im, ax=list(axes), label=f"updated fraction ({tolerance})", shrink=0.8)
    fig.suptitle("Fraction of parameters changed, per layer and module", y=1.06)
    save_figure(fig, path)


def plot_updated_fraction(fam: RunFamilyDiff, path: Path) -> None:
    from matplotlib.figure import Figure

    models = list(fam.runs.values()) + ([fam.sft] if fam.sft else [])
    fig = Figure(figsize=(1.5 + 1.3 * len(models), 3.2))
    ax = fig.subplots()
    width = 0.8 / len(TOLERANCE_KINDS)
    for t_i, tol in enumerate(TOLERANCE_KINDS):
        xs = [i + (t_i - 1) * width for i in range(len(models))]
        ax.bar(xs, [m.updated_fraction[tol] for m in models], width=width, label=tol)
    ax.set_xticks(range(len(models)), [m.name for m in models], rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("updated fraction (1 - sparsity)")
    ax.legend(title="unchanged iff", fontsize=8)
    save_figure(fig, path)


def plot_overlap(fam: RunFamilyDiff, path: Path) -> None:
    from matplotlib.figure import Figure

    pairs = fam.overlaps + fam.sft_overlaps
    metrics = [("o1", "random_o1"), ("o2", "random_o2"), ("jaccard", "random_jaccard")]
    fig = Figure(figsize=(2 + 2.4 * len(pairs), 3.4))
    ax = fig.subplots()
    w = 0.13
    for p_i, ov in enumerate(pairs):
        d = ov.to_dict()
        for m_i, (m, r) in enumerate(metrics):
            x = p_i + (m_i - 1) * 2.2 * w
            ax.bar(x - w / 2, d[m] if d[m] is not None else 0, width=w, color=f"C{m_i}",
                   label=m if p_i == 0 else None)
            ax.bar(x + w / 2, d[r] if d[r] is not None else 0, width=w, color=f"C{m_i}", alpha=0.35,
                   hatch="//", label=f"{r}" if p_i == 0 else None)
    ax.set_xticks(range(len(pairs)), [f"{o.run_a} vs {o.run_b}" for o in pairs], rotation=15, ha="right")
    ax.set_ylim(0, 1.35)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel(f"overlap of updated sets ({fam.settings.overlap_tolerance})")
    ax.legend(fontsize=7, ncol=3, loc="upper center")
    ax.set_title("Overlap of updated parameters vs the random-subset baseline")
    save_figure(fig, path)


def summarize(fam: RunFamilyDiff) -> str:
    st = fam.settings
    models: list[WeightDiff] = list(fam.runs.values()) + ([fam.sft] if fam.sft else [])
    lines = ["# Weight diff: what RL changed", "",
             f"Base: `{fam.base_source}`. Tolerances: exact (delta != 0), atol (|delta| > {st.tolerance:g}), "
             f"bf16 (|w'-w| > 1e-3 max(|w|,|w'|)); delta computed {st.compare}. "
             f"{fam.primary.overall.n_params:,} parameters compared; tied embeddings: {fam.tied.status} "
             f"({fam.tied.reason}).", "",
             "| model | updated exact | updated atol | updated bf16 | update rank (mean) | spectral shift (mean) |",
             "|---|---|---|---|---|---|"]
    for m in models:
        uf = m.updated_fraction
        spec = m.spectral_summary()
        lines.append(f"| {m.name} | {_fmt(uf['exact'])} | {_fmt(uf['atol'])} | {_fmt(uf['bf16'])} | "
                     f"{_fmt(m.update_rank_mean)} | {_fmt(spec['mean_spectral_shift'] if spec else None)} |")
    lines += ["", "Published (Mukherjee et al.): RL updates 5-30% of parameters (atol 1e-5 on bf16), SFT 85-94%; "
              "update rank 99.2-99.8%.", ""]
    kinds = [k for k in fam.primary.per_module]
    lines += ["## Per module kind (updated fraction, atol)", "",
              "| module | " + " | ".join(m.name for m in models) + " |", "|---" * (len(models) + 1) + "|"]
    for k in kinds:
        vals = [m.per_module.get(k) for m in models]
        lines.append(f"| {k} | " + " | ".join(_fmt(v.updated_fraction["atol"]) if v else "n/a" for v in vals) + " |")
    if fam.overlaps or fam.sft_overlaps:
        lines += ["", f"## Overlap of updated sets ({st.overlap_tolerance}), against random subsets of the same size",
                  "", "| pair | o1 | random o1 | o2 | random o2 | Jaccard | random Jaccard |", "|---|---|---|---|---|---|---|"]
        for o in fam.overlaps + fam.sft_overlaps:
            lines.append(f"| {o.run_a} vs {o.run_b} | {_fmt(o.o1)} | {_fmt(o.random_o1)} | {_fmt(o.o2)} | "
                         f"{_fmt(o.random_o2)} | {_fmt(o.jaccard)} | {_fmt(o.random_jaccard)} |")
    if fam.consensus:
        c = fam.consensus
        lines += ["", f"Consensus over {len(c.runs)} RL runs: {_fmt(c.consensus_ratio)} of all parameters are "
                  f"changed by every run (random: {_fmt(c.random_consensus_ratio)}); of the parameters any run "
                  f"changed, {_fmt(c.consensus_of_union)} are changed by all (random: "
                  f"{_fmt(c.random_consensus_of_union)}). Histogram (changed by 0..N runs): {c.histogram}."]
    if len(fam.runs) > 1:
        lines += ["", f"Top-level numbers in results.json are for the first run, `{fam.primary.name}`; "
                  "`per_run` has every run."]
    methods = fam.primary.rank_methods
    if methods.get("gram"):
        lines += ["", f"Update rank of {methods['gram']} matrices used the float64 Gram approximation (labelled "
                  "`gram` per tensor)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    return cli.run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> dict:
    if args.base is None:
        if args.rl or args.sft:
            raise TwinlensError("--rl/--sft given without --base; pass --base too (the organism defaults "
                                "apply only when no model is given).")
        base, rls, sft = organism_defaults()
    else:
        if not args.rl:
            raise TwinlensError("--base given without --rl; pass at least one --rl checkpoint.")
        # organism checkpoint names (``base``, ``rl-sparse-seed0``) resolve as in every other job
        from analyses.sampling import resolve_model_spec

        base, rls = str(resolve_model_spec(args.base)[1]), [str(resolve_model_spec(r)[1]) for r in args.rl]
        sft = str(resolve_model_spec(args.sft)[1]) if args.sft else None
    fam = diff_runs(base, rls, sft=sft, keep_masks=args.save_masks, progress=not args.no_progress,
                    tolerance=args.tolerance, compare=args.compare_dtype,
                    overlap_tolerance=args.overlap_tolerance, rank=not args.no_rank,
                    rank_method=args.rank_method, spectral=not args.no_spectral,
                    spectral_k=args.spectral_k, device=args.device, engine=args.engine, cluster=cli.cluster(args))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = fam.to_dict()
    plot_heatmap(fam, args.overlap_tolerance, out / "updated_fraction_heatmap.png")
    plot_updated_fraction(fam, out / "updated_fraction.png")
    if fam.overlaps or fam.sft_overlaps:
        plot_overlap(fam, out / "overlap.png")
    if args.save_masks:
        models = list(fam.runs.values()) + ([fam.sft] if fam.sft else [])
        results["masks"] = {m.name: str(m.masks.save(out / f"masks_{m.name}.safetensors")) for m in models}
    write_results(out, results, summarize(fam))
    return results


if __name__ == "__main__":
    raise SystemExit(main())
