"""The data layer: data yaml checks (``spec``), unlabeled images and calibration images (``images``), COCO ground
truth and pycocotools scoring (``coco``), and the tea-bud scene generator (``teabud``)."""
