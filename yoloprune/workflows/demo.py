"""The main job in one command: sweep the shipped tea-bud detector over prune ratios with several methods (and the
shipped sparsity-trained model with bn, as network slimming does), write the table and plots, and export the
smallest model whose mAP50-95 stays within one point of the baseline."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from yoloprune.defaults import METHOD, ROUND_TO
from yoloprune.errors import ConfigError
from yoloprune.log import say
from yoloprune.workflows.export import ExportConfig, export
from yoloprune.workflows.sweep import SweepConfig, markdown, sweep, write_results

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 0.01  # "within one point" of mAP50-95
SHIPPED_SLIMMED = REPO / "weights" / "teabud-yolov8n-sparse.pt"


@dataclass
class DemoConfig:
    out: str = "outputs/demo"
    ratios: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    methods: list[str] = field(default_factory=lambda: [METHOD])
    model: str | None = None
    data: str | None = None
    # A sparsity-trained (network slimming) model, swept with bn and block removal beside the baseline. Default:
    # the shipped weights/teabud-yolov8n-sparse.pt, when the baseline is the shipped one too.
    slimmed: str | None = None

    def resolved(self) -> tuple[Path, Path, Path | None]:
        model = Path(self.model) if self.model else REPO / "weights" / "teabud-yolov8n.pt"
        data = Path(self.data) if self.data else REPO / "data" / "teabud.yaml"
        slimmed = Path(self.slimmed) if self.slimmed else None
        if slimmed is None and self.model is None and SHIPPED_SLIMMED.exists():
            slimmed = SHIPPED_SLIMMED
        for what, path in (("weights", model), ("data", data), ("slimmed weights", slimmed)):
            if path is not None and not path.exists():
                raise ConfigError(f"demo {what} not found: {path} (run it from a clone of the repository, "
                                  "or give --model/--data)")
        return model, data, slimmed


def pick_best(df: pd.DataFrame, tolerance: float = TOLERANCE) -> pd.Series | None:
    """Fewest GFLOPs among pruned rows whose mAP50-95 is within ``tolerance`` of the unpruned baseline's."""
    ok = df[df["status"] == "ok"]
    base = ok[(ok["ratio"] == 0) & (ok["model"] == "baseline")] if "model" in ok.columns else ok[ok["ratio"] == 0]
    if base.empty:
        return None
    floor = float(base["map50_95"].iloc[0]) - tolerance
    good = ok[(ok["map50_95"] >= floor) & (ok["ratio"] > 0)]
    if good.empty:
        return None
    return good.sort_values(["gflops", "map50_95"], ascending=[True, False]).iloc[0]


def run_demo(cfg: DemoConfig) -> Path:
    model, data, slimmed = cfg.resolved()
    out = Path(cfg.out)
    t0 = time.perf_counter()
    parts = [("baseline", model, cfg.methods, False)]
    if slimmed is not None:
        parts.append(("slimmed", slimmed, ["bn"], True))
    frames = []
    for name, path, methods, layers in parts:
        say(f"sweeping {name} model {path} with {', '.join(methods)}")
        df = sweep(SweepConfig(model=str(path), data=str(data), out=str(out / name), ratios=cfg.ratios,
                               methods=methods, round_to=ROUND_TO, layers=layers))
        frames.append(df.assign(model=name))
    df = pd.concat(frames, ignore_index=True)
    df = df[["model", *[c for c in df.columns if c != "model"]]]
    write_results(df, out, f"demo: {Path(model).name} (+ {Path(slimmed).name}) on {Path(data).stem} val, no fine-tuning"
                  if slimmed is not None else f"demo: {Path(model).name} on {Path(data).stem} val, no fine-tuning")
    say(markdown(df))
    best = pick_best(df)
    if best is None:
        say(f"no pruned model kept mAP50-95 within {TOLERANCE:.2f} of the baseline without fine-tuning; "
              "try lower ratios or `yoloprune sweep --finetune-epochs K`")
    else:
        tag = f"{best['method']}-{best['ratio']:g}"
        say(f"best within {TOLERANCE:.2f} mAP50-95 of the baseline: {best['model']} {tag} (mAP50-95 "
              f"{best['map50_95']:.4f}, GFLOPs x{best['gflops_ratio']:.3f}, params x{best['params_ratio']:.3f})")
        res = export(ExportConfig(model=str(out / best["model"] / "models" / f"{tag}.pt"), out=str(out / "best.onnx"),
                                  data=str(data), baseline=str(model)))
        say(res.table())
    say(f"table: {out / 'results.md'} and {out / 'results.csv'} (each model's own sweep under {out}/<model>/)")
    say(f"plots: {out / 'map_vs_ratio.png'}, {out / 'map_vs_latency.png'}")
    say(f"checkpoints and ONNX per ratio: {out}/<model>/models")
    say(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return out
