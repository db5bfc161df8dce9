"""InferLine's planning side, pure and I/O-free: stage profiles and plans (the shared types), arrival
traces, a discrete-event simulator of a pipeline of queued, batched, replicated stages, the
low-frequency planner (greedy constrained search over batch size, replicas and resource kind per
stage, checked in simulation) with its baselines, and the high-frequency tuner's arrival envelopes
(Crankshaw et al., "InferLine", SoCC 2020). See docs/pipelines-planning.md.

Nothing is imported here: the serving side imports the module it needs.
"""
