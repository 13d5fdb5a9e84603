"""Draws tools/bench-scale's recall@10 / queries-per-second sweeps as an SVG (no plotting library needed).

    python3 tools/plot_scale.py RESULTS.json OUT.svg

One panel per proxy size in RESULTS.json (written by tools/bench_scale.py); in each, one line per variant
through its ef points, recall@10 on x and queries/s on a log scale on y (up and right is better), each
point labelled with its ef. bench_scale.py draws it beside its JSON at the end of a run."""
import json
import math
import sys
from xml.sax.saxutils import escape

# tab10, the palette of r1s policy plot
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 560, 380, 64, 16, 40, 92


def panel(run, x0, floor):
    """SVG elements of one run's panel, its left edge at x0."""
    variants = run["variants"]
    pts = {v: sorted((int(ef), r, q) for ef, (r, q) in x["efs"].items() if r is not None and q)
           for v, x in variants.items()}
    allp = [p for ps in pts.values() for p in ps]
    if not allp:
        return []
    rmin = math.floor(min(p[1] for p in allp) * 20) / 20
    rmax = min(1.0, math.ceil(max(p[1] for p in allp) * 20) / 20)
    qmin = 10 ** math.floor(math.log10(min(p[2] for p in allp)))
    qmax = 10 ** math.ceil(math.log10(max(p[2] for p in allp)))
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def sx(r):
        return x0 + PAD_L + (r - rmin) / max(rmax - rmin, 1e-9) * pw

    def sy(q):
        return PAD_T + (1 - (math.log10(q) - math.log10(qmin)) / max(math.log10(qmax / qmin), 1e-9)) * ph

    out = [f'<text x="{x0 + W / 2}" y="22" text-anchor="middle" font-size="14">'
           f'{run["rows"]:,} rows ({escape(run["label"])})</text>',
           f'<rect x="{x0 + PAD_L}" y="{PAD_T}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>']
    steps = round((rmax - rmin) / 0.05)
    for i in range(steps + 1):
        r = rmin + i * 0.05
        out.append(f'<line x1="{sx(r):.1f}" y1="{PAD_T}" x2="{sx(r):.1f}" y2="{PAD_T + ph}" stroke="#ddd"/>')
        out.append(f'<text x="{sx(r):.1f}" y="{PAD_T + ph + 16}" text-anchor="middle" font-size="11">{r:.2f}</text>')
    q = qmin
    while q <= qmax * 1.0001:
        for m in (1, 2, 5):
            if qmin <= q * m <= qmax:
                y = sy(q * m)
                out.append(f'<line x1="{x0 + PAD_L}" y1="{y:.1f}" x2="{x0 + PAD_L + pw}" y2="{y:.1f}" stroke="#eee"/>')
                out.append(f'<text x="{x0 + PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{q * m:,.0f}</text>')
        q *= 10
    if rmin <= floor <= rmax:
        out.append(f'<line x1="{sx(floor):.1f}" y1="{PAD_T}" x2="{sx(floor):.1f}" y2="{PAD_T + ph}" '
                   'stroke="#888" stroke-dasharray="4 3"/>')
    out.append(f'<text x="{x0 + PAD_L + pw / 2}" y="{PAD_T + ph + 34}" text-anchor="middle" font-size="12">'
               'recall@10</text>')
    out.append(f'<text transform="translate({x0 + 14},{PAD_T + ph / 2}) rotate(-90)" text-anchor="middle" '
               'font-size="12">queries/s (log)</text>')
    for i, (v, ps) in enumerate(pts.items()):
        c = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{sx(r):.1f},{sy(q_):.1f}" for _, r, q_ in ps)
        out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
        for ef, r, q_ in ps:
            out.append(f'<circle cx="{sx(r):.1f}" cy="{sy(q_):.1f}" r="3" fill="{c}"/>')
            out.append(f'<text x="{sx(r) + 4:.1f}" y="{sy(q_) - 5:.1f}" font-size="9" fill="{c}">{ef}</text>')
        ly = PAD_T + ph + 52 + (i // 2) * 16
        lx = x0 + PAD_L + (i % 2) * pw / 2
        out.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 20}" y2="{ly - 4}" stroke="{c}" stroke-width="2"/>')
        out.append(f'<text x="{lx + 26}" y="{ly}" font-size="12">{escape(v)}</text>')
    return out


def svg(results):
    """The whole SVG document for a bench_scale.py results dict."""
    runs = [r for r in results.get("runs", []) + ([results["real"]] if results.get("real") else []) if r]
    floor = results.get("floor", 0.95)
    body = []
    for i, r in enumerate(runs):
        body += panel(r, i * W, floor)
    note = (f'M {results.get("m")}, efConstruction {results.get("ef_construction")}, {results.get("threads")} threads, '
            f'{results.get("queries")} queries; labels: ef; dashed: recall@10 = {floor}')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * max(len(runs), 1)}" height="{H + 14}" '
            f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>'
            + "".join(body)
            + f'<text x="8" y="{H + 8}" font-size="10" fill="#555">{escape(note)}</text></svg>\n')


def write(results, path):
    """Writes svg(results) to path through a temporary file renamed when complete."""
    import os
    tmp = path + ".part"
    with open(tmp, "w") as f:
        f.write(svg(results))
    os.replace(tmp, path)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    write(json.load(open(sys.argv[1])), sys.argv[2])
