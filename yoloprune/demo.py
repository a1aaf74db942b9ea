"""The main job in one command: sweep the shipped tea-bud detector over prune ratios with several methods, write
the table and plots, and export the smallest model whose mAP50-95 stays within one point of the baseline."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from yoloprune.errors import ConfigError
from yoloprune.export import ExportConfig, export
from yoloprune.sweep import SweepConfig, markdown, sweep

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 0.01  # "within one point" of mAP50-95
ROUND_TO = 8  # widths in multiples of 8: CPU kernels turn saved FLOPs into saved time far better (see README)


@dataclass
class DemoConfig:
    out: str = "outputs/demo"
    ratios: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    methods: list[str] = field(default_factory=lambda: ["l1", "bn"])
    model: str | None = None
    data: str | None = None

    def resolved(self) -> tuple[Path, Path]:
        model = Path(self.model) if self.model else REPO / "weights" / "teabud-yolov8n.pt"
        data = Path(self.data) if self.data else REPO / "data" / "teabud.yaml"
        for what, path in (("weights", model), ("data", data)):
            if not path.exists():
                raise ConfigError(f"demo {what} not found: {path} (run it from a clone of the repository, "
                                  "or give --model/--data)")
        return model, data


def pick_best(df: pd.DataFrame, tolerance: float = TOLERANCE) -> pd.Series | None:
    """Fewest GFLOPs among pruned rows whose mAP50-95 is within ``tolerance`` of the ratio-0 baseline."""
    ok = df[df["status"] == "ok"]
    base = ok[ok["ratio"] == 0]
    if base.empty:
        return None
    floor = float(base["map50_95"].iloc[0]) - tolerance
    good = ok[(ok["map50_95"] >= floor) & (ok["ratio"] > 0)]
    if good.empty:
        return None
    return good.sort_values(["gflops", "map50_95"], ascending=[True, False]).iloc[0]


def run_demo(cfg: DemoConfig) -> Path:
    model, data = cfg.resolved()
    out = Path(cfg.out)
    t0 = time.perf_counter()
    df = sweep(SweepConfig(model=str(model), data=str(data), out=str(out), ratios=cfg.ratios, methods=cfg.methods,
                           round_to=ROUND_TO))
    print(markdown(df))
    best = pick_best(df)
    if best is None:
        print(f"no pruned model kept mAP50-95 within {TOLERANCE:.2f} of the baseline without fine-tuning; "
              "try lower ratios or `yoloprune sweep --finetune-epochs K`")
    else:
        tag = f"{best['method']}-{best['ratio']:g}"
        print(f"best within {TOLERANCE:.2f} mAP50-95 of the baseline: {tag} (mAP50-95 {best['map50_95']:.4f}, "
              f"GFLOPs x{best['gflops_ratio']:.3f}, params x{best['params_ratio']:.3f})")
        res = export(ExportConfig(model=str(out / "models" / f"{tag}.pt"), out=str(out / "best.onnx"),
                                  data=str(data), baseline=str(model)))
        print(res.table())
    print(f"table: {out / 'results.md'} and {out / 'results.csv'}")
    print(f"plots: {out / 'map_vs_ratio.png'}, {out / 'map_vs_latency.png'}")
    print(f"checkpoints and ONNX per ratio: {out / 'models'}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return out
