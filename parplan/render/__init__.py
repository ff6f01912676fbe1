"""Rendering: pictures and traces of schedules and plans, read from data, never fed back.

`gantt.render_gantt` draws simulated schedules on one time axis; `plan_chart.render_plan_gantt`
draws a plan (compute, transfer lanes, memory over time, optionally the measured step);
`chrome_trace.plan_trace` / `measured_trace` write Chrome-trace JSON for Perfetto.
Matplotlib is imported inside the drawing functions, so importing these modules is cheap.
"""
