"""The engine: trace, coupled groups, scores, plan, surgery, calibration and reports. Torch (and numpy) only; it
never imports a model source, the data layer or a workflow, and learns what it needs of a model through the
``hooks.ModelHooks`` its caller passes in."""
