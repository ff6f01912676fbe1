"""Rendering: pictures and traces of schedules and plans, read from data, never fed back.

`gantt.gantt_figure` / `render_gantt` draw simulated schedules on one time axis;
`plan_chart.plan_figure` / `render_plan_gantt` draw a plan (compute, send and all-to-all
lanes, memory over time, optionally the measured step); the `*_figure` builders return the
matplotlib Figure, the `render_*` functions its png/svg bytes. `_draw` holds what both
share: units (s/ms/µs, GiB/MiB), rank rows with stage hatching, send and all-to-all lanes,
a micro-batch label on every block.
`chrome_trace.plan_trace` / `measured_trace` write Chrome-trace JSON for Perfetto.
Matplotlib is imported inside the drawing functions, so importing these modules is cheap.
"""
