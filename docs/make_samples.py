"""Draw a grid of shipped tea-bud images with their labelled boxes (bud: red, bud_leaf: blue) -> docs/samples.jpg."""

from pathlib import Path

import cv2
import numpy as np

from yoloprune.data.coco import read_yolo_labels

ROOT = Path(__file__).resolve().parents[1] / "data" / "teabud"
COLORS = {0: (0, 0, 255), 1: (255, 128, 0)}


def main(n: int = 6, scale: int = 2) -> None:
    tiles = []
    for img_path in sorted((ROOT / "images" / "val").glob("*.jpg"))[:n]:
        img = cv2.imread(str(img_path))
        h, w = img.shape[:2]
        img = cv2.resize(img, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
        for c, cx, cy, bw, bh in read_yolo_labels(ROOT / "labels" / "val" / f"{img_path.stem}.txt"):
            p1 = (int((cx - bw / 2) * w * scale), int((cy - bh / 2) * h * scale))
            p2 = (int((cx + bw / 2) * w * scale), int((cy + bh / 2) * h * scale))
            cv2.rectangle(img, p1, p2, COLORS[c], 2)
        tiles.append(img)
    grid = np.vstack([np.hstack(tiles[i:i + 3]) for i in range(0, len(tiles), 3)])
    cv2.imwrite(str(Path(__file__).with_name("samples.jpg")), grid, [cv2.IMWRITE_JPEG_QUALITY, 85])


if __name__ == "__main__":
    main()
