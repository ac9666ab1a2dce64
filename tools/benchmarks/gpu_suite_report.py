"""gpu_results.json -> gpu_results.md: the table the README's GPU section is made from.

    python tools/benchmarks/gpu_suite_report.py $OUT/gpu_results.json $OUT/gpu_results.md
"""
from __future__ import annotations

import argparse
import json


def _f(v, fmt="{:.3f}"):
    return "" if v is None else fmt.format(v)


def write_report(results: dict, path: str) -> None:
    s = results["setting"]
    lines = [f"# GreenMIM on {results['device']}", "",
             f"torch {results['torch']}; {s['arch']} {s['img']} px, batch {s['batch']}, mask 0.75, "
             f"{'bf16 autocast' if 'cuda' in str(results.get('device', '')).lower() or results['device'].startswith('NVIDIA') else 'fp32'}; "
             "whole step = forward + loss + backward + fused AdamW, dense (SimMIM) and green alternated, "
             "medians; memory = peak allocated during a step above the resident model.", "",
             "| case | dense s/step | green s/step | speed-up | green img/s | dense / green MB | mem. reduction | plan ms/step (host) | captured vs eager (grad rel. diff) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["cases"]:
        mem = "" if r.get("dense_peak_mb") is None else f"{r['dense_peak_mb']:.0f} / {r['green_peak_mb']:.0f}"
        eq = r.get("green_vs_eager", {}).get("grad_rel_diff")
        lines.append(f"| {r['case']} | {_f(r['dense_s'], '{:.4f}')} | {_f(r['green_s'], '{:.4f}')} | "
                     f"**{r['speedup']:.2f}x** | {r['green_img_per_s']:.0f} | {mem} | "
                     f"{_f(r.get('mem_reduction'))} | {_f(r.get('plan_ms_per_step'), '{:.1f}')} | {_f(eq, '{:.1e}')} |")
    if results.get("checks"):
        lines += ["", "Checks: " + json.dumps(results["checks"])]
    for ld in results.get("loader") or []:
        dec = ld.get("decode_ms_per_batch")
        lines += ["", f"Loader, data.decode={ld['decode']} (ImageNet-like JPEGs, {ld['workers']} workers, batch "
                      f"{ld['batch']}, masks planned in the workers): {ld['img_per_s']:.0f} img/s, "
                      f"{ld.get('cores_used', float('nan')):.1f} cores busy"
                      + (f", {dec:.1f} device ms per batch decoding" if dec is not None else "") + "."]
    if results.get("largest_batch"):
        lb = results["largest_batch"]
        lines += ["", f"Largest batch that fits (doubling from {s['batch']}, eager, shared mask): "
                      f"dense {lb['dense']}, green {lb['green']}."]
    if results.get("official"):
        lines += ["", "Side by side with the official GreenMIM code (Swin-B, shared mask, same process, alternated):", "",
                  "| case | img/s | vs official | vs dense |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['case']} | {r['img_per_s']:.0f} | {r['vs_official']:.2f}x | {r['vs_dense']:.2f}x |"
                  for r in results["official"]]
    e2e = results.get("end_to_end")
    if e2e:
        frac = e2e.get("fraction_of_step")
        lines += ["", f"End to end (pretrain/main_pretrain.py from JPEG files, data.decode=auto, batch {e2e['batch']}, "
                      f"{e2e['workers']} workers of {e2e['cpu_cores']} cores): {e2e['img_per_s']:.0f} img/s"
                      + (f" = {100 * frac:.0f}% of the step on device-resident images ({e2e['step_img_per_s']:.0f})"
                         if frac else "") + f". First log line: `{e2e['first_log_line']}`"]
    if results.get("skipped"):
        lines += ["", "Skipped (time budget): " + ", ".join(results["skipped"])]
    if results.get("errors"):
        lines += ["", "Errors: " + "; ".join(results["errors"])]
    lines += ["", f"Suite wall time {results.get('wall_s', 0):.0f} s."]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="gpu_results.json of a suite run")
    p.add_argument("markdown", help="the table to write")
    args = p.parse_args()
    with open(args.results) as f:
        write_report(json.load(f), args.markdown)
