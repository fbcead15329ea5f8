"""The ADD latency plot: matplotlib when installed, else a small built-in PNG writer."""

import math
import struct
import zlib

from cnibench.common import STAGES


def plot(R, path):
    series = {}
    for key in ("ours", "ref"):
        pts = [(n, ms) for n, ms, ok in R["fill"][key] if ok]
        stages = [(n - 1, R["latency"][key][n]["add"]["p50_ms"]) for n in STAGES]
        series[key] = (pts, stages)
    try:
        import matplotlib  # noqa: F401
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return png_plot(series, path)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    colors = {"ours": "tab:blue", "ref": "tab:red"}
    names = {"ours": "ours (bridge+host-local+portmap+isolation)",
             "ref": "reference (bridge+host-local+portmap+firewall)"}
    for key, (pts, stages) in series.items():
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=4, alpha=0.35,
                       color=colors[key])
        ax.plot([s[0] for s in stages], [s[1] for s in stages], "o-", color=colors[key],
                label=names[key] + " p50")
    ax.set_yscale("log")
    ax.set_xlabel("pods already attached")
    ax.set_ylabel("ADD latency through cnitool (ms)")
    ax.set_title("CNI ADD latency vs pod count")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return "matplotlib"


FONT = {  # 5x7, rows top to bottom
    "0": "01110 10001 10011 10101 11001 10001 01110", "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111", "3": "11110 00001 00001 01110 00001 00001 11110",
    "4": "00010 00110 01010 10010 11111 00010 00010", "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110", "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110", "9": "01110 10001 10001 01111 00001 00010 01100",
    ".": "00000 00000 00000 00000 00000 01100 01100", " ": "00000 00000 00000 00000 00000 00000 00000",
    "A": "01110 10001 10001 11111 10001 10001 10001", "C": "01110 10001 10000 10000 10000 10001 01110",
    "D": "11110 10001 10001 10001 10001 10001 11110", "E": "11111 10000 10000 11110 10000 10000 11111",
    "F": "11111 10000 10000 11110 10000 10000 10000", "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001", "N": "10001 11001 10101 10011 10001 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110", "P": "11110 10001 10001 11110 10000 10000 10000",
    "R": "11110 10001 10001 11110 10100 10010 10001", "S": "01111 10000 10000 01110 00001 00001 11110",
    "T": "11111 00100 00100 00100 00100 00100 00100", "U": "10001 10001 10001 10001 10001 10001 01110",
    "V": "10001 10001 10001 10001 10001 01010 00100", "Y": "10001 10001 01010 00100 00100 00100 00100",
    "(": "00010 00100 01000 01000 01000 00100 00010", ")": "01000 00100 00010 00010 00010 00100 01000",
    "-": "00000 00000 00000 11111 00000 00000 00000", ",": "00000 00000 00000 00000 01100 00100 01000",
    "G": "01110 10001 10000 10111 10001 10001 01111",
    "I": "01110 00100 00100 00100 00100 00100 01110", "H": "10001 10001 10001 11111 10001 10001 10001",
    "B": "11110 10001 10001 11110 10001 10001 11110", "X": "10001 10001 01010 00100 01010 10001 10001",
}


def png_plot(series, path):
    """A small PNG drawn by hand (no matplotlib): log-scale y, fill ADDs as dots, stage p50s
    as big markers joined by lines."""
    W, H = 800, 500
    L, Rm, T, B = 70, 20, 40, 50
    img = [[(255, 255, 255)] * W for _ in range(H)]
    colors = {"ours": (31, 119, 180), "ref": (214, 39, 40)}
    light = {"ours": (170, 200, 230), "ref": (240, 170, 170)}
    allx = [p[0] for s in series.values() for p in s[0] + s[1]] or [0, 1]
    ally = [p[1] for s in series.values() for p in s[0] + s[1] if p[1] > 0] or [1, 10]
    x0, x1 = 0, max(max(allx), 1)
    y0 = 10 ** math.floor(math.log10(min(ally)))
    y1 = 10 ** math.ceil(math.log10(max(ally)))
    if y1 <= y0:
        y1 = y0 * 10

    def px(x):
        return int(L + (x - x0) / (x1 - x0) * (W - L - Rm))

    def py(y):
        y = max(y, y0)
        return int(H - B - (math.log10(y) - math.log10(y0)) / (math.log10(y1) - math.log10(y0))
                   * (H - T - B))

    def put(x, y, c):
        if 0 <= x < W and 0 <= y < H:
            img[y][x] = c

    def line(xa, ya, xb, yb, c):
        n = max(abs(xb - xa), abs(yb - ya), 1)
        for i in range(n + 1):
            put(round(xa + (xb - xa) * i / n), round(ya + (yb - ya) * i / n), c)

    def dot(x, y, r, c):
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if dx * dx + dy * dy <= r * r:
                    put(x + dx, y + dy, c)

    def text(x, y, s, c=(0, 0, 0)):
        for ch in s.upper():
            g = FONT.get(ch, FONT[" "]).split()
            for ry, bits in enumerate(g):
                for rx, bit in enumerate(bits):
                    if bit == "1":
                        put(x + rx, y + ry, c)
            x += 6

    grey = (220, 220, 220)
    d = y0
    while d <= y1 * 1.0001:
        for m in (1, 2, 5):
            v = d * m
            if y0 <= v <= y1:
                line(L, py(v), W - Rm, py(v), grey)
                lab = ("%g" % v)
                text(L - 6 - 6 * len(lab), py(v) - 3, lab)
        d *= 10
    step = 10 ** math.floor(math.log10(x1)) if x1 >= 10 else 1
    if x1 / step < 4:
        step /= 2
    x = 0
    while x <= x1:
        line(px(x), T, px(x), H - B, grey)
        lab = "%g" % x
        text(px(x) - 3 * len(lab), H - B + 8, lab)
        x += step
    line(L, T, L, H - B, (0, 0, 0))
    line(L, H - B, W - Rm, H - B, (0, 0, 0))
    for key, (pts, stages) in series.items():
        for p in pts:
            dot(px(p[0]), py(p[1]), 1, light[key])
    for key, (pts, stages) in series.items():
        for a, b in zip(stages, stages[1:]):
            line(px(a[0]), py(a[1]), px(b[0]), py(b[1]), colors[key])
        for s in stages:
            dot(px(s[0]), py(s[1]), 4, colors[key])
    text(L, 15, "ADD LATENCY (MS, LOG) VS PODS ALREADY ATTACHED")
    dot(W - 230, 19, 4, colors["ours"])
    text(W - 220, 16, "OURS P50", colors["ours"])
    dot(W - 130, 19, 4, colors["ref"])
    text(W - 120, 16, "REFERENCE P50", colors["ref"])
    text(W // 2 - 60, H - 20, "PODS ALREADY ATTACHED")

    raw = b"".join(b"\x00" + bytes(v for px_ in row for v in px_) for row in img)

    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xffffffff))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)
    return "built-in PNG writer"


# ----------------------------------------------------------------------------- main
