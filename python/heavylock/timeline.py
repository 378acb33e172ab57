"""Draw a run as a self-contained SVG (or HTML page holding it): one row per
worker, one bar per test (heavy tests in their own colour), lock waits as
hatched bars before them, and the sampled memory of the process tree as a
curve beneath.  The time axis starts at the first test (or heavy import),
not at pytest's start-up; test names are drawn on the bars wide enough to
hold them (every bar has a tooltip).  No scripts, no network."""

from __future__ import annotations

from html import escape

HEAVY, LIGHT, WAIT, MEM, IMPORT = "#c0392b", "#5dade2", "#f5b041", "#7d3c98", "#6e2c00"
LANE = "#fbeee6"
W, LEFT, ROW, MEM_H, TOP = 1200, 90, 26, 140, 40
CHAR_W = 6.2   # average width of a character of the 11 px bar labels


def short_name(e):
    """What a bar says: the test's name within its file (an import: the file)."""
    nodeid = e["nodeid"]
    if e.get("kind") == "import":
        return "import " + nodeid.rsplit("/", 1)[-1]
    return nodeid.split("::", 1)[-1] if "::" in nodeid else nodeid


def label(x0, x1, y, text):
    """The bar's name inside it, when it fits."""
    if (x1 - x0) < len(text) * CHAR_W + 6:
        return ""
    return (f'<text class="name" x="{x0 + 3:.1f}" y="{y + ROW * 0.62:.1f}" font-size="11" '
            f'fill="white" pointer-events="none">{escape(text)}</text>')


def render_svg(events, memory=(), title="heavylock timeline"):
    events = [e for e in events if e.get("start") and e.get("end")]
    workers = sorted({e.get("worker") or "main" for e in events},
                     key=lambda w: (len(w), w))
    lanes = {e.get("worker") or "main" for e in events if e.get("lane")}  # heavy lane rows
    times = [e["start"] for e in events] + [e["end"] for e in events]
    times += [e["wait_start"] for e in events if e.get("wait_start")]
    t0, t1 = (min(times), max(times)) if times else (0.0, 1.0)
    memory = [(t, b) for t, b in memory if t0 <= t <= t1]  # start-up is not the run
    span = max(t1 - t0, 1e-6)
    ntests = sum(1 for e in events if e.get("kind", "test") == "test")
    plot_w = W - LEFT - 20
    rows_h = ROW * max(len(workers), 1)
    height = TOP + rows_h + 30 + MEM_H + 50

    def x(t):
        return LEFT + (t - t0) / span * plot_w

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" '
           f'viewBox="0 0 {W} {height}" font-family="sans-serif" font-size="12">',
           "<defs><pattern id=\"hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" "
           f"patternTransform=\"rotate(45)\"><rect width=\"3\" height=\"6\" fill=\"{WAIT}\"/>"
           "</pattern></defs>",
           f'<rect width="{W}" height="{height}" fill="white"/>',
           f'<text x="{LEFT}" y="18" font-size="14" font-weight="bold">{escape(title)}</text>',
           f'<text x="{LEFT}" y="33" fill="#555">{ntests} tests on {len(workers)} '
           f'worker(s), {span:.1f} s. '
           f'<tspan fill="{HEAVY}">&#9632; heavy (holds the lock)</tspan>  '
           f'<tspan fill="{LIGHT}">&#9632; light</tspan>  '
           f'<tspan fill="{WAIT}">&#9632; waiting for the lock</tspan>  '
           f'<tspan fill="{IMPORT}">&#9632; heavy import</tspan>  '
           f'<tspan fill="{MEM}">&#9644; memory of the process tree</tspan>  '
           '<tspan>&#9633; black edge: worker crashed</tspan></text>']
    for i, w in enumerate(workers):
        y = TOP + i * ROW
        out.append(f'<g class="row{" lane" if w in lanes else ""}" data-worker="{escape(w)}">')
        if w in lanes:
            out.append(f'<rect x="0" y="{y}" width="{W}" height="{ROW}" fill="{LANE}"/>')
        out.append(f'<text x="8" y="{y + ROW * 0.65:.1f}">{escape(w)}'
                   f'{" (lane)" if w in lanes else ""}</text>')
        out.append(f'<line x1="{LEFT}" x2="{W - 20}" y1="{y + ROW - 1}" y2="{y + ROW - 1}" '
                   'stroke="#eee"/>')
        for e in events:
            if (e.get("worker") or "main") != w:
                continue
            tip = escape(f"{e['nodeid']} ({e.get('rule') or ''}"
                         + (f", {e['outcome']}" if e.get("outcome") else "")
                         + (f": worker died: {e.get('cause') or 'cause unknown'}"
                            if e.get("outcome") == "crashed" else "") + ")")
            if e.get("wait_start") and e.get("acquired") and e["acquired"] - e["wait_start"] > 0.005:
                wx = x(e["wait_start"])
                out.append(f'<rect class="wait" x="{wx:.1f}" y="{y + 4}" '
                           f'width="{max(x(e["acquired"]) - wx, 1):.1f}" height="{ROW - 8}" '
                           f'fill="url(#hatch)"><title>waiting: {tip}, '
                           f'{e["acquired"] - e["wait_start"]:.2f} s</title></rect>')
            start = e["acquired"] or e["start"]
            colour = HEAVY if e.get("acquired") else LIGHT
            kind = "import" if e.get("kind") == "import" else "test"
            if kind == "import":
                colour = IMPORT
            crashed = e.get("outcome") == "crashed"
            edge = 'stroke="black" stroke-width="2"' if crashed else \
                'stroke="white" stroke-width="0.5"'
            out.append(f'<rect class="{kind}{" crashed" if crashed else ""}" x="{x(start):.1f}" '
                       f'y="{y + 3}" width="{max(x(e["end"]) - x(start), 1):.1f}" '
                       f'height="{ROW - 6}" fill="{colour}" {edge}><title>{tip}, '
                       f'{e["end"] - start:.2f} s</title></rect>')
            text = short_name(e) + (f" (worker died: {e.get('cause') or 'cause unknown'})"
                                    if crashed else "")
            name = label(x(start), x(e["end"]), y, text)
            if name:
                out.append(name)
        out.append("</g>")
    # memory curve
    base = TOP + rows_h + 30 + MEM_H
    out.append(f'<text x="8" y="{base - MEM_H / 2:.0f}">memory</text>')
    out.append(f'<line x1="{LEFT}" x2="{W - 20}" y1="{base}" y2="{base}" stroke="#999"/>')
    if memory:
        peak = max(b for _, b in memory) or 1
        pts = " ".join(f"{x(t):.1f},{base - b / peak * MEM_H:.1f}" for t, b in memory)
        out.append(f'<polyline class="memory" points="{pts}" fill="none" stroke="{MEM}" '
                   'stroke-width="1.5"/>')
        out.append(f'<text x="{LEFT + 4}" y="{base - MEM_H - 4}" fill="{MEM}">peak '
                   f'{peak / 2**20:.0f} MiB</text>')
    # time axis
    for k in range(11):
        t = t0 + span * k / 10
        out.append(f'<text x="{x(t):.0f}" y="{base + 16}" text-anchor="middle" fill="#555">'
                   f'{t - t0:.1f}s</text>')
    out.append("</svg>")
    return "\n".join(out)


def write(path, events, memory=(), title="heavylock timeline"):
    svg = render_svg(events, memory, title)
    if str(path).lower().endswith((".html", ".htm")):
        svg = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{escape(title)}"
               f"</title></head><body>{svg}</body></html>")
    import os

    from heavylock.settings import write_output

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_output(path, svg)
