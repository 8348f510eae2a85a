"""The MD engines: each owns its loop, the schedule of the failure checks and the run files
(``ase``: one replica per process with ASE's integrators; ``batched``: every replica of a model in
one batched model call per step)."""
