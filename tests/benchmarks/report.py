"""The report: a text table (stdout and .txt) and a PNG chart (matplotlib, optional)."""

from __future__ import annotations

from pathlib import Path

from . import report_crypto
from .common import log


def _f(v, fmt="{:.1f}", dash="-"):
    return dash if v is None else fmt.format(v)


def one_line(r: dict) -> str:
    if "failed" in r:
        return "FAILED: " + r["failed"].splitlines()[0][:200]
    s = (f"{r.get('images_delivered')}/{r.get('images_sent')} delivered, {_f(r.get('images_per_s'))} img/s, "
         f"{_f(r.get('mb_per_s'))} MB/s, ack->delivery p50 {_f(r.get('ack_to_delivery_p50_s'), '{:.3f}')} "
         f"p99 {_f(r.get('ack_to_delivery_p99_s'), '{:.3f}')} s, CPU {_f(_ms(r.get('cpu_s_per_image')))} ms/img, "
         f"peak RSS {_f(r.get('peak_rss_mb'))} MB")
    if r.get("incomplete"):
        s += f" INCOMPLETE ({r['incomplete']})"
    return s


def _ms(v):
    return None if v is None else 1000 * v


def table(res: dict) -> str:
    m, v, st = res["machine"], res["versions"], res["settings"]
    lines = []
    add = lines.append
    reps = st["repeat"]
    add(f"pacsguard benchmark  {res['started_at']}  (median of {reps} run{'s' if reps != 1 else ''}"
        f"{', QUICK mode: smoke-test sizes, figures not meaningful' if st['quick'] else ''})")
    load = m.get("loadavg_start", [0])[0]
    add(f"machine : {m['nproc']} cores, {m['cpu_model']}, {m['memory_gib']} GiB, kernel {m['kernel']}; "
        f"load avg at start {load:.2f}, at end {m.get('loadavg_end', [0])[0]:.2f}"
        + ("  (busy machine: figures are noisy)" if load > 0.7 else ""))
    add(f"versions: pacsguard {v['pacsguard']}, {v['dcmtk']}, {v['orthanc']}, Python {v['python']}, "
        f"pydicom {v['pydicom']}, pynetdicom {v['pynetdicom']}")
    c = res.get("corpus")
    if c:
        ct = c["ct_series"]
        add(f"corpus  : {ct['images']} CT {ct['rows']}x{ct['columns']} int16 + {c['pydicom_bundled']['images']} "
            f"pydicom bundled = {c['files']} files in {c['series']} series, {c['bytes'] / 1e6:.1f} MB, "
            f"sent on {c.get('associations', '?')} associations "
            f"({len(c['excluded_bundled'])} bundled files left out, reasons in the JSON)")
    add(f"sender  : {st['sender_burst']}")
    add(f"sink    : dcmtk storescp, max PDU {st['sink']['max_pdu']} ({st['sink']['flags']}, TCP_NODELAY=1), "
        f"same for every contender")
    cons = res.get("contenders", {})
    if "burst" in st["shapes"]:
        add("")
        add("BURST: the corpus as fast as possible (end to end: first byte sent -> last object stored at the sink)")
        hdr = (f"{'contender':<36} {'img/s':>7} {'MB/s':>6} {'xOrthanc':>8} {'xLimit':>6} {'CPU ms/img':>10} "
               f"{'peak RSS MB':>11} {'ack->deliv p50/p99 s':>21}  notes")
        add(hdr)
        add("-" * len(hdr))
        for key, e in cons.items():
            b = e.get("burst")
            if not b:
                continue
            md = b.get("median", {})
            if b["status"] != "ok":
                add(f"{e['label']:<36} {'FAILED':>7}  {b.get('error', '').splitlines()[0][:110]}")
                continue
            spread = ""
            if md.get("images_per_s_min") is not None and b["runs_ok"] > 1:
                spread = f"runs {md['images_per_s_min']:.0f}-{md['images_per_s_max']:.0f} img/s; "
            lat = (f"{_f(md.get('ack_to_delivery_p50_s'), '{:.3f}')}/{_f(md.get('ack_to_delivery_p99_s'), '{:.3f}')}")
            if md.get("images_quarantined"):
                spread += f"{md['images_quarantined']} quarantined (not counted in img/s; SERVICE LOGS say why); "
            add(f"{e['label']:<36} {_f(md.get('images_per_s')):>7} {_f(md.get('mb_per_s')):>6} "
                f"{_f(e['ratios'].get('burst_vs_orthanc'), '{:.2f}'):>8} {_f(e['ratios'].get('burst_vs_limit'), '{:.2f}'):>6} "
                f"{_f(None if e['is_limit'] else _ms(md.get('cpu_s_per_image')), '{:.2f}'):>10} "
                f"{_f(md.get('peak_rss_mb')):>11} {lat:>21}  {spread}{e.get('note', '')}"
                + (f" [{b['runs_ok']}/{len(b['runs'])} runs ok]" if b["runs_ok"] < len(b["runs"]) else ""))
    if "rate" in st["shapes"]:
        add("")
        add(f"STEADY RATE: {st['rate_n']} CT slices offered at {st['rate']:g} img/s on one association "
            f"(ack = C-STORE response; folder: rename); medians of runs, 'worst p99' the worst run")
        hdr = (f"{'contender':<36} {'sent/s':>7} {'ack->deliv p50':>14} {'p99':>7} {'max':>7} {'worst p99':>9} "
               f"{'send->ack p50':>13} {'CPU ms/img':>10} {'peak RSS MB':>11}")
        add(hdr)
        add("-" * len(hdr))
        for key, e in cons.items():
            r = e.get("rate")
            if not r:
                continue
            md = r.get("median", {})
            if r["status"] != "ok":
                add(f"{e['label']:<36} {'FAILED':>7}  {r.get('error', '').splitlines()[0][:110]}")
                continue
            add(f"{e['label']:<36} {_f(md.get('achieved_send_rate')):>7} "
                f"{_f(md.get('ack_to_delivery_p50_s'), '{:.3f}'):>14} {_f(md.get('ack_to_delivery_p99_s'), '{:.3f}'):>7} "
                f"{_f(md.get('ack_to_delivery_max_s'), '{:.3f}'):>7} "
                f"{_f(r.get('worst', {}).get('ack_to_delivery_p99_s'), '{:.3f}'):>9} "
                f"{_f(md.get('send_to_ack_p50_s'), '{:.4f}'):>13} "
                f"{_f(None if e['is_limit'] else _ms(md.get('cpu_s_per_image')), '{:.2f}'):>10} "
                f"{_f(md.get('peak_rss_mb')):>11}")
    mem = res.get("memory")
    if mem:
        add("")
        if mem.get("status") in ("ok", "incomplete"):
            md = mem["median"]
            add(f"MEMORY: {mem['images']}-image burst into {mem['label']}: peak RSS {_f(md.get('peak_rss_mb'))} MB "
                f"(first fifth {_f(mem.get('rss_first_fifth_mb'))} MB, last fifth {_f(mem.get('rss_last_fifth_mb'))} MB, "
                f"growth {_f(mem.get('rss_growth_mb'))} MB), {_f(md.get('images_per_s'))} img/s, "
                f"{md.get('images_acked')} acknowledged, {md.get('images_delivered')} delivered, "
                f"CPU {_f(_ms(md.get('cpu_s_per_image')), '{:.2f}')} ms/img, "
                f"longest delivery gap {_f(md.get('longest_delivery_gap_s'), '{:.2f}')} s")
            if (md.get("longest_delivery_gap_s") or 0) > 5:
                add(f"        STALL: nothing reached the sink for {md['longest_delivery_gap_s']:.1f} s during the burst "
                    f"(see SERVICE LOGS)")
            if mem["status"] == "incomplete":
                add(f"        INCOMPLETE: {mem.get('error', '')[:300]}")
        else:
            add(f"MEMORY: {mem.get('images', '?')}-image burst into {mem.get('label', mem.get('contender'))}: "
                f"{mem.get('status')} {(mem.get('error') or mem.get('why') or '').splitlines()[0][:150] if (mem.get('error') or mem.get('why')) else ''}")
    logged = []
    for key, e in cons.items():
        for shape in ("burst", "rate"):
            lg = (e.get(shape) or {}).get("service_log")
            if lg and (lg["warning"] or lg["error"]):
                top = "; ".join(f"{ev} x{n}" for ev, n in list(lg["events"].items())[:3])
                logged.append(f"  {key} {shape}: {lg['warning']} warnings, {lg['error']} errors: {top[:300]}")
    if mem and isinstance((mem.get("runs") or [{}])[0].get("service_log"), dict):
        lg = mem["runs"][0]["service_log"]
        if lg.get("warning") or lg.get("error"):
            top = "; ".join(f"{ev} x{n}" for ev, n in list(lg["events"].items())[:3])
            logged.append(f"  {mem['contender']} memory: {lg['warning']} warnings, {lg['error']} errors: {top[:300]}")
    if logged:
        add("")
        add("SERVICE LOGS (warnings/errors the services logged, all runs of a shape together)")
        lines.extend(logged)
    stg = res.get("stages")
    if stg:
        add("")
        add("STAGES: Stage.process on Items from the corpus (ms per object; parse and write shown apart)")
        if "error" in stg:
            add(f"  failed: {stg['error']}")
        else:
            hdr = (f"  {'stage':<26} {'CT p50':>8} {'CT p90':>8} {'img/s':>8} {'parse':>7} {'write':>7} "
                   f"{'bundled ok':>10}  notes")
            add(hdr)
            for name, s in stg.items():
                if not s.get("present"):
                    add(f"  {name:<26} not present")
                    continue
                if s.get("status") not in ("ok", "failed") or "ct" not in s:
                    add(f"  {name:<26} present, {s.get('status')}: {s.get('reason', '')[:100]}")
                    continue
                ct, bu = s.get("ct", {}), s.get("bundled", {})
                notes = []
                if "per_transfer_syntax_ms_median" in s:
                    notes.append(", ".join(f"{k} {val:.2f}" for k, val in s["per_transfer_syntax_ms_median"].items()))
                    if s.get("first_implementation"):
                        notes.insert(0, f"via {s['first_implementation']}")
                    if s.get("failures"):
                        notes.append("failed: " + ", ".join(f"{k} x{n}" for k, n in s["failures"].items()))
                for part in (ct, bu):
                    for kind in ("quarantined", "errors"):
                        if part.get(kind):
                            notes.append(f"{kind}: " + "; ".join(f"{k} x{n}" for k, n in list(part[kind].items())[:2]))
                bundled_ok = f"{bu.get('ok')}/{bu.get('objects')}" if bu else "-"
                add(f"  {name:<26} {_f(ct.get('process_ms_p50'), '{:.3f}'):>8} {_f(ct.get('process_ms_p90'), '{:.3f}'):>8} "
                    f"{_f(ct.get('images_per_s')):>8} {_f(ct.get('parse_ms_p50'), '{:.2f}'):>7} "
                    f"{_f(ct.get('write_ms_p50'), '{:.2f}'):>7} {bundled_ok:>10}  {' | '.join(notes)[:200]}")
    if res.get("encryption"):
        lines.extend(report_crypto.encryption_lines(res["encryption"]))
    if res.get("cipher_stats"):
        lines.extend(report_crypto.cipher_lines(res["cipher_stats"]))
    if res.get("inference"):
        from .inference import report_lines

        lines.extend(report_lines(res["inference"]))
    gl = res.get("goals")
    if gl:
        add("")
        add("GOALS")
        for g in gl:
            val = g["value"]
            if isinstance(val, dict):
                val = ", ".join(f"{k.replace('pacsguard-', '')} {x:.3f} s" for k, x in val.items())
            elif isinstance(val, float):
                val = f"{val:.2f}" + ("x" if "Orthanc" in g["goal"] else " ms" if " ms " in g["goal"] else "")
            line = f"  [{g['status']:>4}] {g['goal']}: {val if val is not None else '-'}"
            if g.get("note"):
                line += f"  ({g['note']})"
            if g.get("why"):
                line += f"  ({g['why'].splitlines()[0][:160]})"
            add(line)
    add("")
    add(f"elapsed {res.get('elapsed_s')} s")
    return "\n".join(lines)


def chart(res: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no PNG (pip install matplotlib)")
        return None
    cons = res.get("contenders", {})
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    m, v = res["machine"], res["versions"]
    fig.suptitle(f"pacsguard {v['pacsguard']} benchmark, {res['started_at']} - {m['nproc']} cores {m['cpu_model']}"
                 f"{' (QUICK mode)' if res['settings']['quick'] else ''}", fontsize=11)

    def bars(ax, shape, key, title, ylabel, scale=1.0, lines=()):
        labels, vals, lo, hi = [], [], [], []
        for k, e in cons.items():
            md = e.get(shape, {}).get("median", {})
            if md.get(key) is None:
                continue
            labels.append(k)
            val = md[key] * scale
            vals.append(val)
            lo.append(val - (md.get(f"{key}_min", md[key]) * scale))
            hi.append((md.get(f"{key}_max", md[key]) * scale) - val)
        if not labels:
            ax.set_title(title + " (no data)")
            return
        ax.bar(labels, vals, yerr=[lo, hi], capsize=4,
               color=["#888" if cons[k]["is_limit"] else "#e69f00" if cons[k]["is_peer"] else "#0072b2"
                      for k in labels])
        for i, val in enumerate(vals):
            ax.annotate(f"{val:.1f}", (i, val / 2), ha="center", va="center", fontsize=9, color="white",
                        fontweight="bold")
        for y, text in lines:
            if y:
                ax.axhline(y, ls="--", lw=1, color="#c00", label=text)
                ax.legend(loc="upper right", fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", labelrotation=15, labelsize=8)

    orth = cons.get("orthanc", {}).get("burst", {}).get("median", {}).get("images_per_s")
    bars(axes[0][0], "burst", "images_per_s", "burst throughput (median, whiskers: min-max of runs)", "images/s",
         lines=[(orth * 1.5 if orth else None, "goal pass-through: 1.5x Orthanc")])
    # latency at the steady rate
    ax = axes[0][1]
    labels = [k for k, e in cons.items() if e.get("rate", {}).get("median", {}).get("ack_to_delivery_p99_s") is not None]
    if labels:
        import numpy as np

        x = np.arange(len(labels))
        p50 = [cons[k]["rate"]["median"]["ack_to_delivery_p50_s"] * 1000 for k in labels]
        p99 = [cons[k]["rate"]["median"]["ack_to_delivery_p99_s"] * 1000 for k in labels]
        worst = [cons[k]["rate"].get("worst", {}).get("ack_to_delivery_p99_s", 0) * 1000 for k in labels]
        ax.bar(x - 0.27, p50, 0.27, label="p50 (median of runs)")
        ax.bar(x, p99, 0.27, label="p99 (median of runs)")
        ax.bar(x + 0.27, worst, 0.27, label="p99 (worst run)")
        ax.axhline(1000, ls="--", lw=1, color="#c00")
        ax.set_xticks(x, labels, rotation=15, fontsize=8)
        ax.set_yscale("symlog", linthresh=1)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"ack -> delivery at {res['settings']['rate']:g} img/s (goal p99 < 1 s)")
    ax.set_ylabel("ms")
    # memory
    ax = axes[1][0]
    mem = res.get("memory") or {}
    tl = mem.get("timeline") or []
    if tl:
        ax.plot([t for t, _ in tl], [r for _, r in tl], label="RSS (MB)")
        ax.axhline(400, ls="--", lw=1, color="#c00", label="goal: 400 MB")
        ax.set_ylim(bottom=0, top=max(450, max(r for _, r in tl) * 1.1))
        dl = mem.get("delivered_timeline") or []
        if dl:
            ax2 = ax.twinx()
            ax2.plot([t for t, _ in dl], [n for _, n in dl], color="#999", lw=1, label="delivered (images)")
            ax2.set_ylabel("images delivered")
            ax2.set_ylim(bottom=0)
            ax2.legend(loc="lower right", fontsize=8)
        ax.legend(loc="upper left", fontsize=8)
        ax.set_title(f"RSS of {mem.get('contender')} (process tree) through the {mem.get('images')}-image burst")
        ax.set_xlabel("s")
        ax.set_ylabel("MB")
    else:
        ax.set_title("memory burst (no data)")
    bars(axes[1][1], "burst", "cpu_s_per_image", "service CPU per image (user+sys, burst)", "ms/image",
         scale=1000)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
