"""Discrete-event simulator over the real gossip core (realnet) and a lite
node model for 10K-100K peers (lite); see docs/benchmarks.md."""
