"""The report's ENCRYPTION and CIPHER-IMAGE STATISTICS sections (text lines)."""

from __future__ import annotations


def _f(v, fmt="{:.3f}"):
    return "-" if v is None else fmt.format(v)


def encryption_lines(enc: dict) -> list[str]:
    if "error" in enc:
        return ["", f"ENCRYPTION: failed: {enc['error']}"]
    out = ["", f"ENCRYPTION (pixel scope, one core: CPU {enc['cpu']}; recipient {enc['recipient']}): per 512x512 "
               f"16-bit CT slice, file in -> file out (parse, stage, write to {enc['scratch']}), ms; "
               f"goal <= {enc['goal_ms']:g} ms each"]
    hdr = f"  {'slice':<28} {'op':<8} {'p50':>7} {'p90':>7} {'parse':>7} {'stage':>7} {'write':>7}  samples"
    out.append(hdr)
    for label, s in enc.get("per_slice", {}).items():
        for op in ("encrypt", "decrypt"):
            t = s[op]
            out.append(f"  {label:<28} {op:<8} {_f(t['total_ms_p50']):>7} {_f(t['total_ms_p90']):>7} "
                       f"{_f(t['parse_ms_p50']):>7} {_f(t['stage_ms_p50']):>7} {_f(t['write_ms_p50']):>7}  "
                       f"{s['samples']} ({s['slices']} file{'s' if s['slices'] != 1 else ''}, round trip {s['round_trip']})")
    a = enc.get("aes_gcm")
    if a:
        py, ossl = a["cryptography"], a["openssl"]
        out.append(f"  AES-256-GCM on {a['buffer_bytes'] // 1024} KiB: cryptography {py['encrypt_mb_s']:.0f} MB/s "
                   f"encrypt, {py['decrypt_mb_s']:.0f} decrypt (the plugin's seal {py['plugin_seal_mb_s']:.0f}, "
                   f"open {py['plugin_open_mb_s']:.0f}); {ossl['command']}: "
                   + (f"{ossl['encrypt_mb_s']:.0f} MB/s" if "encrypt_mb_s" in ossl else ossl.get("error", "?"))
                   + (f"; cryptography / openssl {a['cryptography_vs_openssl']:.2f}" if a.get("cryptography_vs_openssl") else ""))
        out.append(f"    ({py['version']}; the command line: {ossl.get('version', '?')})")
    w = enc.get("wrap")
    if w:
        out.append("  data key per recipient, ms (p50):  "
                   + "; ".join(f"{kind} ({x['method']}, {x['wrapped_bytes']} B) wrap {x['wrap_ms_p50']:.3f}, "
                               f"unwrap {x['unwrap_ms_p50']:.3f}" for kind, x in w.items()))
    return out


def cipher_lines(stats: list[dict]) -> list[str]:
    out = ["", "CIPHER-IMAGE STATISTICS of the pixel-scope output (ideal: independent uniform values of the same "
               "size and Bits Allocated; necessary-looking, never sufficient: broken ciphers pass them too)"]
    for s in stats:
        i, p, c, two = s["ideal"], s["plain"], s["cipher"], s["two_encryptions"]
        out.append(f"  {s['image']}: {s['what']}")
        lo, hi = i["uaci_interval_pct"]
        out.append(f"    {'NPCR, two encryptions':<28} {two['npcr_pct']:>10.6f} %   ideal {i['npcr_pct']:.6f} "
                   f"(random below {i['npcr_critical_pct']:.4f} rejected, alpha 0.05)")
        out.append(f"    {'UACI, two encryptions':<28} {two['uaci_pct']:>10.6f} %   ideal {i['uaci_pct']:.6f} "
                   f"(accepted {lo:.4f}-{hi:.4f})")
        out.append(f"    {'entropy, bits':<28} {c['entropy_bits']:>10.4f}     ideal {i['entropy_bits']:.4f} "
                   f"(expected plug-in value)   plain {p['entropy_bits']:.4f}")
        for d in ("horizontal", "vertical", "diagonal"):
            out.append(f"    {'correlation ' + d:<28} {c['correlation_' + d]:>10.5f}     ideal 0 "
                       f"(|r| < {i['correlation_bound']:.4f})   plain {p['correlation_' + d]:.5f}")
    return out
