"""The progress line a training run logs at every report (and its validation records when they arrive)."""
from __future__ import annotations


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def progress_line(method: str, step: int, steps: int, metrics: dict[str, float], eta_s: float | None = None
                  ) -> str:
    """`[method] step s/N | loss (terms) | val J&F | clips/s | data wait | skipped | ETA` (what is known)."""
    parts = [f"[{method}] step {step}/{steps}"]
    if "loss" in metrics:
        terms = " ".join(f"{k[5:]} {v:.3f}" for k, v in sorted(metrics.items()) if k.startswith("loss_"))
        parts.append(f"loss {metrics['loss']:.4f}" + (f" ({terms})" if terms else ""))
    if "val_jf" in metrics:
        parts.append(f"val J&F {metrics['val_jf']:.3f} (J {metrics['val_j']:.3f} F {metrics['val_f']:.3f})")
    if "val_disc_jf" in metrics:
        parts.append(f"discovery J&F {metrics['val_disc_jf']:.3f}")
    if "clips_per_s" in metrics:
        parts.append(f"{metrics['clips_per_s']:.1f} clips/s, data wait {100 * metrics['data_wait']:.0f}%")
    skipped = {k[8:]: int(v) for k, v in metrics.items() if k.startswith("skipped_") and v}
    if "clips_per_s" in metrics:
        parts.append("skipped " + (" ".join(f"{k} {v}" for k, v in skipped.items()) if skipped else "0"))
    if eta_s is not None:
        parts.append(f"ETA {_duration(eta_s)}")
    return " | ".join(parts)
