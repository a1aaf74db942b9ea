"""Time: where every latency yoloprune reports is measured, and how pruning is aimed at a speed.

- ``timing``: the one timer (``alternate``: medians of functions called in turn, so a busy machine slows them alike)
  and what is recorded beside a time (``machine``);
- ``runtimes``: the ``Runtime`` interface (onnxruntime on the CPU, eager torch; a registry for more): prepare a
  model, time models in alternation, time a one-conv block, measure the channel block;
- ``table``: latency tables: every conv timed alone at the widths pruning can leave, cached per machine;
- ``search``: the prune targets measured in time (``Speedup``, ``Latency``): trial prunes timed beside the unpruned
  model until the speed-up is met.

It stands between the model sources and the library API: it prunes trial copies through the engine with a
source's adapter as hooks, and exports them through the adapter.
"""
